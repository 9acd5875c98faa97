"""The attestation log (SPEC §10): append to a conversation's hash chain, verify, export."""

import contextlib
import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import IO, Any

from flask import current_app
from sqlalchemy import Connection, bindparam, column, create_engine, func, select, table
from sqlalchemy.pool import NullPool

from bot.database import read_only
from bot.extensions import db
from bot.models import GENESIS, Attestation, Conversation, UTCDateTime, utcnow

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
_HASHED = frozenset(HASHED)


def canonical(value: Any) -> Any:
    """A value as its entry's hash covers it: times as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
    (UTC; a naive one is taken as local time), enums as their values."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
    if isinstance(value, Enum):
        return value.value
    return value


# What ``json.dumps(payload, ensure_ascii=False, separators=(",", ":"))`` writes, with
# the encoder it would build for each call built once (verify seals millions).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _seal(prev_hash: str, payload: list[Any]) -> str:
    """SHA-256 over the previous hash and ``payload`` (canonical values) as compact JSON."""
    return hashlib.sha256((prev_hash + _JSON.encode(payload)).encode()).hexdigest()


def digest(line: str, contact: str, prev_hash: str, values: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and ``[line, contact, *hashed fields]`` as JSON."""
    return _seal(prev_hash, [line, contact, *map(canonical, map(values.get, HASHED))])


def entry(chain: Any, **fields: Any) -> dict[str, Any]:
    """The next entry at the head of ``chain``, as an ``attestations`` row; advances the head.

    ``chain`` is a locked conversation (anything with ``id``, ``line``, ``contact``,
    ``chain_head`` and ``chain_length``); the caller inserts the row in the same
    transaction that saves the conversation's new head and length.
    """
    fields.setdefault("created_at", utcnow())
    unknown = fields.keys() - _HASHED
    if unknown:
        raise TypeError(f"not evidence fields: {sorted(unknown)}")
    values = dict.fromkeys(HASHED) | fields | {"seq": chain.chain_length + 1}
    sealed = digest(chain.line, chain.contact, chain.chain_head, values)
    row = values | {"conversation_id": chain.id, "prev_hash": chain.chain_head, "hash": sealed}
    chain.chain_head, chain.chain_length = sealed, values["seq"]
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
        if len(value) == 26 and value[10] == " ":  # SQLAlchemy's SQLite form: UTC, microseconds
            return f"{value[:10]}T{value[11:]}Z"
        parsed = datetime.fromisoformat(value)
        value = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return canonical(value)


# The tables as stored: columns without types, so rows come back as the driver
# reads them, with no conversion. A tampered value (an unknown enum, a malformed
# date) is then simply a value that fails its hash.
_conversations = table(
    "conversations", *(column(n) for n in ("id", "chain_head", "chain_length", "line", "contact"))
)
_attestations = table(
    "attestations",
    *(column(n) for n in ("id", "conversation_id", *HASHED, "prev_hash", "hash")),
)
_TIME = 2 + HASHED.index("created_at")  # within a row's payload: line, contact, *HASHED
_SIGNATURE = 2 + HASHED.index("signature_valid")


def _stored_payload(row: Sequence[Any]) -> list[Any]:
    """``[line, contact, *HASHED]`` as stored, in the form the hash covers."""
    payload = list(row)
    payload[_TIME] = _stored_time(payload[_TIME])
    if payload[_SIGNATURE] is not None:
        payload[_SIGNATURE] = bool(payload[_SIGNATURE])  # SQLite keeps 0/1
    return payload


# A log this large is verified by several processes, each walking its share of the
# conversations (chains are independent); below it, one process is quicker.
PARALLEL_FROM = 20_000


