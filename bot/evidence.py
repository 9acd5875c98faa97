"""The attestation log (SPEC §10): append to a conversation's hash chain, verify, export."""

import contextlib
import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import IO, Any

from sqlalchemy import func, select

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


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, Enum):
        return value.value
    return value


# One encoder for every entry (json.dumps would build one per call).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _seal(prev_hash: str, line: str, contact: str, canonical: list[Any]) -> str:
    payload = _ENCODE([line, contact, *canonical])
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def digest(line: str, contact: str, prev_hash: str, values: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON."""
    return _seal(prev_hash, line, contact, [_canonical(values.get(name)) for name in HASHED])


_HASHED_NAMES = frozenset(HASHED)


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
    sealed = digest(chain.line, chain.contact, chain.chain_head, values)
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


# Row layout of _scan: conversation (5 columns), the hashed fields, prev_hash, hash.
_SEQ = 5
_FIELDS = slice(_SEQ, _SEQ + len(HASHED))
_SIGNATURE = HASHED.index("signature_valid")


def _scan(batch: int) -> Iterator[tuple]:
    """Every conversation with its entries, in chain order, as plain tuples.

    Read through the driver's own cursor (server-side on Postgres), as stored:
    no ORM or type processing on millions of rows, and a tampered value
    (an unknown enum, a malformed date) is simply a value that fails its hash.
    """
    stmt = (
        select(
            Conversation.id,
            Conversation.line,
            Conversation.contact,
            Conversation.chain_head,
            Conversation.chain_length,
            *(getattr(Attestation, name) for name in HASHED),
            Attestation.prev_hash,
            Attestation.hash,
        )
        .outerjoin(Attestation, Attestation.conversation_id == Conversation.id)
        .order_by(Conversation.id, Attestation.seq)
    )
    yield from _driver_rows(stmt, batch)


def _driver_rows(stmt, batch: int) -> Iterator[tuple]:
    """Run a SELECT on the session's connection through the driver's cursor, streamed."""
    sql = str(stmt.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
    driver = db.session.connection().connection.driver_connection
    if db.engine.dialect.name == "postgresql":
        cursor = driver.cursor(name="consentline_stream")
        cursor.itersize = batch
    else:
        cursor = driver.cursor()
        cursor.arraysize = batch
    try:
        cursor.execute(sql)
        yield from cursor
    finally:
        cursor.close()


def _canonical_row(row: tuple) -> list[Any]:
    values = list(row[_FIELDS])
    values[1] = _stored_time(values[1])
    if values[_SIGNATURE] is not None:
        values[_SIGNATURE] = bool(values[_SIGNATURE])  # SQLite keeps 0/1
    return values


def _orphans() -> int:
    """Entries whose conversation is gone (possible only with foreign keys off)."""
    # NOT EXISTS plans as an anti-join; NOT IN (subquery) rescans per row on Postgres.
    owner = select(Conversation.id).where(Conversation.id == Attestation.conversation_id)
    return db.session.execute(select(func.count(Attestation.id)).where(~owner.exists())).scalar()


def verify(batch: int = 5000) -> Report:
    """Recompute every chain; name each conversation whose chain does not hold."""
    read_only()
    report = Report(broken=[])
    current = None
    expected_seq, prev, fault = 1, GENESIS, None

    def close(row) -> None:
        _id, line, contact, head, length = row[:_SEQ]
        reason = fault
        if reason is None and expected_seq - 1 != length:
            reason = f"{length} entries recorded, {expected_seq - 1} found"
        if reason is None and prev != head:
            reason = "the last entry is not the recorded chain head"
        if reason:
            report.broken.append(Broken(line, contact, reason))

    last = None
    for row in _scan(batch):
        if row[0] != current:
            if last is not None:
                close(last)
            report.conversations += 1
            current, expected_seq, prev, fault = row[0], 1, GENESIS, None
        last = row
        seq = row[_SEQ]
        if seq is None:
            continue
        report.entries += 1
        if fault is not None:
            continue
        try:
            computed = _seal(prev, row[1], row[2], _canonical_row(row))
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
