# The two set-up commands of the README. Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench profile browser

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
test: $(STAMP) browser
	$(BIN)/python -m gevent.monkey --module pytest

# tests/test_web_ui_browser.py drives a real headless Chromium: Debian's chromium and chromium-driver are installed
# when missing and apt is there (as root, else with sudo). If that fails the test is skipped, its reason listed.
browser:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "make: installing chromium and chromium-driver for the web UI's browser test"; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver >/dev/null \
		|| { $$sudo apt-get update -q >/dev/null && \
		     DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver >/dev/null; } \
		|| echo "make: chromium could not be installed: the browser test will be skipped"; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/search_throughput.py

# Where a search's client CPU goes, by layer (ours, LangChain, pymilvus, gRPC, gevent, asyncio), per user class.
profile: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/profile_breakdown.py
