# Two entry points: `make serve` and `make test`. Both set up .venv from scratch when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
# What `make serve` installs: the gateway; EXTRAS=gateway,torch adds torch for the examples.
EXTRAS ?= gateway

.PHONY: serve test lint install install-test browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"

install-test: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"

serve: install
	$(BIN)/vrungpu-gateway $(ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vrungpu_gateway vrungpu_magic --ignore-missing-imports

# Browser tests drive Debian's Chromium (never a downloaded browser); install it when missing.
browser:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped"; fi; }

test: install-test browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)
