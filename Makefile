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

# A one-minute headless load test against the embedded Milvus; the report lands in reports/<timestamp>-default/.
run: $(STAMP)
	@dir=reports/$$(date +%Y%m%d-%H%M%S)-default && mkdir -p $$dir && \
	$(BIN)/locust --config scenarios/default.conf --html $$dir/report.html --csv $$dir/stats && \
	echo "report: $$dir/report.html"

# The full test suite. gevent patches the standard library before pytest imports it, as locust does at start.
test: $(STAMP)
	$(BIN)/python -m gevent.monkey --module pytest

bench: $(STAMP)
	$(BIN)/python bench/search_throughput.py
