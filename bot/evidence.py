"""The attestation log (SPEC §10): append to a conversation's hash chain, verify, export."""

import contextlib
import csv
import hashlib
import itertools
import json
import multiprocessing
import operator
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import IO, Any

from flask import current_app
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from bot.extensions import db, read_only
from bot.models import GENESIS, Attestation, Conversation, utcnow

# The fields each entry's hash covers, in this order (with line and contact).
HASHED = (
    "seq",
    "created_at",
    "kind",
    "message_ref",
    "direction",
    "sender",
    "recipient",
    "body",
    "media_json",
    "twilio_sid",
    "status",
    "error_code",
    "event",
    "mode",
    "state",
    "shown_text",
    "cause_sid",
    "cause_body",
    "signature_valid",
    "admin",
    "method",
    "note",
)
EXPORT_COLUMNS = ("line", "contact", *HASHED, "prev_hash", "hash")


_NO_OFFSET = timedelta(0)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.utcoffset() != _NO_OFFSET:  # a naive value is taken as local time
            value = value.astimezone(UTC)
        # YYYY-MM-DDTHH:MM:SS.ffffffZ (isoformat is quicker than strftime)
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
    if isinstance(value, Enum):
        return value.value
    return value


def _not_plain(value: Any) -> Any:
    """What the encoder writes for a value JSON has no form for: a time's or enum's text.

    A str or int, an enum of them (``StrEnum``) included, is written by the encoder
    itself as the str or int it is, which is its canonical form already."""
    if isinstance(value, datetime | Enum):
        return _canonical(value)
    raise TypeError(f"{type(value).__name__} is not an evidence value")


# One encoder for every entry (json.dumps would build one per call); its C
# implementation asks ``_not_plain`` only about times and non-str enums.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_not_plain)


def _c_encoder() -> Callable[[list], str]:
    """``_ENCODER.encode``, without building the C encoder again for every call.

    ``JSONEncoder.encode`` builds it in each call (in ``iterencode``); here it is
    built once with the same settings (no check for cycles: a payload is a flat
    list). It is used only if it writes what ``_ENCODER.encode`` writes for a
    payload of every kind of value, so a Python whose ``json`` internals differ
    falls back to ``_ENCODER.encode`` rather than to another text.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    try:
        encoder = make(
            None, _not_plain, json.encoder.encode_basestring, None, ":", ",", False, False, True
        )
        sample = ["+1555", 'é"\n😀<&>', 7, None, True, False, datetime(2026, 12, 1, tzinfo=UTC)]

        def encode(payload: list) -> str:
            return "".join(encoder(payload, 0))

        if encode(sample) == _ENCODER.encode(sample):
            return encode
    except (TypeError, ValueError):
        pass
    return _ENCODER.encode


_ENCODE = _c_encoder()


def _seal(prev_hash: str, payload: list[Any]) -> str:
    """SHA-256 over the previous hash and ``[line, contact, *canonical fields]`` as JSON."""
    return hashlib.sha256((prev_hash + _ENCODE(payload)).encode()).hexdigest()


def digest(line: str, contact: str, prev_hash: str, values: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON."""
    return _seal(prev_hash, [line, contact, *(values.get(name) for name in HASHED)])


_HASHED_NAMES = frozenset(HASHED)
# Every hashed field of an entry's values, in order (``entry`` sets them all).
_HASHED_VALUES = operator.itemgetter(*HASHED)


def entry(chain: Any, **fields: Any) -> dict[str, Any]:
    """The next entry at the head of ``chain``, as an ``attestations`` row; advances the head.

    ``chain`` is a locked conversation (anything with ``id``, ``line``, ``contact``,
    ``chain_head`` and ``chain_length``); the caller inserts the row in the same
    transaction that saves the conversation's new head and length.
    """
    fields.setdefault("created_at", utcnow())
    unknown = fields.keys() - _HASHED_NAMES
    if unknown:
        raise TypeError(f"not evidence fields: {sorted(unknown)}")
    seq = chain.chain_length + 1
    # Every field set (None where absent), so a turn's entries insert in one batch.
    values = dict.fromkeys(HASHED)
    values.update(fields)
    values["seq"] = seq
    # digest()'s payload, read at C speed: values holds every hashed field.
    sealed = _seal(chain.chain_head, [chain.line, chain.contact, *_HASHED_VALUES(values)])
    row = values | {"conversation_id": chain.id, "prev_hash": chain.chain_head, "hash": sealed}
    chain.chain_head = sealed
    chain.chain_length = seq
    return row


