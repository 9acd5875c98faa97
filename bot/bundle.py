"""One contact's evidence as a zip that anyone can check offline (SPEC §10).

The bundle holds each record as the exact bytes of its Merkle leaf (RFC 8785
canonical JSON), a C2SP tlog-proof for each against the latest witnessed
checkpoint, that checkpoint and its witnesses' copies, the public key,
SHA256SUMS, a printable timeline, a README for a lawyer, a custodian
certification template and ``verify.py`` (Python's standard library and
``cryptography`` only). Records newer than the checkpoint go in ``pending/``.
"""

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from flask import current_app
from sqlalchemy import select

from bot import evidence, ledger, merkle, notes, phones
from bot.extensions import db
from bot.models import CheckpointRecord, Conversation, WitnessCopy, utcnow

FILES = Path(__file__).parent / "bundle_files"


class BundleError(ValueError):
    """No bundle can be made (an unknown contact, say)."""


@dataclass
class Bundle:
    contact: str
    records: int
    pending: int
    checkpoint: CheckpointRecord | None
    witnessed: bool

    def __str__(self) -> str:
        where = (
            f"checkpoint {self.checkpoint.id} ({self.checkpoint.size} records"
            f"{', witnessed' if self.witnessed else ', NOT witnessed'})"
            if self.checkpoint
            else "no checkpoint"
        )
        return (
            f"{self.records} records of {self.contact} proven against {where}; "
            f"{self.pending} newer, not yet covered"
        )


def _checkpoint() -> tuple[CheckpointRecord | None, bool]:
    """The latest checkpoint a witness has taken, else the latest there is."""
    witnessed = db.session.scalars(
        select(CheckpointRecord)
        .join(WitnessCopy, WitnessCopy.checkpoint_id == CheckpointRecord.id)
        .where(WitnessCopy.delivered_at.is_not(None))
        .order_by(CheckpointRecord.id.desc())
        .limit(1)
    ).first()
    return (witnessed, True) if witnessed else (ledger.latest(), False)


def _conversations(contact: str, line: str | None) -> list[Conversation]:
    region = current_app.config["DEFAULT_REGION"]
    try:
        number = phones.to_e164(phones.bare(contact), region)
    except phones.InvalidNumber as exc:
        raise BundleError(str(exc)) from None
    addresses = [number, phones.on_channel(number, phones.Channel.WHATSAPP)]
    stmt = select(Conversation).where(Conversation.contact.in_(addresses))
    if line:
        try:
            stmt = stmt.where(Conversation.line == phones.to_e164(phones.bare(line), region))
        except phones.InvalidNumber as exc:
            raise BundleError(str(exc)) from None
    found = list(db.session.scalars(stmt.order_by(Conversation.id)))
    if not found:
        raise BundleError(f"no conversation with {contact}" + (f" on {line}" if line else ""))
    return found


def build(contact: str, line: str | None, out: IO[bytes]) -> Bundle:
    """Write the zip of ``contact``'s evidence (on ``line``, or every line) to ``out``."""
    ledger.sequence()
    convs = _conversations(contact, line)
    checkpoint, witnessed = _checkpoint()
    key = ledger.verifier()
    files: dict[str, bytes] = {}
    rows = evidence.entries_of([c.id for c in convs])
    conn = db.session.connection()
    subtree = ledger.subtree_reader(conn)
    timeline, records, pending, manifest = [], 0, 0, {}
    for row in rows:
        data = evidence.stored_leaf(row.leaf_values)
        name = f"{row.leaf_index:012d}" if row.leaf_index is not None else f"unplaced-{row.id}"
        covered = checkpoint is not None and row.leaf_index is not None
        covered = covered and row.leaf_index < checkpoint.size
        if covered:
            proof = merkle.inclusion_proof(row.leaf_index, checkpoint.size, subtree)
            files[f"records/{name}.json"] = data
            files[f"proofs/{name}.tlog-proof"] = notes.proof_file(
                row.leaf_index, proof, checkpoint.note
            ).encode()
            records += 1
        else:
            files[f"pending/{name}.json"] = data
            pending += 1
        record = json.loads(data)
        timeline.append((record, covered))
        where = f"records/{name}.json" if covered else f"pending/{name}.json"
        manifest[where] = {k: record[k] for k in ("line", "contact", "seq", "created_at")}
    if checkpoint is not None:
        files["checkpoint.txt"] = checkpoint.note.encode()
        for copy in checkpoint.copies:
            if copy.delivered_at is None:
                continue
            if copy.witness.startswith("mail:"):
                files[f"witnesses/mail-{copy.id}.eml"] = (copy.copy or "").encode()
            else:
                files[f"witnesses/{copy.copy}"] = _folder_copy(copy, checkpoint)
    if key is not None:
        files["public-key.txt"] = f"{key}\n".encode()
    made = utcnow()
    context = {
        "contact": phones.readable(convs[0].contact),
        "lines": ", ".join(phones.readable(c.line) for c in convs),
        "made": made,
        "checkpoint": checkpoint,
        "witnessed": witnessed,
        "records": records,
        "pending": pending,
        "origin": key.name if key else "(unsigned)",
    }
    # The app's Jinja environment, without its request-bound context (a CLI has none).
    page = current_app.jinja_env.get_template("bundle/timeline.html")
    files["timeline.html"] = page.render(entries=timeline, **context).encode()
    files["README.txt"] = _filled("README.txt", context)
    files["CERTIFICATION.txt"] = _filled("CERTIFICATION.txt", context)
    files["verify.py"] = (FILES / "verify.py").read_bytes()
    files["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    )
    files["SHA256SUMS"] = sums.encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in sorted(files.items()):
            bundle.writestr(zipfile.ZipInfo(name, made.timetuple()[:6]), data)
    db.session.rollback()
    return Bundle(context["contact"], records, pending, checkpoint, witnessed)


def _folder_copy(copy: WitnessCopy, checkpoint: CheckpointRecord) -> bytes:
    """The witness directory's own file where it can be read, else what was written there."""
    folder = copy.witness.partition(":")[2]
    path = os.path.join(folder, copy.copy or "")
    try:
        return Path(path).read_bytes()
    except OSError:
        return checkpoint.note.encode()


def _filled(name: str, context: dict[str, Any]) -> bytes:
    values = {
        k: (v.isoformat(timespec="seconds") if isinstance(v, datetime) else v)
        for k, v in context.items()
    }
    checkpoint = context["checkpoint"]
    values["checkpoint"] = (
        f"checkpoint {checkpoint.id}: {checkpoint.size} records, root {checkpoint.root}, "
        f"signed {checkpoint.created_at.isoformat(timespec='seconds')}"
        if checkpoint
        else "none yet (no signing key was configured)"
    )
    values["witnessed"] = "yes" if context["witnessed"] else "NO"
    return (FILES / name).read_text().format(**values).encode()


def write(contact: str, line: str | None, path: str) -> Bundle:
    buffer = io.BytesIO()
    made = build(contact, line, buffer)
    with open(path, "wb") as out:
        out.write(buffer.getvalue())
        out.flush()
        os.fsync(out.fileno())
    return made
