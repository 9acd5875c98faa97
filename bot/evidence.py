"""The attestation log (SPEC §10): append to a conversation's hash chain, verify, export."""

import contextlib
import csv
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import IO, Any

import orjson
import rfc8785
from flask import current_app
from sqlalchemy import Connection, bindparam, column, create_engine, func, select, table
from sqlalchemy.pool import NullPool

from bot import consent, merkle, notes
from bot.database import READ_ONLY, read_only
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
    row["salt"] = secrets.token_hex(16)  # the Merkle leaf's (see ``leaf``)
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
    leaves: int = 0  # the Merkle tree's size, recomputed
    checkpoints: int = 0  # signed checkpoints checked against the log
    notes: list[str] = field(default_factory=list)  # what verify could not check

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
    "conversations",
    *(column(n) for n in ("id", "chain_head", "chain_length", "state", "line", "contact")),
)
_attestations = table(
    "attestations",
    *(column(n) for n in ("id", "conversation_id", *HASHED, "prev_hash", "hash")),
    *(column(n) for n in ("salt", "leaf_index")),
)


def unsequenced(limit: int):
    """The entries still out of the tree, oldest first: id, line, contact, ``LEAF_COLUMNS``."""
    c, a = _conversations.c, _attestations.c
    return (
        select(a.id, c.line, c.contact, *(a[name] for name in LEAF_COLUMNS))
        .join_from(_attestations, _conversations, c.id == a.conversation_id)
        .where(a.leaf_index.is_(None))
        .order_by(a.id)
        .limit(limit)
    )


_TIME = 2 + HASHED.index("created_at")  # within a row's payload: line, contact, *HASHED
_SIGNATURE = 2 + HASHED.index("signature_valid")


# -- the Merkle leaf of an entry ------------------------------------------------------------

# An entry's leaf (SPEC §10): the entry as a JSON object of these fields, in RFC 8785
# canonical form, hashed as RFC 6962 hashes a leaf. The salt (32 random hex digits)
# keeps a proof, which shows the hashes of other leaves, from revealing their content
# to anyone who guesses it.
LEAF_FIELDS = ("line", "contact", *HASHED, "salt")
LEAF_COLUMNS = (*HASHED, "salt")  # as stored in ``attestations``, after line and contact
_SAFE_INT = 2**53  # RFC 8785 writes integers beyond this as IEEE doubles do


def leaf(values: Sequence[Any]) -> bytes:
    """RFC 8785 canonical JSON of ``LEAF_FIELDS`` → ``values`` (canonical values).

    For entries of strings, booleans, null and a sequence number below 2**53
    (every entry this app writes), RFC 8785's text is what ``orjson`` writes with
    its keys sorted, about four times quicker than the ``rfc8785`` library (verify makes
    millions); ``tests/test_merkle.py`` checks the two agree on random entries.
    Anything else goes to the ``rfc8785`` library.
    """
    record = dict(zip(LEAF_FIELDS, values, strict=True))
    seq = values[_SEQ]  # the one integer of an entry
    if _PLAIN.issuperset(map(type, values)) and (type(seq) is not int or abs(seq) < _SAFE_INT):
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(record)


_SEQ = LEAF_FIELDS.index("seq")
_PLAIN = frozenset((str, bool, int, type(None)))


@dataclass(frozen=True)
class Stored:
    id: int
    leaf_index: int | None
    leaf_values: Sequence[Any]  # line, contact, then ``LEAF_COLUMNS``, as stored


def entries_of(conversation_ids: Sequence[int]) -> list[Stored]:
    """The entries of these conversations, as stored, in the order they were written."""
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(a.id, a.leaf_index, c.line, c.contact, *(a[name] for name in LEAF_COLUMNS))
        .join_from(_attestations, _conversations, c.id == a.conversation_id)
        .where(a.conversation_id.in_(list(conversation_ids)))
        .order_by(a.id)
    )
    return [Stored(row[0], row[1], row[2:]) for row in db.session.execute(stmt)]


def stored_leaf(row: Sequence[Any]) -> bytes:
    """The leaf of a stored entry: ``row`` is line, contact, then ``LEAF_COLUMNS``."""
    return leaf([*_stored_payload(row[:-1]), row[-1]])


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
# An entry still out of the tree after this long means the sequencer is not running.
LATE = timedelta(minutes=10)

