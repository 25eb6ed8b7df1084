# make demo: set up, train a vocabulary on ../shared/data, index, query, print scores.
# make test: set up and run the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DATA ?= ../shared/data
WORK ?= work

.PHONY: setup browser demo test test-quick clean

$(BIN)/activate: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BIN)/activate

setup: $(BIN)/activate

# Headless Chromium and its driver for the web page's browser tests (Debian packages; needs root).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "make browser: run as root (apt-get install chromium chromium-driver) for the browser tests"; fi

demo: setup
	$(BIN)/python -m benchmarks.demo --data $(DATA) --work $(WORK)

test: setup browser
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(WORK) $(VENV)
