"""Scale: a million conversations and ten million evidence records, on both databases.

    python -m bench.scale                        # 1M / 10M on both databases (~20 min)
    python -m bench.scale --backend postgres     # one database
    python -m bench.scale --part portal          # parts: latency, verify, export, portal
    python -m bench.scale --conversations 100000 # smaller (ten records a conversation)
    python -m bench.scale --smoke                # 2,000 conversations, every part

Per database: a *large* and a *small* (1,000 conversations) one, each migrated
and given its employees through the CLI, then seeded in bulk: each conversation
is a contact's first text held, the consent request and the employee's notice,
YES, both confirmations, the held text relayed and released: ten evidence
records chained with ``bot.evidence.digest`` itself and seven ``messages`` rows,
one day apart per thousand conversations over two years. A third of the
contacts have names; one in a thousand texts failed, one in two thousand is a
revocation hint. The secondary indexes are dropped for the load and rebuilt
from their own definitions, so the schema is the migrated one.

Then, on the large database: webhook latency at 1M against 1k (one request at a
time, blocks alternating small/large, contacts that exist and new ones),
``audit verify`` records a second, ``audit export`` peak memory, and the
portal's pages (server side, in the app's process: p95 of repeated loads).
Writes bench/results/scale.json (scale-smoke.json with --smoke).
"""

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import sqlalchemy

from bench import common, load
from bot import merkle

UTC = dt.UTC
START = dt.datetime(2024, 12, 1, tzinfo=UTC)
SPAN = dt.timedelta(days=730)
CHUNK = 20_000  # conversations generated (and hashed) at a time, by one process
FIRST = ("Maria", "James", "Aiko", "Omar", "Lena", "Tomas", "Priya", "Kwame", "Sofia", "Ivan")
LAST = ("Okafor", "Lindqvist", "Moreau", "Nakamura", "Reyes", "Schmidt", "Haddad", "Kowalski")
NAMES = [f"{f} {last}{n or ''}" for n in range(40) for f in FIRST for last in LAST]
KEY = "consent.contact_initiated"
# The texts of a seeded conversation: inbound?, to, body, status, disposition, and
# its evidence entry's note (the text's key, for the bot's own texts).
TEXTS = [
    (True, "line", "Hi, is this the plumber?", "received", "released", "held"),
    (False, "contact", "[Auto Message] Please reply YES", "delivered", None, f"{KEY}.to_contact"),
    (False, "cell", "[Auto Message] A contact wrote", "delivered", None, f"{KEY}.to_employee"),
    (True, "line", "YES", "received", "answered", "answered"),
    (False, "contact", "[Auto Message] Opted in", "delivered", None, f"{KEY}.opted_in.to_contact"),
    (False, "cell", "[Auto Message] Opted in", "delivered", None, f"{KEY}.opted_in.to_employee"),
    (False, "cell", "+1…: Hi, is this the plumber?", "delivered", None, "relay"),
]


# -- seeding ---------------------------------------------------------------------------


