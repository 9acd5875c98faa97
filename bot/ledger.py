"""The Merkle log over every evidence entry (SPEC §10): sequencer, checkpoints, witnesses.

A webhook writes its entries with its conversation's chain and never waits on
another conversation. The sequencer then gives committed entries their leaf
index, in a short transaction of its own, holding the tree's one row locked
(Postgres: ``FOR UPDATE SKIP LOCKED``, so a second sequencer simply skips;
SQLite: the writer's turn). It runs in a thread of the worker half a second after
a webhook has answered (one run for every webhook of that moment), and before
every checkpoint. A checkpoint signs the
tree's size and root (bot/notes.py) after checking that the tree still holds
the last one signed, and goes to every witness; a witness that fails is tried
again later and shown on the dashboard.
"""

import contextlib
import email.message
import email.utils
import logging
import os
import re
import smtplib
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flask import current_app
from sqlalchemy import Connection, bindparam, func, insert, select, update

from bot import merkle, notes, writer_lock
from bot.database import read_only
from bot.extensions import db
from bot.models import (
    Attestation,
    CheckpointRecord,
    TreeHead,
    TreeNode,
    VerifyRun,
    WitnessCopy,
    utcnow,
)

log = logging.getLogger(__name__)

BATCH = 2000  # entries per sequencer transaction
CHECKPOINT_EVERY = timedelta(hours=1)
RETRY_EVERY = timedelta(minutes=5)  # a witness that failed is tried again after this

_head, _nodes, _entries = TreeHead.__table__, TreeNode.__table__, Attestation.__table__


# -- keys and the origin ---------------------------------------------------------------


def origin_name(company: str, host: str | None) -> str:
    """``consentline/<company or host>/evidence``, with no spaces or '+' (a key name)."""
    label = re.sub(r"[^a-z0-9.-]+", "-", (company or host or "unnamed").lower()).strip("-")
    return f"consentline/{label or 'unnamed'}/evidence"


def signer() -> notes.Signer | None:
    raw = current_app.config.get("EVIDENCE_SIGNING_KEY")
    return notes.parse_signer(raw) if raw else None


def verifier() -> notes.Verifier | None:
    raw = current_app.config.get("EVIDENCE_PUBLIC_KEY")
    if raw:
        return notes.parse_verifier(raw)
    key = signer()
    return key.verifier if key else None


# -- the tree ---------------------------------------------------------------------------


def node_reader(conn: Connection):
    """``node(level, position)`` from the stored tree."""
    stmt = select(_nodes.c.hash).where(
        _nodes.c.level == bindparam("level"), _nodes.c.position == bindparam("position")
    )

    def node(level: int, position: int) -> bytes:
        found = conn.execute(stmt, {"level": level, "position": position}).scalar()
        if found is None:
            raise LookupError(f"the tree has no node {level}/{position}")
        return bytes(found)

    return node


def subtree_reader(conn: Connection) -> merkle.Subtree:
    node = node_reader(conn)
    return lambda lo, hi: merkle.range_hash(lo, hi, node)


def frontier(conn: Connection, size: int) -> merkle.Frontier:
    node = node_reader(conn)
    edge = [(level, node(level, position)) for level, position in merkle.edge_of(size)]
    return merkle.Frontier(size=size, edge=edge)


def head(conn: Connection, lock: bool = False) -> tuple[int, bytes]:
    """The tree's size and root (``lock``: held until the transaction ends)."""
    stmt = select(_head.c.size, _head.c.root)
    size, root = conn.execute(stmt.with_for_update() if lock else stmt).one()
    return size, bytes.fromhex(root)


def sequence_once(conn: Connection, limit: int = BATCH) -> int:
    """Give up to ``limit`` committed entries their leaf index, in order; how many."""
    from bot.evidence import stored_leaf, unsequenced

    locked = select(_head.c.size).with_for_update(skip_locked=True)
    size = conn.execute(locked).scalar()
    if size is None:  # another process is sequencing (Postgres)
        return 0
    rows = conn.execute(unsequenced(limit)).all()
    if not rows:
        return 0
    tree = frontier(conn, size)
    placed = []
    for row in rows:
        placed.append({"entry_id": row[0], "leaf_index": tree.size})
        tree.append(merkle.leaf_hash(stored_leaf(row[1:])))
    conn.execute(
        update(_entries).where(_entries.c.id == bindparam("entry_id")),
        placed,
    )
    conn.execute(
        insert(_nodes), [{"level": lv, "position": p, "hash": h} for lv, p, h in tree.added]
    )
    conn.execute(update(_head).values(size=tree.size, root=tree.root().hex(), updated_at=utcnow()))
    return len(rows)


@contextlib.contextmanager
def transaction():
    """A short transaction of its own, whatever the session is doing (SQLite: the
    writer's turn, as a webhook takes it)."""
    busy = current_app.config["DATABASE_BUSY_TIMEOUT"]
    with db.engine.connect() as conn, writer_lock.held(db.engine, busy), conn.begin():
        yield conn


