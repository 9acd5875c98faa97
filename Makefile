# ConsentLine: `make run` serves a demo on SQLite, `make test` lints and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
export FLASK_APP := app

.PHONY: run test soak bench bench-scale bench-smoke bench-instructions lint venv browser valgrind screenshots clean

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

# bench/instructions.py counts instructions with Debian's valgrind.
valgrind:
	@command -v valgrind >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; \
	  else echo "Install valgrind first (Debian: sudo apt-get install valgrind)"; exit 1; fi; }

# Runs on SQLite, and on Postgres too when TEST_DATABASE_URL is set.
test: lint browser
	$(BIN)/pytest

# The race soak against gunicorn (four workers); Postgres too with TEST_DATABASE_URL.
soak: venv
	$(BIN)/pytest -m soak -s tests/test_soak.py

$(VENV)/.bench: bench/requirements.txt | $(VENV)/.installed
	$(BIN)/pip install --quiet -r bench/requirements.txt
	touch $@

# Benchmarks (bench/README.md): query counts, CPU per webhook, load vs the bare
# endpoint, and scale at 1M conversations / 10M records per backend: about 25 min
# in all and ~25 GB of temporary disk. run.py, inproc.py and scale.py create and
# drop their Postgres databases through BENCH_PG_ADMIN (default: the local
# server); queries.py counts on SQLite.
bench: venv $(VENV)/.bench
	$(BIN)/python -m bench.check_client
	$(BIN)/python -m bench.queries
	$(BIN)/python -m bench.inproc
	$(BIN)/python -m bench.run --floor
	$(BIN)/python -m bench.scale

# Instructions per webhook under callgrind, app (SQLite) and bare (~5 min); to
# compare commits: python -m bench.instructions --root <another checkout> --root .
bench-instructions: venv $(VENV)/.bench valgrind
	$(BIN)/python -m bench.instructions --out bench/results/instructions.json

# The scale run alone (1M / 10M, both backends, ~20 min).
bench-scale: venv $(VENV)/.bench
	$(BIN)/python -m bench.scale

# The same, tiny and quick: shows the benchmarks still work (figures not asserted).
bench-smoke: venv $(VENV)/.bench valgrind
	$(BIN)/python -m bench.check_client
	$(BIN)/python -m bench.load --ceiling --requests 100 --client aiohttp
	$(BIN)/python -m bench.queries
	$(BIN)/python -m bench.inproc --rounds 1 --requests 100
	$(BIN)/python -m bench.pieces --requests 100
	$(BIN)/python -m bench.run --smoke --floor --out bench/results/smoke.json
	$(BIN)/python -m bench.scale --smoke --out bench/results/scale-smoke.json
	$(BIN)/python -m bench.compare HEAD --rounds 1 --requests 100 --out bench/results/compare-smoke.json
	$(BIN)/python -m bench.sched --rounds 1 --requests 100 --out bench/results/sched-smoke.json
	$(BIN)/python -m bench.instructions --quick --target sqlite --out bench/results/instructions-smoke.json
	$(BIN)/python -m bench.compiled --quick --target sqlite --out bench/results/compiled-smoke.json

# Re-make the README's screenshots with the browser test.
screenshots: venv browser
	CONSENTLINE_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/test_browser.py -k sqlite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