_H = len(HASHED)
_MESSAGE_FIELDS = ("direction", "sender", "recipient", "body", "media_json", "signature_valid")
_AT = {name: 6 + at for at, name in enumerate(HASHED)}  # a hashed field's place in a ``_scan`` row
_messages = table(
    "messages", *(column(n) for n in ("conversation_id", "ref", *_MESSAGE_FIELDS, "status"))
)


def _scan(low: int | None = None, high: int | None = None):
    """Every conversation (with id in [low, high)) with its entries, in chain order:
    conversation id, head, length and state; line, contact and the hashed fields;
    prev_hash, hash, salt, leaf index."""
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(c.id, c.chain_head, c.chain_length, c.state, c.line, c.contact)
        .add_columns(*(a[name] for name in HASHED), a.prev_hash, a.hash, a.salt, a.leaf_index)
        .select_from(_conversations.outerjoin(_attestations, a.conversation_id == c.id))
        .order_by(c.id, a.seq)
    )
    return _in_range(stmt, c.id, low, high)


def _in_range(stmt, key, low, high):
    if low is not None:
        stmt = stmt.where(key >= low)
    if high is not None:
        stmt = stmt.where(key < high)
    return stmt


def _texts(low: int | None = None, high: int | None = None):
    """The ``messages`` rows, by conversation: what the portal shows."""
    m = _messages.c
    stmt = select(m.conversation_id, m.ref, *(m[n] for n in _MESSAGE_FIELDS), m.status)
    return _in_range(stmt.order_by(m.conversation_id), m.conversation_id, low, high)


@dataclass
class _Walk:
    """One process's share of ``verify``: chains, leaves, and the portal's rows."""

    leaves: Any  # a writable buffer: each leaf hash at 32 × its leaf index
    size: int  # the tree's size: a leaf index beyond it is out of place
    now: datetime
    conversations: int = 0
    entries: int = 0
    placed: int = 0
    broken: list[Broken] = field(default_factory=list)

    def run(self, rows: Iterable[Sequence[Any]], texts: Iterator[Sequence[Any]]) -> None:
        """Walk the conversations, each with its ``messages`` rows (both by conversation)."""
        pending = next(texts, None)
        for conv, group in itertools.groupby(rows, key=lambda row: row[0]):
            self.conversations += 1
            shown = []
            while pending is not None and pending[0] <= conv:
                if pending[0] == conv:
                    shown.append(pending)
                else:
                    self.orphan(pending)
                pending = next(texts, None)
            self.conversation(list(group), shown)
        for text in itertools.chain([pending] if pending else [], texts):
            self.orphan(text)

    def orphan(self, text: Sequence[Any]) -> None:
        self.broken.append(_unnamed(f"text {text[1]} belongs to no conversation"))

    def conversation(self, rows: list[Sequence[Any]], shown: list[Sequence[Any]]) -> None:
        first = rows[0]
        line, contact = first[4], first[5]

        def broken(reason: str) -> None:
            self.broken.append(Broken(line, contact, reason))

        expected, prev, fault = 1, GENESIS, None
        texts: dict[str, list[Any]] = {}
        last_event, flowed = None, False  # what explains its consent state
        for row in rows if first[6] is not None else ():
            self.entries += 1
            payload = row[4 : 6 + _H]
            try:
                payload = _stored_payload(payload)
                computed = _seal(prev, payload)
            except (TypeError, ValueError):
                computed = None
            seq = row[_AT["seq"]]
            if fault is None:
                if seq != expected:
                    fault = f"entry {expected} is missing (found {seq})"
                elif row[-4] != prev:
                    fault = f"entry {seq} does not follow entry {seq - 1}"
                elif computed != row[-3]:
                    fault = f"entry {seq} was altered"
            prev, expected = row[-3], expected + 1
            self.leaf(payload, row, broken)
            kind, ref = row[_AT["kind"]], row[_AT["message_ref"]]
            if kind == "message":
                texts[ref] = [*(payload[_AT[n] - 4] for n in _MESSAGE_FIELDS), row[_AT["status"]]]
            elif kind == "status" and ref in texts:
                texts[ref][-1] = row[_AT["status"]]
            if row[_AT["event"]] is not None and row[_AT["state"]] is not None:
                last_event = row[_AT["state"]]
            elif kind == "message":
                flowed = flowed or _flowed(payload, contact)
        if fault is None and expected - 1 != first[2]:
            fault = f"{first[2]} entries recorded, {expected - 1} found"
        if fault is None and prev != first[1]:
            fault = "the last entry is not the recorded chain head"
        if fault:
            broken(fault)
        states = consent.explained_states(last_event, flowed)
        if first[3] not in states:
            left = " or ".join(sorted(states))
            broken(f"its consent state is {first[3]!r}, but its events leave it {left}")
        for text in shown:
            recorded = texts.pop(text[1], None)
            value = [*text[2:-2], None if text[-2] is None else bool(text[-2]), text[-1]]
            if recorded is None:
                broken(f"text {text[1]} is in the log the portal shows, not in the evidence")
            elif value != recorded:
                broken(f"text {text[1]} differs from its evidence")
        for ref in texts:
            broken(f"text {ref} is in the evidence, not in the log the portal shows")

    def leaf(self, payload: list[Any], row: Sequence[Any], broken) -> None:
        index, seq = row[-1], row[_AT["seq"]]
        if index is None:
            created = _parsed_time(payload[_TIME])
            if created is None or self.now - created > LATE:
                broken(f"entry {seq} has been left out of the Merkle tree since {payload[_TIME]}")
            return
        if not 0 <= index < self.size:
            broken(f"entry {seq} claims leaf {index}, outside the tree of {self.size}")
            return
        try:
            hashed = merkle.leaf_hash(leaf([*payload, row[-2]]))
        except (TypeError, ValueError, UnicodeError):
            hashed = bytes(32)
        self.placed += 1
        self.leaves[index * 32 : index * 32 + 32] = hashed


