# ConsentLine: `make run` serves a demo on SQLite, `make test` lints and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
export FLASK_APP := app

.PHONY: run test soak bench bench-smoke lint venv browser screenshots clean

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

# The portal's end-to-end test drives Debian's Chromium (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Install Chromium first (Debian: sudo apt-get install chromium)"; exit 1; fi; }

# Runs on SQLite, and on Postgres too when TEST_DATABASE_URL is set.
test: lint browser
	$(BIN)/pytest

# The race soak against gunicorn (four workers); Postgres too with TEST_DATABASE_URL.
soak: venv
	$(BIN)/pytest -m soak -s tests/test_soak.py

# Benchmarks (bench/README.md): throughput and a burst against the bare endpoint and
# the floor, then 1M conversations / 10M records on both databases (~25 min, ~25 GB
# of temporary disk). Postgres databases are made and dropped through BENCH_PG_ADMIN.
bench: venv
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.scale

# Under a minute: the bench still works and every answer is a 200 (figures not asserted).
bench-smoke: venv
	$(BIN)/python -m bench.run --smoke

# Re-make the README's screenshots with the browser test.
screenshots: venv browser
	CONSENTLINE_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/test_browser.py -k sqlite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