def _scan(low: int | None = None, high: int | None = None):
    """Every conversation (with id in [low, high)) with its entries, in chain order:
    conversation id, head and length; line, contact and the hashed fields; prev_hash, hash."""
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(c.id, c.chain_head, c.chain_length, c.line, c.contact)
        .add_columns(*(a[name] for name in HASHED), a.prev_hash, a.hash)
        .select_from(_conversations.outerjoin(_attestations, a.conversation_id == c.id))
        .order_by(c.id, a.seq)
    )
    if low is not None:
        stmt = stmt.where(c.id >= low)
    if high is not None:
        stmt = stmt.where(c.id < high)
    return stmt


def _walk(rows: Iterable[Sequence[Any]]) -> tuple[int, int, list[Broken]]:
    """Recompute the chains of ``rows`` (``_scan``'s layout): counts and breaks."""
    conversations = entries = 0
    broken: list[Broken] = []
    last: Sequence[Any] | None = None
    fault: str | None = None
    expected, prev = 1, GENESIS

    def close(row: Sequence[Any]) -> None:
        reason = fault
        if reason is None and expected - 1 != row[2]:
            reason = f"{row[2]} entries recorded, {expected - 1} found"
        if reason is None and prev != row[1]:
            reason = "the last entry is not the recorded chain head"
        if reason:
            broken.append(Broken(row[3], row[4], reason))

    for row in rows:
        if last is None or row[0] != last[0]:
            if last is not None:
                close(last)
            conversations += 1
            expected, prev, fault = 1, GENESIS, None
        last = row
        seq = row[5]
        if seq is None:  # a conversation without entries
            continue
        entries += 1
        if fault is not None:
            continue
        try:
            computed = _seal(prev, _stored_payload(row[3:-2]))
        except (TypeError, ValueError):
            computed = None
        if seq != expected:
            fault = f"entry {expected} is missing (found {seq})"
        elif row[-2] != prev:
            fault = f"entry {seq} does not follow entry {seq - 1}"
        elif computed != row[-1]:
            fault = f"entry {seq} was altered"
        prev = row[-1]
        expected += 1
    if last is not None:
        close(last)
    return conversations, entries, broken


def _streamed(conn: Connection, stmt, batch: int) -> Iterator[Sequence[Any]]:
    """The rows of ``stmt``, fetched ``batch`` at a time (a server-side cursor on Postgres)."""
    result = conn.execution_options(yield_per=batch).execute(stmt)
    with contextlib.closing(result):
        yield from result


def _walk_part(url: str, connect_args: dict, low: int | None, high: int | None, batch: int):
    """One process's share of ``verify``: its own connection, its own range of chains."""
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            return _walk(_streamed(conn, _scan(low, high), batch))
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
    stmt = select(_conversations.c.id, _conversations.c.chain_length).order_by(_conversations.c.id)
    for conv_id, length in _streamed(db.session.connection(), stmt, 5000):
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
        url = db.engine.url.render_as_string(hide_password=False)
        options = current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
        connect_args = dict(options.get("connect_args") or {})
        ranges = _ranges(processes)
        n = len(ranges)
        context = multiprocessing.get_context("spawn")  # no forked copy of this process's state
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            parts = list(
                pool.map(
                    _walk_part,
                    [url] * n,
                    [connect_args] * n,
                    [low for low, _ in ranges],
                    [high for _, high in ranges],
                    [batch] * n,
                )
            )
    else:
        parts = [_walk(_streamed(db.session.connection(), _scan(), batch))]
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
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(c.line, c.contact)
        .add_columns(*(a[name] for name in HASHED), a.prev_hash, a.hash)
        .select_from(_attestations.outerjoin(_conversations, c.id == a.conversation_id))
        .order_by(a.id)
    )
    if since is not None:
        stmt = stmt.where(a.created_at >= bindparam("since", since, type_=UTCDateTime()))
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in _streamed(db.session.connection(), stmt, batch):
        with contextlib.suppress(TypeError, ValueError):  # else as stored; verify names it
            row = [*_stored_payload(row[:-2]), row[-2], row[-1]]
        writer.writerow(["" if v is None else v for v in row])
        count += 1
    db.session.rollback()
    return count
