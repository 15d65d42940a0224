# Two entry points for a fresh machine (Python 3.11, no GPU needed):
#   make demo   create .venv, install quickft, train the offline demo (recipes/tiny_math.py)
#   make test   create .venv, install quickft + test tools, run the tests
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	# Unsloth's CPU mode is only in 2026.10.9, whose certifi pin the registry may not serve yet: add it without deps
	# (a no-op where the plain install already resolved 2026.10.9).
	$(PY) -m pip install --no-deps 'unsloth==2026.10.9' 'unsloth_zoo==2026.10.9'
	touch $@

demo: install
	$(VENV)/bin/quickft run recipes/tiny_math.py

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check quickft tests