def sequence(limit: int | None = None) -> int:
    """Sequence every committed entry (or ``limit`` entries' worth); how many."""
    total = 0
    while limit is None or total < limit:
        with transaction() as conn:
            done = sequence_once(conn)
        total += done
        if done < BATCH:
            break
    return total


# -- checkpoints ---------------------------------------------------------------------------


class Refused(RuntimeError):
    """The tree no longer holds a checkpoint already signed: nothing new is signed."""


def latest() -> CheckpointRecord | None:
    return db.session.scalars(
        select(CheckpointRecord).order_by(CheckpointRecord.id.desc()).limit(1)
    ).first()


def checkpoint(key: notes.Signer, force: bool = False) -> tuple[CheckpointRecord, bool]:
    """Sign the tree as it is now (after sequencing what is committed) and hand it to the
    witnesses (``force``: retry a failed witness now); the checkpoint and whether it is
    new. The last checkpoint again when nothing was added."""
    db.session.rollback()  # no transaction of the session's may hold SQLite's write lock
    sequence()
    with transaction() as conn:
        size, root = head(conn, lock=True)
        last = conn.execute(
            select(CheckpointRecord.__table__).order_by(CheckpointRecord.id.desc()).limit(1)
        ).first()
        earlier = [(last.size, bytes.fromhex(last.root), "the last checkpoint")] if last else []
        earlier += _witnessed_sizes()
        subtree = subtree_reader(conn)
        for old_size, old_root, where in earlier:
            if old_size > size or (old_size and subtree(0, old_size) != old_root):
                raise Refused(
                    f"the log no longer holds {where} (size {old_size}): run "
                    "`flask --app app audit verify`; nothing was signed"
                )
        if last is not None and last.size == size:
            new = False
            record_id = last.id
        else:
            body = notes.Checkpoint(key.name, size, root).body
            record_id = conn.execute(
                insert(CheckpointRecord.__table__).values(
                    size=size, root=root.hex(), note=notes.sign_note(body, key), created_at=utcnow()
                )
            ).inserted_primary_key[0]
            for witness in witnesses():
                conn.execute(
                    insert(WitnessCopy.__table__).values(
                        checkpoint_id=record_id, witness=witness, attempts=0
                    )
                )
            new = True
    deliver(force)
    return db.session.get(CheckpointRecord, record_id), new


# -- witnesses -----------------------------------------------------------------------------


def witnesses() -> list[str]:
    config = current_app.config
    found = []
    if config.get("EVIDENCE_WITNESS_DIR"):
        found.append("dir:" + config["EVIDENCE_WITNESS_DIR"])
    for address in (config.get("EVIDENCE_WITNESS_EMAIL") or "").split(","):
        if address.strip():
            found.append("mail:" + address.strip())
    return found


CHECKPOINT_FILE = re.compile(r"checkpoint-(\d+)-(\d+)\.txt")


def witness_files() -> list[Path]:
    """The checkpoints in the witness directory, oldest first."""
    folder = current_app.config.get("EVIDENCE_WITNESS_DIR")
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(Path(folder, n) for n in os.listdir(folder) if CHECKPOINT_FILE.fullmatch(n))


def _witnessed_sizes() -> list[tuple[int, bytes, str]]:
    """The newest checkpoint in the witness directory, which the database cannot rewrite."""
    files, key = witness_files(), verifier()
    if not files or key is None:
        return []
    found = notes.open_checkpoint(files[-1].read_text(), key)
    return [(found.size, found.root, f"the witnessed checkpoint {files[-1]}")]


def _to_folder(folder: str, record: CheckpointRecord) -> str:
    """Write the checkpoint as a new file (never over another) and add it to the log."""
    os.makedirs(folder, exist_ok=True)
    name = f"checkpoint-{record.id:08d}-{record.size}.txt"
    path = os.path.join(folder, name)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "w") as out:
            out.write(record.note)
            out.flush()
            os.fsync(out.fileno())
    if Path(path).read_text() != record.note:
        raise OSError(f"{path} exists and holds another checkpoint")
    with open(os.path.join(folder, "witness.log"), "a") as out:
        created = record.created_at.isoformat(timespec="seconds")
        out.write(f"{created} size {record.size} root {record.root} {name}\n")
        out.flush()
        os.fsync(out.fileno())
    return name


