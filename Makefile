# The two set-up commands of the README. Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# A one-minute headless load test against the embedded Milvus; every run writes its report folder,
# reports/<timestamp>-default/ (named after the config file), and logs where.
run: $(STAMP)
	$(BIN)/locust --config scenarios/default.conf

# The full test suite. gevent patches the standard library before pytest imports it, as locust does at start.
test: $(STAMP)
	$(BIN)/python -m gevent.monkey --module pytest

bench: $(STAMP)
	$(BIN)/python bench/search_throughput.py
