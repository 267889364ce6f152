# Two commands on a fresh machine: `make train` (the main job on the offline default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all train clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# One pytest worker a core (pytest-xdist); each worker's torch keeps to its share of the cores (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -n auto

test-all: $(STAMP)
	$(BIN)/python -m pytest -n auto -m ''

train: $(STAMP)
	$(BIN)/python train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