def conversation_rows(n: int, total: int, stamp):
    """Conversation ``n`` of ``total``: its row, its messages and its evidence entries,
    as tuples in the column order of ``COLUMNS``; ``stamp`` writes a time as stored."""
    from bot.evidence import HASHED, canonical, digest, leaf
    from bot.merkle import leaf_hash
    from bot.models import GENESIS

    _, cell, line = common.LINES[n % len(common.LINES)]
    contact, ref = common.contact_number(n), f"{n:011x}"
    start = START + SPAN * n / total
    to = {"line": line, "contact": contact, "cell": cell}
    texts = [(inbound, to[who], body, *rest) for inbound, who, body, *rest in TEXTS]
    messages, entries, leaves, head = [], [], [], GENESIS

    def record(at, **fields):
        nonlocal head
        values = dict.fromkeys(HASHED) | fields | {"seq": len(entries) + 1, "created_at": at}
        sealed = digest(line, contact, head, values)
        entry_id = n * 10 + len(entries) + 1  # ten entries a conversation, in id order
        salt = hashlib.md5(b"%d" % entry_id).hexdigest()  # random enough for a benchmark
        row = values | {"id": entry_id, "conversation_id": n + 1, "salt": salt}
        entries.append(
            row
            | {"created_at": stamp(at), "prev_hash": head, "hash": sealed}
            | {"leaf_index": entry_id - 1}  # sequenced in id order, as the migration does
        )
        stored = [line, contact, *map(canonical, map(values.get, HASHED)), salt]
        leaves.append(leaf_hash(leaf(stored)))
        head = sealed

    for i, (inbound, to, body, status, disposition, note) in enumerate(texts):
        at, sender = start + dt.timedelta(seconds=i), contact if inbound else line
        failed = status == "delivered" and n % 1000 == 7 and i == 1
        message = {
            "id": n * 7 + i + 1,
            "ref": f"{ref}{i:02d}",
            "conversation_id": n + 1,
            "line": line,
            "direction": "inbound" if inbound else "outbound",
            "sender": sender,
            "recipient": to,
            "body": body,
            "twilio_sid": f"SM{n:024x}{i:08x}",
            "status": "failed" if failed else status,
            "error_code": "30003" if failed else None,
            "disposition": disposition,
            "hint": inbound and i == 0 and n % 2000 == 3,
            "recovered": False,
            "media_json": "[]",
            "created_at": stamp(at),
            "updated_at": stamp(at),
        }
        if inbound:
            message |= {"author": "contact", "signature_valid": True, "answer": "<Response/>"}
        elif note != "relay":
            message["text_key"] = note
        messages.append(message)
        record(
            at,
            kind="message",
            message_ref=message["ref"],
            direction=message["direction"],
            sender=sender,
            recipient=to,
            body=body,
            media_json="[]",
            twilio_sid=message["twilio_sid"] if inbound else None,
            status=message["status"],  # as the portal shows it (no status entries here)
            signature_valid=True if inbound else None,
            note=note,
        )
        if i in (0, 3):  # the consent request follows the first text; opted in, the YES
            record(
                at,
                kind="consent",
                event="request_sent" if i == 0 else "opted_in",
                mode="consent",
                state="pending" if i == 0 else "opted_in",
                shown_text=texts[i + 1][2],
                cause_sid=message["twilio_sid"],
                cause_body=body,
                signature_valid=True,
                method="sms",
            )
    end = start + dt.timedelta(seconds=len(texts))
    record(
        end,
        kind="disposition",
        message_ref=f"{ref}00",
        direction="inbound",
        twilio_sid=messages[0]["twilio_sid"],
        note="released",
    )
    conversation = {
        "id": n + 1,
        "line": line,
        "contact": contact,
        "state": "opted_in",
        "contact_name": NAMES[n % len(NAMES)] if n % 3 == 0 else None,
        "initiator": "contact",
        "last_request_at": stamp(start),
        "twilio_opt_out": False,
        "addressed_at": stamp(end),
        "chain_head": head,
        "chain_length": len(entries),
        "created_at": stamp(start),
        "updated_at": stamp(end),
    }
    return [conversation], messages, entries, leaves


def _rows(bounds) -> list[list]:
    """The rows of conversations [start, stop) of ``total``, per table, and their entries'
    Merkle leaf hashes (one process's part)."""
    start, stop, total, sqlite = bounds
    stamp = functools.lru_cache(maxsize=64)(_sqlite_time) if sqlite else (lambda moment: moment)
    tables = [[], [], [], []]
    empty = [dict.fromkeys(columns) for columns in COLUMNS.values()]  # in column order
    for n in range(start, stop):
        *made, leaves = conversation_rows(n, total, stamp)
        for rows, blank, part in zip(tables[:3], empty, made, strict=True):
            rows += [tuple((blank | row).values()) for row in part]
        tables[3] += leaves
    return tables


def _sqlite_time(moment: dt.datetime) -> str:
    """A time as SQLAlchemy stores it in SQLite: naive UTC text."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _columns() -> dict[str, list[str]]:
    from bot.models import Attestation, Conversation, Message

    return {
        m.__tablename__: [c.name for c in m.__table__.c]
        for m in (Conversation, Message, Attestation)
    }


COLUMNS = _columns()
NODES = "evidence_tree_nodes"
WRITTEN = COLUMNS | {NODES: ["level", "position", "hash"]}


def seed(url: str, conversations: int) -> float:
    """Bulk-load ``conversations`` conversations; the seconds it took."""
    started = time.monotonic()
    sqlite = url.startswith("sqlite")
    parts = [
        (s, min(s + CHUNK, conversations), conversations, sqlite)
        for s in range(0, conversations, CHUNK)
    ]
    tree = merkle.Frontier()
    with (_sqlite if sqlite else _postgres)(url) as write:
        context = multiprocessing.get_context("fork")
        with context.Pool(max(1, min(len(parts), os.cpu_count() or 1))) as pool:
            for *tables, leaves in pool.imap(_rows, parts):
                for table, rows in zip(COLUMNS, tables, strict=True):
                    write(table, rows)
                for hashed in leaves:
                    tree.append(hashed)
                write(NODES, tree.added)
                tree.added.clear()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE evidence_tree SET size = :size, root = :root"),
            {"size": tree.size, "root": tree.root().hex()},
        )
    engine.dispose()
    return time.monotonic() - started


@contextlib.contextmanager
def _postgres(url: str):
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as pg:
        rebuild = _without_indexes_pg(pg, list(COLUMNS))

        def write(table, rows):
            with pg.cursor().copy(f"COPY {table} ({', '.join(WRITTEN[table])}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

        yield write
        for sql in rebuild:
            pg.execute(sql)
        for table in COLUMNS:
            pg.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
            pg.execute(f"VACUUM ANALYZE {table}")


def _without_indexes_pg(pg, tables: list[str]) -> list[str]:
    """Drop the tables' secondary indexes and constraints; the statements that rebuild them."""
    rebuild = []
    for table in tables:
        constraints = pg.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype IN ('u', 'f')",
            (table,),
        ).fetchall()
        for name, definition in constraints:
            pg.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
            rebuild.append(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
        for name, definition in pg.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE contype = 'p')",
            (table,),
        ).fetchall():
            pg.execute(f"DROP INDEX {name}")
            rebuild.insert(0, definition)
    return rebuild


