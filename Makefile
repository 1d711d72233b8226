# Two commands on a fresh machine: `make serve` (set up + serve the demo models), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO ?= demo_models
REST_PORT ?= 8080
GRPC_PORT ?= 9090
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EXTRAS ?= xgboost,lightgbm,pmml,torch,onnx,tensorflow,otel

.PHONY: serve test test-fast install install-test demo lint protos bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q -e '.[$(EXTRAS)]'
	@# pypmml (the pmml processor) runs a JVM: install a Java runtime from Debian's packages when none is here.
	@command -v java >/dev/null 2>&1 || { echo "installing a Java runtime (default-jre-headless) for PMML"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq default-jre-headless >/dev/null; }
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[$(EXTRAS),test]'
	@# tests/e2e/test_ui_browser.py drives the status page in Debian's headless Chromium and its chromedriver.
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "installing chromium and chromium-driver for the UI tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m serving.tools.demo $(DEMO)

serve: demo
	$(VENV)/bin/serving --model_config_file=$(abspath $(DEMO))/model_config.pbtxt \
		--rest_api_port=$(REST_PORT) --port=$(GRPC_PORT) --model_config_file_poll_wait_seconds=5

test: install-test
	$(VENV)/bin/hadolint Dockerfile.cpu Dockerfile.gpu
	$(VENV)/bin/ruff check serving processors protos tests benchmarks docs
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The in-process tests only (tests/unit: no server process, no browser), with pytest's options from
# pyproject.toml; `make test` runs them too, with the linters and tests/e2e.
test-fast: install-test
	$(PY) -m pytest tests/unit

protos: install-test
	$(PY) protos/generate.py

bench: install-test
	$(PY) benchmarks/suite.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