def _mail(address: str, record: CheckpointRecord) -> str:
    """Mail the checkpoint through SMTP_URL; the message as sent."""
    url = urlsplit(current_app.config.get("SMTP_URL") or "")
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise OSError("SMTP_URL is not set (smtp://user:pass@host:port or smtps://…)")
    message = email.message.EmailMessage()
    message["From"] = f"ConsentLine evidence <evidence@{url.hostname}>"
    message["To"] = address
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=socket.getfqdn() or "consentline")
    message["Subject"] = f"Evidence checkpoint {record.id}: {record.size} records"
    message.set_content(
        "A signed checkpoint of ConsentLine's evidence log. Keep this mail: it lets a\n"
        "court check the log was not rewritten later (see docs/evidence.md).\n\n" + record.note
    )
    message.add_attachment(
        record.note.encode(),
        maintype="text",
        subtype="plain",
        filename=f"checkpoint-{record.id:08d}-{record.size}.txt",
    )
    client = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    with client(url.hostname, url.port or (465 if url.scheme == "smtps" else 25), timeout=20) as s:
        if url.scheme == "smtp" and s.has_extn("starttls"):
            s.starttls()
        if url.username:
            s.login(unquote(url.username), unquote(url.password or ""))
        s.send_message(message)
    return message.as_string()


_UNDELIVERED = (
    select(WitnessCopy).where(WitnessCopy.delivered_at.is_(None)).order_by(WitnessCopy.id)
)


def undelivered() -> list[WitnessCopy]:
    """The witness copies not delivered yet (failing, or waiting for their next try)."""
    return list(db.session.scalars(_UNDELIVERED))


def deliver(force: bool = False) -> list[WitnessCopy]:
    """Hand every checkpoint a witness has not received yet to it; the copies still failing.

    A copy that failed is tried again once ``RETRY_EVERY`` has passed (at once with
    ``force``); each try is counted and its error kept.
    """
    now = utcnow()
    db.session.rollback()
    pending = undelivered()
    failing = []
    for copy in pending:
        if not force and copy.last_attempt_at and now - copy.last_attempt_at < RETRY_EVERY:
            failing.append(copy)
            continue
        copy.attempts += 1
        copy.last_attempt_at = now
        kind, _, target = copy.witness.partition(":")
        try:
            if kind == "dir":
                copy.copy = _to_folder(target, copy.checkpoint)
            else:
                copy.copy = _mail(target, copy.checkpoint)
            copy.delivered_at, copy.last_error = utcnow(), None
        except (OSError, smtplib.SMTPException) as exc:
            copy.last_error = f"{type(exc).__name__}: {exc}"
            failing.append(copy)
            log.error(
                "witness %s did not take checkpoint %s: %s", copy.witness, copy.checkpoint_id, exc
            )
    db.session.commit()
    return failing


# -- upkeep after a webhook has answered ------------------------------------------------------

DELAY = 0.5  # seconds a worker gathers answered webhooks before it sequences their entries


@dataclass
class _Upkeep:
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheduled: bool = False
    checked: float = float("-inf")


_upkeep = _Upkeep()


def after_answer(app) -> None:
    """Called once a webhook's answer has gone: within ``DELAY`` a thread of this worker
    sequences every committed entry (one run for all the webhooks of that moment), and
    once a minute sees whether an hourly checkpoint or a witness's retry is due."""
    with _upkeep.lock:
        if _upkeep.scheduled:
            return
        _upkeep.scheduled = True
    timer = threading.Timer(DELAY, _run_upkeep, args=(app,))
    timer.daemon = True  # a worker that stops leaves its entries to the next run anywhere
    timer.start()


def _run_upkeep(app) -> None:
    with _upkeep.lock:
        _upkeep.scheduled = False
    with app.app_context():
        try:
            sequence()
            now = time.monotonic()
            if now - _upkeep.checked >= 60:
                _upkeep.checked = now
                key = signer()
                read_only()
                last = latest()
                if key and (last is None or utcnow() - last.created_at >= CHECKPOINT_EVERY):
                    checkpoint(key)
                else:
                    deliver()
        except Exception:  # the next webhook, or the CLI, tries again
            log.exception("evidence upkeep failed; it runs again after the next webhook")
            db.session.rollback()


def record_verify(report) -> None:
    """Keep the outcome of a verify run (the dashboard shows when one last passed)."""
    db.session.add(
        VerifyRun(ok=report.ok, entries=report.entries, problems=len(report.broken or ()))
    )
    db.session.commit()


def status() -> dict:
    """What the dashboard shows of the log's protection."""
    now = utcnow()
    witnessed = db.session.execute(select(func.max(WitnessCopy.delivered_at))).scalar()
    passed = db.session.execute(
        select(VerifyRun.finished_at).where(VerifyRun.ok).order_by(VerifyRun.id.desc()).limit(1)
    ).scalar()
    return {
        "verified": passed,
        "verify_stale": passed is None or now - passed > timedelta(days=1),
        "signing": signer() is not None,
        "size": db.session.execute(select(TreeHead.size)).scalar() or 0,
        "last": latest(),
        "last_witnessed": witnessed,
        "stale": witnessed is None or now - witnessed > timedelta(days=1),
        "failing": undelivered(),
    }