def _flowed(payload: Sequence[Any], contact: str) -> bool:
    """A text entry that went through: one from the contact relayed, or one to them."""
    if payload[_AT["direction"] - 4] == "inbound":
        return str(payload[_AT["note"] - 4] or "").startswith("relayed")
    return payload[_AT["recipient"] - 4] == contact


def _parsed_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


@contextlib.contextmanager
def _mapped(path: str, size: int):
    """The leaf hashes' file as a writable buffer shared by every process."""
    if not size:
        yield bytearray()
        return
    with open(path, "r+b") as out, mmap.mmap(out.fileno(), size * 32) as buffer:
        yield buffer


def _reader() -> Connection:
    """A second connection of the engine's, for a read that blocks no writer."""
    return db.engine.connect().execution_options(**{READ_ONLY: True})


def _streamed(conn: Connection, stmt, batch: int) -> Iterator[Sequence[Any]]:
    """The rows of ``stmt``, fetched ``batch`` at a time (a server-side cursor on Postgres)."""
    result = conn.execution_options(yield_per=batch).execute(stmt)
    with contextlib.closing(result):
        yield from result


def _walk_part(url: str, connect_args: dict, low, high, batch: int, leaves: str, size, now):
    """One process's share of ``verify``: its own connections, its own range of chains."""
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn, engine.connect() as other, _mapped(leaves, size) as out:
            walk = _Walk(out, size, now)
            walk.run(
                _streamed(conn, _scan(low, high), batch), _streamed(other, _texts(low, high), batch)
            )
            return walk.conversations, walk.entries, walk.placed, walk.broken
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


