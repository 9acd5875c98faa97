# ConsentLine: `make run` serves a demo on SQLite, `make test` lints and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
export FLASK_APP := app

.PHONY: run test lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

.env:
	$(BIN)/python scripts/make_env.py .env.example .env

run: venv .env
	$(BIN)/flask --app app db upgrade
	$(BIN)/python scripts/next_steps.py $(PORT)
	$(BIN)/flask --app app run --host 127.0.0.1 --port $(PORT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Runs on SQLite, and on Postgres too when TEST_DATABASE_URL is set.
test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
