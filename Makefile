# The two commands of the README: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint format bench docs clean

# The editable install's metadata lives in the venv; the copy setuptools leaves in the checkout would
# make every process started here see the package twice, and Airflow load its plugin twice: removed.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins every transitive version: a fresh install resolves the same set every time.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@rm -rf mlops_tasks.egg-info
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Headless Chromium for the UI's browser test (Debian package). Without root or apt the browser
# test skips on a laptop; under CI=true its absence fails the test.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed (needs root + apt-get): the browser test will skip"; fi; }

test: install system-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/mlops-tasks demo

docs: install
	$(VENV)/bin/mlops-tasks config-reference --output docs/configuration.md

bench: install
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .stack .demo .demo.lock .pytest_cache .ruff_cache
