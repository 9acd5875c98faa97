"""Where a webhook's CPU goes, piece by piece, inside the app (one process, SQLite).

The realistic mix of ``bench.load`` is handed straight to the WSGI app, as
``bench.inproc`` does, with the process's CPU clock read around each of the
pieces below; the report gives each piece's CPU per webhook and calls per
webhook. Pieces nest (``relay._save`` includes the statements it runs), so the
figures do not add up. The wrappers cost a few µs each, which the whole
webhook's figure includes.

Why inside the app: a piece timed in a warm loop of its own costs far less than
it does between the other pieces of a webhook, whose code and data have pushed
its own out of the CPU's caches (the TwiML of ``twilio``'s MessagingResponse:
28 µs in a loop, 143 µs in the app). Compare pieces of one run only.

    python -m bench.pieces                       # 4,000 webhooks
    python -m bench.pieces --requests 2000

Bounded: a fixed count of webhooks, and a time cap.
"""

import argparse
import functools
import importlib
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.inproc import _app_for, _call, _environ
from bench.load import Signer, workload

# (module, function, label): functions of the app, each timed where its callers
# look it up (module globals, at call time).
PIECES = (
    ("bot.webhooks", "signature_matches", "signature check"),
    ("bot.relay", "parse_form", "relay.parse_form"),
    ("bot.relay", "handle_inbound", "relay.handle_inbound (the transaction)"),
    ("bot.relay", "_route", "  relay._route (the turn, up to its writes)"),
    ("bot.relay", "_line_and_conversation", "    first read: line, settings, conversation"),
    ("bot.relay", "_lock", "    relay._lock (conversation not read first)"),
    ("bot.keywords", "classify", "    keywords.classify"),
    ("bot.consent", "decide", "    consent.decide"),
    ("bot.relay", "_record_inbound", "    relay._record_inbound"),
    ("bot.relay", "_apply", "    relay._apply"),
    ("bot.relay", "_send", "      relay._send"),
    ("bot.evidence", "entry", "    evidence.entry"),
    ("bot.twiml", "render", "    twiml.render"),
    ("bot.relay", "_save", "    relay._save (the writes)"),
    ("bot.statements", "_run", "  statements._run (every statement)"),
)


def _wrap(owner, name: str, label: str, spent: Counter, calls: Counter) -> None:
    original = getattr(owner, name)
    clock = time.process_time

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += clock() - start
            calls[label] += 1

    setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--time-cap", type=float, default=300.0)
    args = parser.parse_args(argv)
    os.environ["FLASK_RUN_FROM_CLI"] = ""
    tmp = Path(tempfile.mkdtemp(prefix="bench_pieces_"))
    app = _app_for("sqlite:///" + str(tmp / "app.sqlite3"))

    spent: Counter = Counter()
    calls: Counter = Counter()
    for module, attribute, label in PIECES:
        _wrap(importlib.import_module(module), attribute, label, spent, calls)
    with app.app_context():
        from bot.extensions import db

        dialect = db.engine.dialect
    # SQLite's COMMIT (the writer queue's wrapper of the dialect's, set per engine).
    _wrap(dialect, "do_commit", "  COMMIT (with the writer lock's release)", spent, calls)

    scripts = workload(args.requests + 300, seed=11, contact_base=7_000_000, signer=Signer(seed=9))
    order, live = [], [list(s) for s in scripts]
    while live and len(order) < args.requests + 300:
        for steps in live[:8]:
            order.append(steps.pop(0))
        live = [s for s in live if s]
    environs = [_environ(s) for s in order]
    for environ in environs[:300]:  # warm-up, not counted
        _call(app, environ)
    spent.clear()
    calls.clear()
    timed = environs[300 : 300 + args.requests]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    for environ in timed:
        if _call(app, environ) != 200:
            raise SystemExit("a webhook did not answer 200")
        done += 1
        if time.perf_counter() - wall0 > args.time_cap:
            break
    whole = (time.process_time() - cpu0) / done * 1e6
    print(f"{done} webhooks of the mix, SQLite, in one process: {whole:,.0f} µs of CPU each\n")
    print(f"{'µs/webhook':>10} {'calls':>6}  piece")
    for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"{seconds / done * 1e6:10,.0f} {calls[label] / done:6.2f}  {label}")
    with app.app_context():
        db.engine.dispose()


if __name__ == "__main__":
    main()
