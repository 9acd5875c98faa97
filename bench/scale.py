"""Scale: a database with a million conversations and ten million evidence records.

    .venv/bin/python -m bench.scale --smoke                          # small, ~1 min
    .venv/bin/python -m bench.scale --backend postgres               # 1M / 10M
    .venv/bin/python -m bench.scale --conversations 100000 --records 1000000

Per backend (``--backend sqlite|postgres|both``):

1. Two fresh databases, migrated with ``flask --app app db upgrade`` and given the
   employees with ``flask --app app employees add``: a *small* one (1,000
   conversations) and a *large* one (``--conversations``, ``--records``).
2. Both are seeded by bulk insert, the large one timed: Postgres with ``COPY … FROM
   STDIN`` (psycopg), SQLite with ``executemany`` in big transactions. The secondary
   indexes and the foreign/unique constraints are dropped for the load and rebuilt
   afterwards from their own definitions (read from the catalog, so the schema after
   the load is exactly the migrated one); Postgres then gets ``VACUUM ANALYZE`` (what
   autovacuum does to a table that grew by itself), SQLite a WAL checkpoint.
   What is seeded, per conversation (``conversations.chain_head``/``chain_length``
   set): a contact's first text held, the consent request, the notice to the
   employee, a delivery status, YES, opted in, the confirmation, the held text relayed
   and released; beyond ten records, the contact's texts and their relays. The
   records are chained with ``bot.evidence.digest`` itself (the same canonical form
   ``audit verify`` recomputes). With ``--messages all`` (default) every text in the
   chain also has its ``messages`` row (inbound with the TwiML answer and SID,
   outbound with its status), so the lookups a webhook makes (``twilio_sid``,
   ``conversation_id``/``disposition``, ``ref``) hit indexes of realistic size;
   ``--messages inbound`` seeds only the inbound ones, ``none`` none.
3. ``flask --app app audit verify`` on the large database: must pass; its wall time
   gives records per second (target >= 100,000/s); peak RSS from ``wait4``.
4. ``flask --app app audit export --out FILE``: wall time and peak RSS (target < 150 MB).
5. Webhook latency, one client, one request at a time, on the small and the large
   database served alike (gunicorn, the Procfile's command, ``WEB_CONCURRENCY`` workers):
   texts from *existing* (opted-in) contacts picked at random across the whole
   database, relayed to the employee, and first texts from *new* contacts. Blocks
   alternate small/large so drift hits both. Ratio large/small (target <= 1.25x).

Writes ``bench/results/scale.json`` (``scale-smoke.json`` with ``--smoke``). Databases
are dropped (SQLite files deleted) unless ``--keep``.
"""

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import common
from bench.load import Signer, latency_summary, send_all
from bot.evidence import HASHED, digest
from bot.models import GENESIS
from bot.texts import DEFAULTS, render

SMALL = (1_000, 10_000)
T0 = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_S = 4 * 365 * 24 * 3600  # conversations start over four years
NEW_CONTACTS = 50_000_000  # contact numbers from here on are never seeded
CHUNK = 5_000  # conversations per unit of work

CONV_COLS = (
    "id",
    "line",
    "contact",
    "contact_name",
    "state",
    "initiator",
    "last_request_at",
    "addressed_at",
    "chain_head",
    "chain_length",
    "created_at",
    "updated_at",
    "twilio_opt_out",
)
ATT_COLS = ("id", "conversation_id", *HASHED, "prev_hash", "hash")
MSG_COLS = (
    "id",
    "ref",
    "conversation_id",
    "direction",
    "author",
    "sender",
    "recipient",
    "body",
    "relay_body",
    "media_json",
    "twilio_sid",
    "idempotency_token",
    "status",
    "error_code",
    "disposition",
    "text_key",
    "source_ref",
    "hint",
    "recovered",
    "signature_valid",
    "answer",
    "review",
    "created_at",
    "updated_at",
)

FIRST = "Hi, I need a quote for a leaking kitchen tap"
LATER = ("Great, Tuesday morning works for me", "How much would that be roughly?", "Thanks!")


def _texts(line: common.Line) -> dict[str, str]:
    """The default texts as this line's employee sends them ({contact} filled per use)."""
    values = {"employee_name": line.name, "company_name": "Acme Plumbing"}
    return {key: render(template, values) for key, template in DEFAULTS.items()}


_LINE_TEXTS = [_texts(line) for line in common.LINES]


