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
# pyproject.toml extras `make serve` installs: the demo's two tree frameworks and `serving bench`'s tools (a
# fresh install in well under a minute). EXTRAS=all for every processor: `make serve EXTRAS=all`.
EXTRAS ?= xgboost,lightgbm,bench
comma := ,
# One stamp per set of extras, so `make serve EXTRAS=all` after `make serve` installs the rest. `make test`
# installs every extra whatever EXTRAS says, with its own stamp.
INSTALLED := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# pypmml (the pmml processor) runs a JVM: install a Java runtime from Debian's packages when none is here,
# only for an install with the pmml extra.
define java-for-pmml
@command -v java >/dev/null 2>&1 || { echo "installing a Java runtime (default-jre-headless) for PMML"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq default-jre-headless >/dev/null; }
endef

.PHONY: serve test test-fast install install-test demo lint protos bench image-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(INSTALLED): $(PY) pyproject.toml
	$(PIP) install -q -e '.[$(EXTRAS)]'
	$(if $(filter pmml all,$(subst $(comma), ,$(EXTRAS))),$(java-for-pmml))
	touch $@

$(VENV)/.installed-test: $(PY) pyproject.toml
	$(PIP) install -q -e '.[all,test]'
	$(java-for-pmml)
	@# tests/e2e/test_ui_browser.py drives the status page in Debian's headless Chromium and its chromedriver.
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "installing chromium and chromium-driver for the UI tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@# The Redis queue store's tests (test_store_redis.py, test_queue_redis.py) start Debian's redis-server.
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server for the Redis queue store's tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	touch $@

install: $(INSTALLED)
install-test: $(VENV)/.installed-test

demo: install
	$(PY) -m serving.tools.demo $(DEMO)

serve: demo
	$(VENV)/bin/serving --model_config_file=$(abspath $(DEMO))/model_config.pbtxt \
		--rest_api_port=$(REST_PORT) --port=$(GRPC_PORT) --model_config_file_poll_wait_seconds=5

test: install-test
	$(VENV)/bin/hadolint Dockerfile.cpu Dockerfile.gpu
	$(VENV)/bin/ruff check serving processors protos tests benchmarks docs examples
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

# Build the CPU image with podman on a Debian base made by debootstrap and run it for real: REST, KServe V2,
# gRPC, readiness, its user, the SIGTERM drain, its size (deploy/image_test.sh; minutes, so not in `make test`).
image-test: install
	PYTHON=$(PY) deploy/image_test.sh

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
