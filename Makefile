# Entry points for a fresh machine (Python 3.11, no GPU needed):
#   make demo            create .venv, install quickft with Unsloth, train the offline demo (recipes/tiny_math.py)
#   make test            create .venv, install quickft with Unsloth + test tools + the GGUF tools, run the tests
#   make test-demos      the DPO and GRPO demos' own tests (slow, about 6 minutes; CI skips them)
#   make install-gguf    add the GGUF tools to .venv (quickft export --to gguf|ollama): builds llama-cpp-python
# For Pascal / Volta GPUs (GTX 10xx, P100, P40, V100), whose kernels the default torch no longer ships:
#   make install-old-gpu create .venv-old-gpu: torch 2.7.1+cu126, bitsandbytes' CUDA 12.6 library, no Unsloth
#   make test-old-gpu    the same tests in that environment (tests that need Unsloth skip, saying so)
#   make demo-old-gpu    the offline demo in that environment
VENV ?= .venv
OLD_VENV ?= .venv-old-gpu
PY := $(VENV)/bin/python
OLD_PY := $(OLD_VENV)/bin/python

.PHONY: install install-old-gpu install-gguf demo demo-old-gpu test test-demos test-old-gpu lint
install: $(VENV)/.installed
install-gguf: $(VENV)/.gguf
install-old-gpu: $(OLD_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[unsloth,dev]'
	# Unsloth's CPU mode is only in 2026.10.9, whose certifi pin the registry may not serve yet: add it without deps
	# (a no-op where the plain install already resolved 2026.10.9).
	$(PY) -m pip install --no-deps 'unsloth==2026.10.9' 'unsloth_zoo==2026.10.9'
	touch $@

$(OLD_VENV)/.installed: pyproject.toml constraints/old-gpu.txt
	python3 -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install --upgrade pip
	$(OLD_PY) -m pip install -c constraints/old-gpu.txt -e '.[dev]'
	# Fail the install, not the first CUDA kernel, if the resolved torch lacks Pascal/Volta kernels.
	$(OLD_PY) -m quickft.stack --require sm_60,sm_61,sm_70
	touch $@

# llama.cpp's converter (kept from the llama-cpp-python source distribution) and llama-cpp-python itself, built for
# this CPU family: 8 to 13 minutes on 2 cores (see README, "Use your model elsewhere"). Order-only: a change to
# pyproject.toml reinstalls quickft's dependencies, not this build.
$(VENV)/.gguf: | $(VENV)/.installed
	$(PY) -m quickft.llamacpp install
	touch $@

demo: install
	$(VENV)/bin/quickft run recipes/tiny_math.py

demo-old-gpu: install-old-gpu
	$(OLD_VENV)/bin/quickft run recipes/tiny_math.py

test: install install-gguf
	$(PY) -m pytest

test-demos: install  # the DPO and GRPO demos' own tests (marked slow, about 6 minutes): CI skips them
	$(PY) -m pytest -m slow tests/test_demos.py

test-old-gpu: install-old-gpu
	$(OLD_PY) -m pytest

lint: install
	$(VENV)/bin/ruff check quickft tests