@contextlib.contextmanager
def _sqlite(url: str):
    import sqlite3

    db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")  # a bulk load: no log of what it undoes,
    db.execute("PRAGMA synchronous=OFF")  # flushed once, at its end
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        f" AND tbl_name IN ({', '.join('?' * len(COLUMNS))})",
        list(COLUMNS),
    ).fetchall()
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")
    triggers = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'conversations'"
    ).fetchall()
    for name, _ in triggers:
        db.execute(f"DROP TRIGGER {name}")
    db.execute("BEGIN")

    def write(table, rows):
        marks = ", ".join("?" * len(WRITTEN[table]))
        db.executemany(f"INSERT INTO {table} ({', '.join(WRITTEN[table])}) VALUES ({marks})", rows)

    yield write
    db.execute("COMMIT")
    for _, sql in indexes + triggers:
        db.execute(sql)
    if triggers:  # the contacts' search index, made from the rows loaded
        db.execute("INSERT INTO conversation_search(conversation_search) VALUES ('rebuild')")
    db.execute("ANALYZE")
    db.execute("PRAGMA journal_mode=WAL")  # as the app runs it
    db.close()


# -- measuring ------------------------------------------------------------------------


def latency(small: str, large: str, conversations: int, blocks: int, per_block: int) -> dict:
    """Webhook latency, one request at a time, small and large databases served alike."""
    rng = random.Random(5)
    signer = load.Signer(7)
    kinds = {"existing": [], "new": []}
    times = {(db, kind): [] for db in ("small", "large") for kind in kinds}
    with contextlib.ExitStack() as stack:
        bases = {
            "small": stack.enter_context(common.gunicorn("wsgi:app", common.app_env(small))),
            "large": stack.enter_context(common.gunicorn("wsgi:app", common.app_env(large))),
        }
        fresh = iter(range(500_000_000, 600_000_000))
        for base in bases.values():  # warm: the first requests of a worker pay for imports
            warm = [
                signer.webhook("warm", common.contact_number(next(fresh)), line, "Hi")
                for _, _, line in common.LINES * 4
            ]
            load.closed_loop(base, [warm], 1, cap=60)
        for block in range(blocks * 2):
            db = ("small", "large")[block % 2]
            size = 1000 if db == "small" else conversations
            for _ in range(per_block):
                n = rng.randrange(size)
                _, _, line = common.LINES[n % len(common.LINES)]
                existing = signer.webhook("existing", common.contact_number(n), line, "Thanks!")
                m = next(fresh)
                new = signer.webhook("new", common.contact_number(m), line, "Hello there")
                for kind, webhook in (("existing", existing), ("new", new)):
                    run = load.closed_loop(bases[db], [[webhook]], 1, cap=30)
                    if run.statuses != [200]:
                        raise RuntimeError(f"{db} answered {run.statuses} to {kind}")
                    times[db, kind] += run.latencies
    out = {}
    for kind in kinds:
        small_ms = statistics.median(times["small", kind]) * 1000
        large_ms = statistics.median(times["large", kind]) * 1000
        out[kind] = {
            "small_p50_ms": round(small_ms, 2),
            "large_p50_ms": round(large_ms, 2),
            "ratio": round(large_ms / small_ms, 3),
        }
    return out