def _twiml(parts: list[tuple[str | None, str, str]]) -> str:
    """The answer as the app renders it: one <Message> per text, with its status callback."""
    body = "".join(
        f'<Message{f" to={chr(34)}{to}{chr(34)}" if to else ""} statusCallback="'
        f'{common.PUBLIC_BASE}/twilio/status?ref={ref}">{text}</Message>'
        for to, ref, text in parts
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'


def _template(m: int):
    """The kinds of a conversation's first ``m`` records (see the module's notes)."""
    base = ["in_first", "request", "out_request", "out_notice", "status", "in_yes",
            "opted_in", "out_confirm", "out_relay_first", "released"]  # fmt: skip
    extra = ["in_text", "out_relay_text"] * ((max(0, m - len(base)) + 1) // 2)
    return (base + extra)[:m]


MESSAGE_STEPS = {"in_first", "out_request", "out_notice", "in_yes", "out_confirm",
                 "out_relay_first", "in_text", "out_relay_text"}  # fmt: skip
INBOUND_STEPS = {"in_first", "in_yes", "in_text"}


def messages_in(m: int, mode: str) -> int:
    steps = _template(m)
    if mode == "none":
        return 0
    wanted = INBOUND_STEPS if mode == "inbound" else MESSAGE_STEPS
    return sum(step in wanted for step in steps)


class Plan:
    """Which ids each conversation's records and messages get (everything derived, no state)."""

    def __init__(self, conversations: int, records: int, messages: str):
        self.conversations, self.records, self.messages = conversations, records, messages
        self.q, self.r = divmod(records, conversations)
        self.mq = messages_in(self.q, messages)
        self.mq1 = messages_in(self.q + 1, messages)

    def records_of(self, i: int) -> int:
        return self.q + (1 if i <= self.r else 0)

    def first_record_id(self, i: int) -> int:
        return (i - 1) * self.q + min(i - 1, self.r) + 1

    def first_message_id(self, i: int) -> int:
        return (i - 1) * self.mq + min(i - 1, self.r) * (self.mq1 - self.mq) + 1

    @property
    def total_messages(self) -> int:
        return self.first_message_id(self.conversations + 1) - 1


def contact_of(i: int) -> str:
    return common.contact_number(i)


def line_of(i: int) -> common.Line:
    return common.LINES[i % len(common.LINES)]


def build_conversation(i: int, plan: Plan, rng: random.Random):
    """(conversation row, attestation rows, message rows) of conversation ``i`` (dicts)."""
    line = line_of(i)
    texts = _LINE_TEXTS[i % len(common.LINES)]
    contact, L, E = contact_of(i), line.line, line.cell
    start = T0 + timedelta(seconds=SPAN_S * (i - 1) / plan.conversations)
    m = plan.records_of(i)
    steps = _template(m)
    mode = plan.messages
    att_id, msg_id = plan.first_record_id(i), plan.first_message_id(i)
    prev, state, initiator, last_request, addressed = GENESIS, "new", None, None, None
    atts, msgs = [], []
    refs: dict[str, str] = {}
    sids: dict[str, str] = {}
    request_text = texts["consent.contact_initiated.to_contact"]
    notice_text = texts["consent.contact_initiated.to_employee"]
    confirm_text = texts["consent.contact_initiated.opted_in.to_contact"]
    confirm_employee = texts["consent.contact_initiated.opted_in.to_employee"]
    last_text = FIRST

    def ref(at: datetime) -> str:
        # As bot.models.new_ref: milliseconds since 1970, then 80 random bits.
        return f"{int(at.timestamp() * 1000):011x}{rng.getrandbits(80):020x}"

    def sid() -> str:
        return f"SM{rng.getrandbits(128):032x}"

    for seq, step in enumerate(steps, start=1):
        at = start + timedelta(seconds=37 * seq, microseconds=(i * 7919 + seq * 104729) % 10**6)
        v: dict = dict.fromkeys(HASHED)
        # created_at in its canonical text (what digest makes of the datetime); the
        # backends parse it back (see _rows).
        v["seq"], v["created_at"] = seq, at.isoformat(timespec="microseconds")[:-6] + "Z"
        msg = None
        if step in ("in_first", "in_yes", "in_text"):
            body = {"in_first": FIRST, "in_yes": "YES"}.get(step) or LATER[seq % len(LATER)]
            if step == "in_text":
                last_text = body
            r, s = ref(at), sid()
            refs[step], sids[step] = r, s
            note = {"in_first": "held", "in_yes": "answered", "in_text": "relayed"}[step]
            v |= {"kind": "message", "message_ref": r, "direction": "inbound", "sender": contact,
                  "recipient": L, "body": body, "media_json": "[]", "twilio_sid": s,
                  "status": "received", "signature_valid": True, "note": note}  # fmt: skip
            addressed = at
            if step == "in_first":
                answer = _twiml([(None, "r" * 24, request_text), (E, "n" * 24, notice_text)])
            elif step == "in_yes":
                answer = _twiml([(None, "c" * 24, confirm_text), (E, "e" * 24, confirm_employee)])
            else:
                answer = _twiml([(E, "t" * 24, f"{contact}: {body}")])
            msg = {"ref": r, "direction": "inbound", "author": "contact", "sender": contact,
                   "recipient": L, "body": body, "twilio_sid": s, "status": "received",
                   "disposition": {"in_first": "released", "in_yes": "answered"}.get(
                       step, "relayed"),
                   "idempotency_token": f"{rng.getrandbits(128):032x}", "answer": answer,
                   "signature_valid": True}  # fmt: skip
        elif step in ("request", "opted_in"):
            first = step == "request"
            state = "pending" if first else "opted_in"
            initiator = "contact"
            if first:
                last_request = at
            cause = "in_first" if first else "in_yes"
            v |= {"kind": "consent", "event": "request_sent" if first else "opted_in",
                  "mode": "consent", "state": state,
                  "shown_text": request_text if first else confirm_text,
                  "cause_sid": sids.get(cause), "cause_body": FIRST if first else "YES",
                  "signature_valid": True, "method": "sms"}  # fmt: skip
        elif step.startswith("out_"):
            to_contact = step in ("out_request", "out_confirm")
            body, key, source = {
                "out_request": (request_text, "consent.contact_initiated.to_contact", None),
                "out_notice": (notice_text, "consent.contact_initiated.to_employee", None),
                "out_confirm": (confirm_text, "consent.contact_initiated.opted_in.to_contact",
                                None),
                "out_relay_first": (f"{contact}: {FIRST}", None, "in_first"),
                "out_relay_text": (f"{contact}: {last_text}", None, "in_text"),
            }[step]  # fmt: skip
            r = ref(at)
            refs[step] = r
            recipient = contact if to_contact else E
            source_ref = refs.get(source) if source else None
            v |= {"kind": "message", "message_ref": r, "direction": "outbound", "sender": L,
                  "recipient": recipient, "body": body, "media_json": "[]", "status": "queued",
                  "note": key or f"relay of {source_ref}"}  # fmt: skip
            delivered = step == "out_request" and "status" in steps
            if delivered:
                sids[step] = sid()
            msg = {"ref": r, "direction": "outbound", "author": "contact" if source else None,
                   "sender": L, "recipient": recipient, "body": body,
                   "twilio_sid": sids.get(step) if delivered else None,
                   "status": "delivered" if delivered else "queued", "text_key": key,
                   "source_ref": source_ref}  # fmt: skip
        elif step == "status":
            v |= {"kind": "status", "message_ref": refs["out_request"], "direction": "outbound",
                  "sender": L, "recipient": contact, "twilio_sid": sids["out_request"],
                  "status": "delivered", "signature_valid": True}  # fmt: skip
        elif step == "released":
            v |= {"kind": "disposition", "message_ref": refs["in_first"],
                  "direction": "inbound", "twilio_sid": sids["in_first"],
                  "note": "released"}  # fmt: skip
        # The hash, with the created_at already in its canonical text (what digest does).
        h = digest(L, contact, prev, v)
        atts.append((att_id, v, prev, h))
        att_id += 1
        prev = h
        wanted = INBOUND_STEPS if mode == "inbound" else MESSAGE_STEPS
        if msg is not None and mode != "none" and step in wanted:
            msg |= {"id": msg_id, "conversation_id": i, "created_at": at, "updated_at": at}
            msgs.append(msg)
            msg_id += 1
    conv = {"id": i, "line": L, "contact": contact, "contact_name": None, "state": state,
            "initiator": initiator, "last_request_at": last_request, "addressed_at": addressed,
            "chain_head": prev, "chain_length": m, "created_at": start,
            "updated_at": msgs[-1]["created_at"] if msgs else start,
            "twilio_opt_out": False}  # fmt: skip
    return conv, atts, msgs


# -- encoding rows for each backend -----------------------------------------------


def _pg(value) -> str:
    """A value in COPY's text format. Strings are not escaped: ``chunk`` checks that no
    generated value holds a tab, newline or backslash (they would need escaping)."""
    if value is None:
        return "\\N"
    if value.__class__ is str:
        return value
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return str(value)


def _sqlite(value):
    if isinstance(value, datetime):  # as SQLAlchemy stores it on SQLite: naive UTC
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


MSG_DEFAULTS = dict.fromkeys(MSG_COLS) | {
    "media_json": "[]", "hint": False, "recovered": False,
}  # fmt: skip


def _rows(conv, atts, msgs, backend):
    conv_row = tuple(conv[c] for c in CONV_COLS)
    if backend == "sqlite":  # SQLAlchemy's SQLite format: "2022-01-01 00:00:37.123456"
        for _, v, _, _ in atts:
            v["created_at"] = v["created_at"][:10] + " " + v["created_at"][11:26]
    att_rows = [(aid, conv["id"], *(v[n] for n in HASHED), p, h) for aid, v, p, h in atts]
    msg_rows = [tuple((MSG_DEFAULTS | m)[c] for c in MSG_COLS) for m in msgs]
    return conv_row, att_rows, msg_rows


def chunk(args):
    """Conversations ``first..last`` encoded for ``backend``: (convs, atts, msgs, counts)."""
    first, last, plan, backend = args
    rng = random.Random(first)
    convs, atts, msgs = [], [], []
    for i in range(first, last + 1):
        c, a, m = _rows(*build_conversation(i, plan, rng), backend)
        convs.append(c)
        atts.extend(a)
        msgs.extend(m)
    counts = (len(convs), len(atts), len(msgs))
    if backend == "postgres":

        def tsv(rows):
            text = "".join("\t".join(map(_pg, row)) + "\n" for row in rows)
            if rows and (
                text.count("\t") != len(rows) * (len(rows[0]) - 1)
                or text.count("\n") != len(rows)
                or "\\" in text.replace("\\N", "")
                or "\r" in text
            ):
                raise ValueError("a seeded value needs COPY escaping; escape it in _pg")
            return text.encode()

        return tsv(convs), tsv(atts), tsv(msgs), counts
    fix = lambda rows: [tuple(map(_sqlite, row)) for row in rows]  # noqa: E731
    return fix(convs), fix(atts), fix(msgs), counts


def _work(plan: Plan, backend: str, processes: int):
    ranges = [
        (a, min(a + CHUNK - 1, plan.conversations), plan, backend)
        for a in range(1, plan.conversations + 1, CHUNK)
    ]
    if processes <= 1 or len(ranges) == 1:
        yield from map(chunk, ranges)
        return
    # At most a few chunks ahead of the writer, so memory stays flat however large.
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        todo = iter(ranges)
        ahead = deque(pool.apply_async(chunk, (r,)) for r in itertools.islice(todo, 2 * processes))
        while ahead:
            result = ahead.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.apply_async(chunk, (nxt,)))
            yield result


TABLES = ("conversations", "attestations", "messages")


def seed_postgres(url: str, plan: Plan, processes: int) -> dict:
    import psycopg

    timings = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        # Every index and constraint of the three tables but the primary keys, as defined.
        constraints = conn.execute(
            """SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype
               FROM pg_constraint c
               WHERE c.conrelid::regclass::text = ANY(%s) AND c.contype IN ('u', 'f')
               ORDER BY c.contype DESC""",
            (list(TABLES),),
        ).fetchall()
        indexes = conn.execute(
            """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index i
               WHERE i.indrelid::regclass::text = ANY(%s) AND NOT i.indisprimary
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)""",
            (list(TABLES),),
        ).fetchall()
        before = _pg_schema(conn)
        t = time.monotonic()
        for table, name, _definition, _ in sorted(constraints, key=lambda c: c[3] != "f"):
            conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _definition in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        counts = [0, 0, 0]
        with conn.transaction(), conn.cursor() as cur:
            copies = [
                f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                for table, cols in zip(TABLES, (CONV_COLS, ATT_COLS, MSG_COLS), strict=True)
            ]
            buffers = [[], [], []]
            size = 0

            def flush():
                nonlocal size
                for k, statement in enumerate(copies):
                    if buffers[k]:
                        with cur.copy(statement) as copy:
                            for piece in buffers[k]:
                                copy.write(piece)
                        buffers[k].clear()
                size = 0

            for c, a, m, n in _work(plan, "postgres", processes):
                for k, piece in enumerate((c, a, m)):
                    buffers[k].append(piece)
                    counts[k] += n[k]
                    size += len(piece)
                if size > 64 * 2**20:
                    flush()
            flush()
        timings["copy_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        for _name, definition in indexes:
            conn.execute(definition)
        for table, name, definition, _ in sorted(constraints, key=lambda c: c[3] == "f"):
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        timings["index_s"] = round(time.monotonic() - t, 1)
        for table in TABLES:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT coalesce(max(id), 1) FROM {table}))"
            )
        t = time.monotonic()
        for table in TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
        timings["vacuum_analyze_s"] = round(time.monotonic() - t, 1)
        if _pg_schema(conn) != before:
            raise RuntimeError("the schema after the load differs from the migrated one")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"rows": dict(zip(TABLES, counts, strict=True)), "database_bytes": size, **timings}