def verify(
    batch: int = 5000, processes: int | None = None, checkpoint_files: Sequence[str] = ()
) -> Report:
    """Check the whole log (SPEC §10); name each conversation where it does not hold.

    Every chain and every Merkle leaf recomputed from the stored entries; the tree
    rebuilt from them and held against its stored root and every checkpoint (those
    in the database, in ``EVIDENCE_WITNESS_DIR`` and ``checkpoint_files``); the
    portal's texts and consent states held against the entries. ``processes``
    (default: one per core once the log holds ``PARALLEL_FROM`` conversations)
    walk disjoint ranges of conversations at the same time.
    """
    from bot import ledger

    read_only()
    conn = db.session.connection()
    size, stored_root = ledger.head(conn)
    now = utcnow()
    if processes is None:
        many = db.session.execute(select(func.count(Conversation.id))).scalar() >= PARALLEL_FROM
        processes = min(_cores(), 4) if many and _can_spawn() else 1
    report = Report(broken=[])
    with tempfile.NamedTemporaryFile(prefix="consentline-leaves-") as leaves:
        leaves.truncate(size * 32)
        if processes > 1:
            url = db.engine.url.render_as_string(hide_password=False)
            options = current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
            connect_args = dict(options.get("connect_args") or {})
            ranges = _ranges(processes)
            n = len(ranges)
            context = multiprocessing.get_context("spawn")  # no forked copy of this process
            with ProcessPoolExecutor(n, mp_context=context) as pool:
                parts = list(
                    pool.map(
                        _walk_part,
                        *zip(
                            *(
                                (url, connect_args, low, high, batch, leaves.name, size, now)
                                for low, high in ranges
                            ),
                            strict=True,
                        ),
                    )
                )
        else:
            with _reader() as other, _mapped(leaves.name, size) as buffer:
                walk = _Walk(buffer, size, now)
                walk.run(_streamed(conn, _scan(), batch), _streamed(other, _texts(), batch))
            parts = [(walk.conversations, walk.entries, walk.placed, walk.broken)]
        placed = 0
        for conversations, entries, done, broken in parts:
            report.conversations += conversations
            report.entries += entries
            report.broken.extend(broken)
            placed += done
        signed = _checkpoints(checkpoint_files, report)
        roots = _rebuild(leaves, size, {c.size for c, _ in signed}, report)
        if placed != size:
            report.broken.append(_unnamed(f"{placed} entries claim a place in a tree of {size}"))
        if roots[size] != stored_root:
            report.broken.append(_unnamed("the stored tree is not the tree of the entries"))
            report.broken.extend(_altered_leaves(conn, leaves, size))
    report.leaves = size
    _hold_checkpoints(conn, signed, roots, size, report)
    orphans = _orphans()
    if orphans:
        report.entries += orphans
        report.broken.append(_unnamed(f"{orphans} entries belong to no conversation"))
    db.session.rollback()
    return report


def _unnamed(reason: str) -> Broken:
    return Broken("?", "?", reason)


def _rebuild(leaves: IO[bytes], size: int, sizes: set[int], report: Report) -> dict[int, bytes]:
    """The tree of the recomputed leaves: its root at ``size`` and at each of ``sizes``."""
    roots, wanted = {}, sorted(s for s in sizes | {size} if s <= size)
    tree = merkle.Frontier()
    if wanted and wanted[0] == 0:
        roots[0] = tree.root()
    leaves.seek(0)
    missing = 0
    while chunk := leaves.read(32 << _BLOCK):
        start = tree.size
        if _NO_LEAF in chunk:
            missing += sum(chunk[at : at + 32] == _NO_LEAF for at in range(0, len(chunk), 32))
        if len(chunk) == 32 << _BLOCK and not (wanted and wanted[0] < start + (1 << _BLOCK)):
            tree.append(merkle.complete_root(chunk), _BLOCK)  # a whole block at once
        else:
            for at in range(0, len(chunk), 32):
                tree.append(chunk[at : at + 32])
                if wanted and tree.size == wanted[0]:
                    roots[wanted.pop(0)] = tree.root()
        if wanted and tree.size == wanted[0]:
            roots[wanted.pop(0)] = tree.root()
        tree.added.clear()
    if missing:
        report.broken.append(_unnamed(f"{missing} leaves of the tree have no entry"))
    return roots


_BLOCK = 16  # leaves hashed a block of 2**16 at a time where no checkpoint falls inside
_NO_LEAF = bytes(32)


def _altered_leaves(conn: Connection, leaves: IO[bytes], size: int) -> list[Broken]:
    """The entries whose recomputed leaf is not the one the stored tree holds."""
    from bot.models import TreeNode

    stmt = (
        select(TreeNode.position, TreeNode.hash)
        .where(TreeNode.level == 0)
        .order_by(TreeNode.position)
    )
    found, expected = [], 0
    with _reader() as other:
        for position, stored in _streamed(other, stmt, 5000):
            leaves.seek(position * 32)
            if position != expected or bytes(stored) != leaves.read(32):
                found.append(position)
            expected = position + 1
            if len(found) >= 20:
                break
    return _name_leaves(conn, found, "its leaf is not the one the tree holds")


