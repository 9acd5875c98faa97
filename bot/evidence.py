"""The attestation log (SPEC §10): append to a conversation's hash chain, verify, export."""

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import IO, Any

from sqlalchemy import Enum as SAEnum
from sqlalchemy import String, func, select, type_coerce

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


def digest(line: str, contact: str, prev_hash: str, values: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON."""
    payload = json.dumps(
        [line, contact, *(_canonical(values.get(name)) for name in HASHED)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def append(conv: Conversation, **fields: Any) -> Attestation:
    """Add an entry at the head of ``conv``'s chain (the conversation must be locked)."""
    fields.setdefault("created_at", utcnow())
    seq = conv.chain_length + 1
    unknown = set(fields) - set(HASHED)
    if unknown:
        raise TypeError(f"not evidence fields: {sorted(unknown)}")
    # Every field set (None where absent), so a turn's entries insert in one batch.
    values = {name: fields.get(name) for name in HASHED} | {"seq": seq}
    entry = Attestation(
        conversation_id=conv.id,
        prev_hash=conv.chain_head,
        hash=digest(conv.line, conv.contact, conv.chain_head, values),
        **values,
    )
    conv.chain_head = entry.hash
    conv.chain_length = seq
    db.session.add(entry)
    return entry


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


def _raw(name: str):
    """A hashed column read as stored, so a tampered value cannot stop the reader."""
    column = getattr(Attestation, name)
    if name == "created_at":
        return column if db.engine.dialect.name == "postgresql" else type_coerce(column, String)
    if isinstance(column.type, SAEnum):
        return type_coerce(column, String)
    return column


def _as_stored(name: str, value: Any) -> Any:
    if name == "created_at" and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _rows(batch: int) -> Iterator[Any]:
    """Every conversation with its entries, in chain order, streamed."""
    stmt = (
        select(
            Conversation.id,
            Conversation.line,
            Conversation.contact,
            Conversation.chain_head,
            Conversation.chain_length,
            Attestation.seq,
            *(_raw(name).label(name) for name in HASHED[1:]),
            Attestation.prev_hash,
            Attestation.hash,
        )
        .outerjoin(Attestation, Attestation.conversation_id == Conversation.id)
        .order_by(Conversation.id, Attestation.seq)
        .execution_options(yield_per=batch)
    )
    yield from db.session.execute(stmt)


def _orphans() -> int:
    """Entries whose conversation is gone (possible only with foreign keys off)."""
    return db.session.execute(
        select(func.count(Attestation.id)).where(
            ~Attestation.conversation_id.in_(select(Conversation.id))
        )
    ).scalar()


def verify(batch: int = 5000) -> Report:
    """Recompute every chain; name each conversation whose chain does not hold."""
    read_only()
    report = Report(broken=[])
    current = None
    expected_seq, prev, fault = 1, GENESIS, None

    def close(row) -> None:
        reason = fault
        if reason is None and expected_seq - 1 != row.chain_length:
            reason = f"{row.chain_length} entries recorded, {expected_seq - 1} found"
        if reason is None and prev != row.chain_head:
            reason = "the last entry is not the recorded chain head"
        if reason:
            report.broken.append(Broken(row.line, row.contact, reason))

    last = None
    for row in _rows(batch):
        if row.id != current:
            if last is not None:
                close(last)
            report.conversations += 1
            current, expected_seq, prev, fault = row.id, 1, GENESIS, None
        last = row
        if row.seq is None:
            continue
        report.entries += 1
        if fault is not None:
            continue
        try:
            values = {name: _as_stored(name, getattr(row, name)) for name in HASHED}
            computed = digest(row.line, row.contact, prev, values)
        except (TypeError, ValueError):
            computed = None
        if row.seq != expected_seq:
            fault = f"entry {expected_seq} is missing (found {row.seq})"
        elif row.prev_hash != prev:
            fault = f"entry {row.seq} does not follow entry {row.seq - 1}"
        elif computed != row.hash:
            fault = f"entry {row.seq} was altered"
        prev = row.hash
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
            *(_raw(name) for name in HASHED),
            Attestation.prev_hash,
            Attestation.hash,
        )
        .outerjoin(Conversation, Conversation.id == Attestation.conversation_id)
        .order_by(Attestation.id)
        .execution_options(yield_per=batch)
    )
    if since is not None:
        stmt = stmt.where(Attestation.created_at >= since)
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in db.session.execute(stmt):
        writer.writerow(["" if v is None else _canonical(v) for v in row])
        count += 1
    db.session.rollback()
    return count