def _pg_schema(conn) -> list:
    return conn.execute(
        """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
           WHERE connamespace = 'public'::regnamespace
           UNION ALL
           SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
           ORDER BY 1, 2, 3"""
    ).fetchall()


def seed_sqlite(path: Path, plan: Plan, processes: int) -> dict:
    timings = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        conn.execute("PRAGMA foreign_keys=OFF")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            f" AND tbl_name IN ({', '.join('?' * len(TABLES))})",
            TABLES,
        ).fetchall()
        before = _sqlite_schema(conn)
        t = time.monotonic()
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        inserts = [
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for table, cols in zip(TABLES, (CONV_COLS, ATT_COLS, MSG_COLS), strict=True)
        ]
        counts = [0, 0, 0]
        conn.execute("BEGIN")
        pending = 0
        for c, a, m, n in _work(plan, "sqlite", processes):
            for k, rows in enumerate((c, a, m)):
                conn.executemany(inserts[k], rows)
                counts[k] += n[k]
            pending += n[1]
            if pending > 2_000_000:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                pending = 0
        conn.execute("COMMIT")
        timings["insert_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        for _name, sql in indexes:
            conn.execute(sql)
        timings["index_s"] = round(time.monotonic() - t, 1)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if _sqlite_schema(conn) != before:
            raise RuntimeError("the schema after the load differs from the migrated one")
        problems = conn.execute("PRAGMA foreign_key_check").fetchmany(5)
        if problems:
            raise RuntimeError(f"foreign keys do not hold: {problems}")
    finally:
        conn.close()
    return {
        "rows": dict(zip(TABLES, counts, strict=True)),
        "database_bytes": path.stat().st_size,
        **timings,
    }


def _sqlite_schema(conn) -> list:
    return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY 1, 2").fetchall()


# -- measuring -----------------------------------------------------------------


GNU_TIME = "/usr/bin/time"


ORPHAN_QUERY = "SELECT count(attestations.id)"  # how bot.evidence._orphans starts


def timed_child(
    args: list[str], database_url: str, timeout: float, watch_pg: str | None = None,
    orphan_grace: float = 0,
) -> dict:  # fmt: skip
    """Run ``flask --app app ARGS``: wall time, CPU and peak RSS.

    The peak RSS comes from GNU time (``%M``, the child's ``wait4`` high-water mark):
    measuring with ``wait4`` from this process would report at least this process's
    own RSS, which a child forked from it carries until it execs.

    ``watch_pg`` (a database name): note when ``audit verify`` reaches its last query,
    the orphan check, so the chain walk before it is timed on its own; if that query
    runs longer than ``orphan_grace`` seconds, stop the command (its process group and
    its Postgres backend) and say so."""
    command = [common.python(), "-m", "flask", "--app", "app", *args]
    result: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        usage_file = Path(scratch) / "usage"
        out_file = Path(scratch) / "out"
        if os.path.exists(GNU_TIME):
            command = [GNU_TIME, "-o", str(usage_file), "-f", "%M %U %S", *command]
        started = time.monotonic()
        with open(out_file, "wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=common.ROOT,
                env=common.app_env(database_url),
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group, to stop it whole
            )
        orphan_started = None
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if watch_pg and orphan_started is None and _pg_running(watch_pg, ORPHAN_QUERY):
                orphan_started = now
                result["chain_walk_s"] = round(now - started, 1)
            stop = now - started > timeout
            if orphan_started is not None and orphan_grace and now - orphan_started > orphan_grace:
                result["orphan_check_stopped_after_s"] = round(now - orphan_started, 1)
                stop = True
            if stop:
                result["stopped"] = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if watch_pg:
                    _pg_stop(watch_pg, ORPHAN_QUERY)
        wall = time.monotonic() - started
        rss = cpu = None
        if usage_file.exists() and not result.get("stopped"):
            fields = usage_file.read_text().split()[-3:]
            rss, cpu = int(fields[0]) / 1024, float(fields[1]) + float(fields[2])
        text = out_file.read_bytes().decode(errors="replace")
    return {
        "exit": proc.returncode,
        "seconds": round(wall, 2),
        "peak_rss_mb": round(rss, 1) if rss is not None else None,
        "cpu_s": round(cpu, 2) if cpu is not None else None,
        "output": text.strip()[-400:],
        **result,
    }


def _pg_running(database: str, prefix: str) -> bool:
    import psycopg

    with psycopg.connect(common.pg_url(database), autocommit=True) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
                " AND query LIKE %s",
                (database, prefix + "%"),
            ).fetchone()
        )


