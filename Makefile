# Two commands for a fresh machine: `make run` and `make test`. Both create the virtual
# environment on first use. DATABASE_URL / REDIS_URL in the environment switch from the embedded
# default (SQLite, in-memory channel layer, in-process tasks) to PostgreSQL and Redis.
# The interpreter: $PYTHON if given; else the distribution's /usr/bin/python3.11 when it has venv
# and the headers (its build is optimised: bench/edge_core.py measured 1.39 M instructions a call
# on it against 1.65 M on an unoptimised shared-library build such as pyenv's default); else the
# first python3.11 on the PATH. README, "Which Python".
SYSTEM_PYTHON := /usr/bin/python3.11
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, os, sysconfig; \
	assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
	>/dev/null 2>&1 && echo $(SYSTEM_PYTHON) || echo python3.11)
endif
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format typecheck migrate seed native clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# Local settings for development: DEBUG on and a random SECRET_KEY, made once, never committed.
.env:
	printf 'DEBUG=1\nSECRET_KEY=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" > $@

# The edge's SIP core compiled with mypyc (edge/native.py): a no-op while it matches the sources.
# Optional: where it cannot be built (no C compiler) the edge runs the same Python source.
native: $(VENV)/.installed
	$(BIN)/python -W ignore::RuntimeWarning -m edge.native_build build --optional

migrate: $(VENV)/.installed .env
	$(BIN)/python manage.py migrate --no-input

seed: migrate
	$(BIN)/python manage.py seed_demo

run: seed native
	$(BIN)/python manage.py collectstatic --no-input --verbosity 0
	$(BIN)/python manage.py runplatform --host $(HOST) --port $(PORT)

test: $(VENV)/.installed .env native
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache edge/native-manifest.json
	find edge -name '*.so' -delete
	rm -rf $(VENV)