@dataclass(frozen=True)
class Broken:
    line: str
    contact: str
    reason: str


@dataclass
class Report:
    conversations: int = 0
    entries: int = 0
    broken: list[Broken] | None = None

    @property
    def ok(self) -> bool:
        return not self.broken


def _stored_time(value: Any) -> str:
    """created_at as stored (SQLite: naive UTC text; Postgres: aware) in canonical form."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            return value[:10] + "T" + value[11:] + "Z"
        parsed = datetime.fromisoformat(value)
        value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _canonical(value)


# Row layout of _scan: conversation id, head and length; then line, contact and the
# hashed fields, which are what the hash is computed over; then prev_hash, hash.
_LINE = 3
_PAYLOAD = slice(_LINE, _LINE + 2 + len(HASHED))
_TIME = 2 + HASHED.index("created_at")  # within the payload
_SIGNATURE = HASHED.index("signature_valid")
_SIGNATURE_AT = 2 + _SIGNATURE  # within the payload
_SEQ = _LINE + 2  # seq is the first hashed field

_cursor_names = itertools.count()

# A log this large is verified by several processes, each walking its share of the
# conversations (chains are independent); below it, one process is quicker.
PARALLEL_FROM = 20_000


def _scan_statement(low: int | None = None, high: int | None = None):
    """Every conversation (with id in [low, high)) with its entries, in chain order."""
    stmt = (
        select(
            Conversation.id,
            Conversation.chain_head,
            Conversation.chain_length,
            Conversation.line,
            Conversation.contact,
            *(getattr(Attestation, name) for name in HASHED),
            Attestation.prev_hash,
            Attestation.hash,
        )
        .outerjoin(Attestation, Attestation.conversation_id == Conversation.id)
        .order_by(Conversation.id, Attestation.seq)
    )
    if low is not None:
        stmt = stmt.where(Conversation.id >= low)
    if high is not None:
        stmt = stmt.where(Conversation.id < high)
    return stmt


def _sql(stmt, dialect) -> str:
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _driver_rows(stmt, batch: int) -> Iterator[tuple]:
    """Run a SELECT on the session's connection through the driver's cursor, streamed."""
    driver = db.session.connection().connection.driver_connection
    yield from _cursor_rows(driver, db.engine.dialect.name, _sql(stmt, db.engine.dialect), batch)


def _cursor_rows(driver, dialect_name: str, sql: str, batch: int) -> Iterator[tuple]:
    """Read through the driver's own cursor (server-side on Postgres), as stored:
    no ORM or type processing on millions of rows, and a tampered value (an
    unknown enum, a malformed date) is simply a value that fails its hash."""
    if dialect_name == "postgresql":
        cursor = driver.cursor(name=f"consentline_stream_{next(_cursor_names)}")
        cursor.itersize = batch
    else:
        cursor = driver.cursor()
        cursor.arraysize = batch
    try:
        cursor.execute(sql)
        yield from cursor
    finally:
        cursor.close()


def _walk(rows: Iterator[tuple]) -> tuple[int, int, list[Broken]]:
    """Recompute the chains of ``rows`` (``_scan_statement``'s layout): counts and breaks."""
    conversations = entries = 0
    broken: list[Broken] = []
    current = last = None
    fault: str | None = None
    expected_seq, prev = 1, GENESIS

    def close(row) -> None:
        reason: str | None = fault
        if reason is None and expected_seq - 1 != row[2]:
            reason = f"{row[2]} entries recorded, {expected_seq - 1} found"
        if reason is None and prev != row[1]:
            reason = "the last entry is not the recorded chain head"
        if reason:
            broken.append(Broken(row[_LINE], row[_LINE + 1], reason))

    for row in rows:
        if row[0] != current:
            if last is not None:
                close(last)
            conversations += 1
            current, expected_seq, prev, fault = row[0], 1, GENESIS, None
        last = row
        seq = row[_SEQ]
        if seq is None:
            continue
        entries += 1
        if fault is not None:
            continue
        payload = list(row[_PAYLOAD])
        try:
            payload[_TIME] = _stored_time(payload[_TIME])
            if payload[_SIGNATURE_AT] is not None:
                payload[_SIGNATURE_AT] = bool(payload[_SIGNATURE_AT])  # SQLite keeps 0/1
            computed = _seal(prev, payload)
        except (TypeError, ValueError):
            computed = None
        if seq != expected_seq:
            fault = f"entry {expected_seq} is missing (found {seq})"
        elif row[-2] != prev:
            fault = f"entry {seq} does not follow entry {seq - 1}"
        elif computed != row[-1]:
            fault = f"entry {seq} was altered"
        prev = row[-1]
        expected_seq += 1
    if last is not None:
        close(last)
    return conversations, entries, broken


def _walk_part(url: str, connect_args: dict, sql: str, batch: int):
    """One process's share of ``verify``: its own connection, its own range of chains."""
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        raw = engine.raw_connection()
        try:
            return _walk(_cursor_rows(raw.driver_connection, engine.dialect.name, sql, batch))
        finally:
            raw.rollback()
            raw.close()
    finally:
        engine.dispose()


def _orphans() -> int:
    """Entries whose conversation is gone (possible only with foreign keys off)."""
    # NOT EXISTS plans as an anti-join; NOT IN (subquery) rescans per row on Postgres.
    owner = select(Conversation.id).where(Conversation.id == Attestation.conversation_id)
    return db.session.execute(select(func.count(Attestation.id)).where(~owner.exists())).scalar()


def _ranges(parts: int) -> list[tuple[int | None, int | None]]:
    """Conversation id ranges holding about as many entries each."""
    total = db.session.execute(select(func.coalesce(func.sum(Conversation.chain_length), 0)))
    total = total.scalar()
    if parts < 2 or not total:
        return [(None, None)]
    # Cut where the running sum of chain lengths crosses each share (one indexed scan
    # of the conversations table, which is a tenth of the log).
    bounds, share, running = [], total / parts, 0
    stmt = select(Conversation.id, Conversation.chain_length).order_by(Conversation.id)
    with contextlib.closing(_driver_rows(stmt, 5000)) as rows:  # streamed: constant memory
        for conv_id, length in rows:
            if running >= share * (len(bounds) + 1):
                bounds.append(conv_id)
                if len(bounds) == parts - 1:
                    break
            running += length or 0
    return list(itertools.pairwise([None, *bounds, None]))


def _cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _can_spawn() -> bool:
    """A spawned process re-imports ``__main__``: it must be a module or a real file."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    return spec is not None or (path is not None and os.path.isfile(path))


def verify(batch: int = 5000, processes: int | None = None) -> Report:
    """Recompute every chain; name each conversation whose chain does not hold.

    ``processes`` (default: one per core once the log holds ``PARALLEL_FROM``
    conversations) walk disjoint ranges of conversations at the same time.
    """
    read_only()
    if processes is None:
        many = db.session.execute(select(func.count(Conversation.id))).scalar() >= PARALLEL_FROM
        processes = min(_cores(), 4) if many and _can_spawn() else 1
    report = Report(broken=[])
    if processes > 1:
        dialect = db.engine.dialect
        url = db.engine.url.render_as_string(hide_password=False)
        options = current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
        connect_args = dict(options.get("connect_args") or {})
        sqls = [_sql(_scan_statement(low, high), dialect) for low, high in _ranges(processes)]
        context = multiprocessing.get_context("spawn")  # no forked copy of this process's state
        n = len(sqls)
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            parts = list(pool.map(_walk_part, [url] * n, [connect_args] * n, sqls, [batch] * n))
    else:
        parts = [_walk(_driver_rows(_scan_statement(), batch))]
    for conversations, entries, broken in parts:
        report.conversations += conversations
        report.entries += entries
        report.broken.extend(broken)
    orphans = _orphans()
    if orphans:
        report.entries += orphans
        report.broken.append(Broken("?", "?", f"{orphans} entries belong to no conversation"))
    db.session.rollback()
    return report


def export(out: IO[str], since: datetime | None = None, batch: int = 5000) -> int:
    """Write the attestation log as CSV, streamed in constant memory; return the count."""
    read_only()
    stmt = (
        select(
            Conversation.line,
            Conversation.contact,
            *(getattr(Attestation, name) for name in HASHED),
            Attestation.prev_hash,
            Attestation.hash,
        )
        .outerjoin(Conversation, Conversation.id == Attestation.conversation_id)
        .order_by(Attestation.id)
    )
    if since is not None:
        stmt = stmt.where(Attestation.created_at >= since)
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    time_at = 2 + HASHED.index("created_at")
    signature_at = 2 + _SIGNATURE
    for row in _driver_rows(stmt, batch):
        row = list(row)
        with contextlib.suppress(TypeError, ValueError):  # else as stored; verify names it
            row[time_at] = _stored_time(row[time_at])
        if row[signature_at] is not None:
            row[signature_at] = bool(row[signature_at])
        writer.writerow(["" if v is None else v for v in row])
        count += 1
    db.session.rollback()
    return count