def _pg_stop(database: str, prefix: str) -> None:
    """End the backend still running the stopped command's query (ours, on our database)."""
    import psycopg

    with psycopg.connect(common.pg_url(database), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            (database, prefix + "%"),
        )


def verify_in_process(database_url: str, anti_join: bool) -> dict:
    """``bot.evidence.verify`` in this process, timed; with ``anti_join`` its orphan
    check is written ``NOT EXISTS`` (an anti-join) instead of ``NOT IN (subquery)``,
    the one change it needs on Postgres at this size (see bench/README.md). The chain
    walk itself is the app's, unchanged."""
    from sqlalchemy import exists, func, select

    from bot import create_app, evidence
    from bot.extensions import db
    from bot.models import Attestation, Conversation

    env = common.app_env(database_url)
    # No statement_timeout: a command's connection, as under ``flask`` (FLASK_RUN_FROM_CLI).
    options = {"SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 5}}}
    app = create_app(options if database_url.startswith("postgres") else None, env=env)

    def orphans() -> int:
        return db.session.execute(
            select(func.count(Attestation.id)).where(
                ~exists().where(Conversation.id == Attestation.conversation_id)
            )
        ).scalar()

    original = evidence._orphans
    if anti_join:
        evidence._orphans = orphans
    try:
        with app.app_context():
            started = time.monotonic()
            report = evidence.verify()
            seconds = time.monotonic() - started
            db.session.remove()
            db.engine.dispose()
    finally:
        evidence._orphans = original
    return {
        "ok": report.ok,
        "conversations": report.conversations,
        "entries": report.entries,
        "broken": [str(b) for b in (report.broken or [])[:5]],
        "seconds": round(seconds, 1),
        "records_per_s": round(report.entries / seconds) if seconds else None,
        "orphan_check": "NOT EXISTS (bench's replacement)" if anti_join else "the app's",
    }


def _wal() -> tuple[int, int, int] | None:
    """Postgres's WAL counters (cluster-wide: any other activity on the server counts too)."""
    import psycopg

    with psycopg.connect(common.PG_ADMIN, autocommit=True) as conn:
        return conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()


def latency(
    servers: dict, plans: dict, requests: int, blocks: int, seed: int, wal: bool = False
) -> dict:
    """Sequential webhooks, one client: existing and new conversations, small vs large.

    With ``wal`` (Postgres), also the WAL written per webhook: records, full-page
    images and bytes (pg_stat_wal, cluster-wide)."""
    signer = Signer(seed=seed)
    rng = random.Random(seed)
    samples = {(db, kind): [] for db in servers for kind in ("existing", "new")}
    new_counter = {db: NEW_CONTACTS for db in servers}
    per_block = max(1, requests // blocks)

    def steps(db: str, kind: str, n: int):
        out = []
        for _ in range(n):
            if kind == "existing":
                i = rng.randint(1, plans[db].conversations)
                contact, line = contact_of(i), line_of(i)
                out.append(signer.sign(kind, contact, line.line, rng.choice(LATER)))
            else:
                k = new_counter[db]
                new_counter[db] += 1
                contact, line = common.contact_number(k), line_of(k)
                out.append(signer.sign(kind, contact, line.line, FIRST))
        return [[s] for s in out]

    for db, server in servers.items():  # warm-up, not recorded
        send_all(server.sms_url, steps(db, "existing", 30), 1, 30, 60)
        send_all(server.sms_url, steps(db, "new", 10), 1, 10, 60)
    non_200 = 0
    wal_used = {key: [0, 0, 0] for key in samples}
    for block in range(blocks):
        for kind in ("existing", "new"):
            order = list(servers) if block % 2 == 0 else list(reversed(servers))
            for db in order:
                todo = steps(db, kind, per_block)  # signed before the clock starts
                before = _wal() if wal else None
                run = send_all(servers[db].sms_url, todo, 1, per_block, 300)
                if wal:
                    after = _wal()
                    for k in range(3):
                        wal_used[(db, kind)][k] += after[k] - before[k]
                samples[(db, kind)] += run.latencies
                non_200 += sum(s != 200 for s in run.statuses)
    result = {"non_200": non_200, "requests_each": per_block * blocks}
    if wal:
        n = per_block * blocks
        result["wal_per_webhook_cluster_wide"] = {
            f"{db}/{kind}": {
                "records": round(used[0] / n, 1),
                "full_page_images": round(used[1] / n, 1),
                "bytes": round(used[2] / n),
            }
            for (db, kind), used in wal_used.items()
        }
    for kind in ("existing", "new"):
        small, large = (latency_summary(samples[(db, kind)]) for db in ("small", "large"))
        result[kind] = {
            "small": small,
            "large": large,
            "ratio_p50": round(large["p50_ms"] / small["p50_ms"], 3),
            "ratio_mean": round(large["mean_ms"] / small["mean_ms"], 3),
            "ratio_p99": round(large["p99_ms"] / small["p99_ms"], 3),
        }
    return result


def one_backend(backend: str, args, tmp: Path) -> dict:
    sizes = {"small": SMALL, "large": (args.conversations, args.records)}
    urls, created = {}, []
    report: dict = {"backend": backend}
    given = {"small": args.small_url, "large": args.large_url}
    fresh = [db for db in sizes if not given[db]]
    try:
        for db in sizes:
            if given[db]:
                urls[db] = given[db]
            elif backend == "postgres":
                name = f"bench_scale_{db}_{os.getpid()}"
                urls[db] = common.create_pg_db(name)
                created.append(name)
            else:
                urls[db] = f"sqlite:///{tmp / f'scale_{db}.sqlite3'}"
        with ThreadPoolExecutor(max(1, len(fresh))) as pool:  # migrate, add the employees
            list(
                pool.map(
                    lambda db: (common.migrate(urls[db]), common.seed_employees(urls[db])), fresh
                )
            )
        plans = {db: Plan(c, r, args.messages) for db, (c, r) in sizes.items()}
        for db in fresh:
            plan = plans[db]
            print(
                f"[{backend}] seeding {db}: {plan.conversations:,} conversations, "
                f"{plan.records:,} records, {plan.total_messages:,} messages",
                flush=True,
            )
            t = time.monotonic()
            if backend == "postgres":
                seeded = seed_postgres(urls[db], plan, args.processes)
            else:
                seeded = seed_sqlite(Path(urls[db][len("sqlite:///") :]), plan, args.processes)
            seeded["seconds"] = round(time.monotonic() - t, 1)
            seeded["records_per_s"] = round(plan.records / max(seeded["seconds"], 1e-9))
            report[f"seed_{db}"] = seeded
            print(f"[{backend}] seeded {db} in {seeded['seconds']} s: {seeded}", flush=True)
        if "verify" in args.steps:
            # audit verify must pass on the seeded data; then its speed and memory.
            check = timed_child(["audit", "verify"], urls["small"], 600)
            if check["exit"] != 0:
                raise RuntimeError(f"audit verify fails on the small seeded database: {check}")
            pg_name = urls["large"].rpartition("/")[2] if backend == "postgres" else None
            verify = timed_child(
                ["audit", "verify"], urls["large"], args.child_timeout, pg_name, args.orphan_grace
            )
            verify["ok"] = verify["exit"] == 0 and "OK: every chain intact" in verify["output"]
            verify["records_per_s"] = round(args.records / verify["seconds"])
            if "chain_walk_s" in verify:
                verify["chain_walk_records_per_s"] = round(args.records / verify["chain_walk_s"])
            verify["target_records_per_s"] = 100_000
            report["verify"] = verify
            print(f"[{backend}] audit verify: {verify}", flush=True)
            if not verify["ok"]:
                # The seeded chains must still be shown valid: verify in this process, with
                # only the orphan check replaced (see verify_in_process).
                in_process = verify_in_process(urls["large"], anti_join=True)
                report["verify_in_process"] = in_process
                print(f"[{backend}] verify in process: {in_process}", flush=True)
                seeded = in_process["entries"] >= plans["large"].records
                if not (in_process["ok"] and seeded):
                    raise RuntimeError("the seeded chains do not verify")
        if "export" in args.steps:
            csv_path = tmp / f"export_{backend}.csv"
            export = timed_child(
                ["audit", "export", "--out", str(csv_path)], urls["large"], args.child_timeout
            )
            export["csv_bytes"] = csv_path.stat().st_size if csv_path.exists() else None
            export["records_per_s"] = round(args.records / export["seconds"])
            export["target_peak_rss_mb_below"] = 150
            with contextlib.suppress(OSError):
                csv_path.unlink()
            report["export"] = export
            print(f"[{backend}] audit export: {export}", flush=True)
        if "latency" in args.steps:
            # Latency: both databases served the same way, measured in alternating blocks.
            with contextlib.ExitStack() as stack:
                servers = {
                    db: stack.enter_context(
                        common.gunicorn(
                            f"{backend}-{db}",
                            "wsgi:app",
                            common.app_env(urls[db], args.workers),
                            common.RESULTS / "logs" / f"scale-{backend}-{db}.log",
                            args.workers,
                        )
                    )
                    for db in sizes
                }
                report["latency"] = latency(
                    servers, plans, args.requests, args.blocks, seed=11, wal=backend == "postgres"
                )
            print(f"[{backend}] latency: {json.dumps(report['latency'])}", flush=True)
            report["verify_after_webhooks"] = {
                db: timed_child(["audit", "verify"], urls[db], args.child_timeout)["exit"] == 0
                for db in ("small",)
            }
    finally:
        if not args.keep:
            for name in created:
                with contextlib.suppress(Exception):
                    common.drop_pg_db(name)
            for db in fresh:
                if backend == "sqlite":
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(OSError):
                            Path(urls[db][len("sqlite:///") :] + suffix).unlink()
        else:
            report["kept"] = urls
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--messages", choices=("all", "inbound", "none"), default="all")
    parser.add_argument("--requests", type=int, default=400, help="per database and kind")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 2,
        help="processes computing the chains while seeding",
    )
    parser.add_argument("--child-timeout", type=float, default=3600)
    parser.add_argument(
        "--orphan-grace",
        type=float,
        default=300,
        help="Postgres: stop audit verify if its orphan check runs longer than this",
    )
    parser.add_argument(
        "--steps",
        default="verify,export,latency",
        help="which measurements to run after seeding (comma-separated)",
    )
    parser.add_argument("--small-url", help="an already seeded small database (skip seeding)")
    parser.add_argument("--large-url", help="an already seeded large database (skip seeding)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.conversations, args.records, args.requests, args.blocks = 5_000, 50_000, 40, 2
    if args.records < args.conversations:
        parser.error("--records must be at least --conversations")
    out = args.out or common.RESULTS / ("scale-smoke.json" if args.smoke else "scale.json")
    started = time.monotonic()
    report = {
        "command": common.command_line(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "config": {
            "conversations": args.conversations,
            "records": args.records,
            "messages": args.messages,
            "small": {"conversations": SMALL[0], "records": SMALL[1]},
            "latency_requests_per_database_and_kind": args.requests,
            "blocks": args.blocks,
            "workers": args.workers,
            "smoke": args.smoke,
        },
        "app_version": common.git_state(),
        "gunicorn": common.gunicorn_config("wsgi:app", common.app_env("sqlite://", args.workers)),
        "targets": {
            "latency_ratio_large_over_small_at_most": 1.25,
            "verify_records_per_s_at_least": 100_000,
            "export_peak_rss_mb_below": 150,
        },
        "backends": {},
    }
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        for backend in backends:
            report["backends"][backend] = one_backend(backend, args, tmp)
    finally:
        if args.keep:  # the SQLite databases live here: kept with the rest
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_summary(report)
    print(f"wrote {out}")


def print_summary(report: dict) -> None:
    c = report["config"]
    print(
        f"\nscale: {c['conversations']:,} conversations, {c['records']:,} records "
        f"(messages: {c['messages']}) vs {SMALL[0]:,}/{SMALL[1]:,}"
    )
    for backend, r in report["backends"].items():
        seed = r.get("seed_large", {})
        print(
            f"\n[{backend}] seeded in {seed.get('seconds')} s "
            f"({seed.get('records_per_s')} records/s), "
            f"{seed.get('database_bytes', 0) / 2**30:.2f} GiB"
        )
        v, e = r.get("verify"), r.get("export")
        if v is None:
            print("  audit verify: not run (--steps)")
        else:
            print(
                f"  audit verify: {'OK' if v.get('ok') else 'FAILED'} in {v.get('seconds')} s = "
                f"{v.get('records_per_s')} records/s (target >= 100,000), "
                f"peak RSS {v.get('peak_rss_mb')} MB"
            )
        if e is None:
            print("  audit export: not run (--steps)")
        else:
            print(
                f"  audit export: {e.get('seconds')} s = {e.get('records_per_s')} records/s, "
                f"peak RSS {e.get('peak_rss_mb')} MB (target < 150)"
            )
        lat = r.get("latency", {})
        for kind in ("existing", "new"):
            if kind in lat:
                k = lat[kind]
                print(
                    f"  webhook, {kind:8} conversation: p50 {k['small']['p50_ms']} -> "
                    f"{k['large']['p50_ms']} ms (x{k['ratio_p50']}), mean x{k['ratio_mean']}, "
                    f"p99 {k['small']['p99_ms']} -> {k['large']['p99_ms']} ms (x{k['ratio_p99']})"
                )


if __name__ == "__main__":
    main()