def timed_command(args: list[str], url: str) -> tuple[float, float, str]:
    """A ``flask`` command: its wall time, its peak memory (MB) and its output.

    The peak is the process's own high-water mark (``VmHWM``), read while it runs:
    the rusage of a child counts the memory of the process it was forked from.
    """
    env = common.app_env(url) | {"PYTHONPATH": str(common.ROOT)}
    command = [sys.executable, "-m", "flask", "--app", "app", *args]
    started, peak = time.monotonic(), 0
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(command, cwd=common.ROOT, env=env, stdout=output, stderr=output)
        while proc.poll() is None:
            with contextlib.suppress(OSError, IndexError):  # gone meanwhile
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            time.sleep(0.05)
        output.seek(0)
        text = output.read()
    if proc.returncode:
        raise RuntimeError(f"flask {' '.join(args)} failed: {text[-2000:]}")
    return time.monotonic() - started, peak / 1024, text


PAGES = {
    "dashboard": "/",
    "contacts by number": "/contacts?q={number}",
    "contacts by name": "/contacts?q={surname}",
    "contacts, all": "/contacts",
    "a conversation's timeline": "/contacts/{conv_id}",
    "log": "/log",
    "log by line": "/log?line={line}",
    "log by contact": "/log?contact={number}",
    "log by date": "/log?since={day}&until={day}",
    "log by line, paged deep": "/log?line={line}&before={deep}",
    "CSV export, first rows": "/log.csv?line={line}",
}


def portal(url: str, conversations: int, loads: int) -> dict:
    """Each page ``loads`` times (after one warm-up), timed in the app's process."""
    os.environ.update(common.app_env(url))
    from bot import create_app

    app = create_app({"WTF_CSRF_ENABLED": False})
    client = app.test_client()
    common.flask(
        ["admins", "create", "bench@example.com", "--password-stdin"],
        url,
        stdin="bench-password-123\n",
    )
    client.post("/login", data={"email": "bench@example.com", "password": "bench-password-123"})
    n = conversations // 2
    number = common.contact_number(n)
    values = {
        "number": f"({number[2:5]}) {number[5:8]}-{number[8:]}",  # as people type it
        "surname": LAST[3],
        "conv_id": n + 1,
        "line": common.LINES[0][2],
        "day": (START + SPAN / 2).strftime("%Y-%m-%d"),
        "deep": quote(f"{(START + SPAN / 10).isoformat()}~{conversations * 7 // 10 + 1}"),
    }
    out = {}
    for name, path in PAGES.items():
        url_path = path.format(**values)
        times = []
        for _ in range(loads + 1):
            started = time.perf_counter()
            if name.startswith("CSV"):
                response = client.get(url_path, buffered=False)
                chunks = iter(response.response)
                next(chunks), next(chunks)  # the header and the first row
                response.close()
            else:
                response = client.get(url_path)
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{url_path} answered {response.status_code}")
            if "deep" in name and b'rel="prev"' not in response.data:
                raise RuntimeError(f"{url_path} is not a page deep in the log")
        ordered = sorted(times[1:])
        out[name] = {
            "path": url_path,
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        }
        print(f"  {name:>28}: p95 {out[name]['p95_ms']} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--part", action="append", choices=("latency", "verify", "export", "portal")
    )
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.conversations = 2000
    parts = args.part or ["latency", "verify", "export", "portal"]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {
        "machine": common.machine(),
        "conversations": args.conversations,
        "records": args.conversations * 10,
    }
    with (
        common.databases(backends, ["large", "small"]) as urls,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for backend in backends:
            figures = results[backend] = {}
            large, small = urls[backend, "large"], urls[backend, "small"]
            for url, count in ((small, 1000), (large, args.conversations)):
                common.prepare(url)
                seconds = seed(url, count)
            figures["seed_seconds"] = round(seconds, 1)
            print(
                f"{backend}: seeded {args.conversations} conversations in {seconds:.0f} s",
                flush=True,
            )
            if "latency" in parts:
                blocks, per = (2, 10) if args.smoke else (6, 50)
                figures["latency"] = latency(small, large, args.conversations, blocks, per)
                print(f"  latency: {figures['latency']}", flush=True)
            if "verify" in parts:
                wall, rss, output = timed_command(["audit", "verify"], large)
                figures["verify"] = {
                    "seconds": round(wall, 1),
                    "records_per_second": round(args.conversations * 10 / wall),
                    "peak_mb": round(rss),
                }
                print(f"  verify: {figures['verify']} {output.strip()[-80:]}", flush=True)
            if "export" in parts:
                out = Path(tmp) / "export.csv"
                wall, rss, _ = timed_command(["audit", "export", "--out", str(out)], large)
                figures["export"] = {
                    "seconds": round(wall, 1),
                    "peak_mb": round(rss),
                    "file_mb": round(out.stat().st_size / 2**20),
                }
                out.unlink()
                print(f"  export: {figures['export']}", flush=True)
            if "portal" in parts:
                figures["portal"] = portal(large, args.conversations, 5 if args.smoke else 20)
    path = common.write_results("scale-smoke.json" if args.smoke else "scale.json", results)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
