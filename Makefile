# make demo: set up, train a vocabulary on ../shared/data, index, query, print scores.
# make test: set up and run the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DATA ?= ../shared/data
WORK ?= work

.PHONY: setup demo test test-quick clean

$(BIN)/activate: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BIN)/activate

setup: $(BIN)/activate

demo: setup
	$(BIN)/python -m benchmarks.demo --data $(DATA) --work $(WORK)

test: setup
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(WORK) $(VENV)