def _name_leaves(conn: Connection, positions: Sequence[int], reason: str) -> list[Broken]:
    if not positions:
        return []
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(c.line, c.contact, a.seq, a.leaf_index)
        .join_from(_attestations, _conversations, c.id == a.conversation_id)
        .where(a.leaf_index.in_(list(positions)))
    )
    named = {row.leaf_index: row for row in conn.execute(stmt)}
    out = []
    for position in positions:
        row = named.get(position)
        if row is None:
            out.append(_unnamed(f"leaf {position}: no entry holds it"))
        else:
            out.append(
                Broken(row.line, row.contact, f"entry {row.seq} (leaf {position}): {reason}")
            )
    return out


def _checkpoints(files: Sequence[str], report: Report) -> list[tuple[notes.Checkpoint, str]]:
    """Every signed checkpoint to hold the log against, with where it came from."""
    from bot import ledger
    from bot.models import CheckpointRecord

    key = ledger.verifier()
    found: list[tuple[str, str]] = [
        (note, f"checkpoint {cid} in the database")
        for cid, note in db.session.execute(select(CheckpointRecord.id, CheckpointRecord.note))
    ]
    for path in ledger.witness_files():
        found.append((path.read_text(errors="replace"), f"witness copy {path.name}"))
    for path in files:
        found.append((Path(path).read_text(errors="replace"), path))
    if key is None:
        report.notes.append(
            "evidence is unsigned (no EVIDENCE_SIGNING_KEY or EVIDENCE_PUBLIC_KEY): "
            "no checkpoint can be checked"
        )
        return []
    signed = []
    for note, source in found:
        try:
            checkpoint = notes.open_checkpoint(note, key)
        except notes.NoteError as exc:
            report.broken.append(_unnamed(f"{source}: {exc}"))
            continue
        if checkpoint.origin != key.name:
            report.broken.append(_unnamed(f"{source}: origin {checkpoint.origin}, not {key.name}"))
            continue
        signed.append((checkpoint, source))
    return signed


def _hold_checkpoints(conn, signed, roots: dict[int, bytes], size: int, report: Report) -> None:
    """Each checkpoint against the log, and against the others (RFC 9162 consistency)."""
    from bot import ledger

    signed = sorted(signed, key=lambda item: item[0].size)
    report.checkpoints = len(signed)
    held = 0  # the largest size at which the log still holds its checkpoint
    for checkpoint, source in signed:
        if checkpoint.size > size:
            report.broken.append(
                _unnamed(f"{source} holds {checkpoint.size} entries; the log now has {size}")
            )
        elif roots[checkpoint.size] != checkpoint.root:
            report.broken.append(
                _unnamed(
                    f"{source} (size {checkpoint.size}) does not hold: an entry among "
                    f"leaves {held}..{checkpoint.size - 1} was altered, removed or added"
                )
            )
            if _stored_root(conn, checkpoint.size) != checkpoint.root:
                # The stored tree was rebuilt too: the change is somewhere in the range.
                report.broken.extend(_changed_between(conn, held, checkpoint.size))
        else:
            held = checkpoint.size
    subtree = ledger.subtree_reader(conn)
    for (old, old_source), (new, new_source) in itertools.pairwise(signed):
        if old.size == 0 or (old.size, old.root) == (new.size, new.root):
            continue
        try:
            proof = (
                []
                if old.size == new.size
                else merkle.consistency_proof(old.size, new.size, subtree)
            )
        except LookupError:
            proof = []
        if not merkle.verify_consistency(old.size, new.size, old.root, new.root, proof):
            report.broken.append(_unnamed(f"{old_source} and {new_source} are not consistent"))


def _stored_root(conn: Connection, size: int) -> bytes | None:
    """The root at ``size`` of the tree as stored (None where nodes are missing)."""
    from bot import ledger

    try:
        return ledger.subtree_reader(conn)(0, size) if size else merkle.EMPTY_ROOT
    except LookupError:
        return None


def _changed_between(conn: Connection, low: int, high: int) -> list[Broken]:
    """The conversations with leaves in [low, high): where a change must be (at most 20)."""
    c, a = _conversations.c, _attestations.c
    stmt = (
        select(c.line, c.contact)
        .join_from(_attestations, _conversations, c.id == a.conversation_id)
        .where(a.leaf_index >= low, a.leaf_index < high)
        .distinct()
        .limit(20)
    )
    return [
        Broken(
            line,
            contact,
            f"has entries among leaves {low}..{high - 1}, which a checkpoint no longer holds",
        )
        for line, contact in conn.execute(stmt)
    ]


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
