"""Checkpoints as C2SP signed notes, Ed25519 keys, and tlog-proof files.

The formats are C2SP's (c2sp.org/signed-note, c2sp.org/tlog-checkpoint,
c2sp.org/tlog-proof), the ones transparency logs such as Go's checksum
database and Sigstore's Rekor use, so any of their tools can read ours:

- a key: ``<name>+<key id, 8 hex>+<base64(0x01 || public key)>`` (verifier key),
  ``PRIVATE+KEY+<name>+<key id>+<base64(0x01 || seed)>`` (signer key), the key
  id being the first four bytes of ``SHA-256(name || "\\n" || 0x01 || public key)``;
- a checkpoint: ``<origin>\\n<size>\\n<base64 root>\\n``, then a blank line and one
  signature line per signer, ``— <name> <base64(key id || signature)>``.
"""

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = b"\x01"
DASH = "\u2014"  # the em dash that starts every signature line
_NAME = re.compile(r"[^\s+]+")


class NoteError(ValueError):
    """A key, note or proof that is not in its format, or does not verify."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise NoteError(f"not base64: {text[:40]!r}") from exc


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public)

    def __str__(self) -> str:
        return f"{self.name}+{self.id.hex()}+{b64(ED25519 + self.public)}"

    def verifies(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    name: str
    seed: bytes

    @property
    def verifier(self) -> Verifier:
        key = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return Verifier(self.name, key.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def __str__(self) -> str:
        return f"PRIVATE+KEY+{self.name}+{self.verifier.id.hex()}+{b64(ED25519 + self.seed)}"

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def _parts(text: str, count: int) -> list[str]:
    parts = text.strip().split("+", count - 1)  # base64 has '+' too
    if len(parts) != count or not _NAME.fullmatch(parts[-3]):
        raise NoteError("not a key in the signed-note format")
    return parts


def _key_bytes(name: str, hex_id: str, encoded: str) -> bytes:
    raw = unb64(encoded)
    if len(raw) != 33 or raw[:1] != ED25519:
        raise NoteError(f"key {name} is not an Ed25519 key")
    return raw[1:]


def parse_verifier(text: str) -> Verifier:
    name, hex_id, encoded = _parts(text, 3)
    verifier = Verifier(name, _key_bytes(name, hex_id, encoded))
    if verifier.id.hex() != hex_id.lower():
        raise NoteError(f"key {name}: its key id does not match the key")
    return verifier


def parse_signer(text: str) -> Signer:
    parts = _parts(text, 5)
    if parts[:2] != ["PRIVATE", "KEY"]:
        raise NoteError("not a private key in the signed-note format")
    signer = Signer(parts[2], _key_bytes(*parts[2:]))
    if signer.verifier.id.hex() != parts[3].lower():
        raise NoteError(f"key {parts[2]}: its key id does not match the key")
    return signer


def generate(name: str) -> Signer:
    if not _NAME.fullmatch(name):
        raise NoteError(f"a key name has no spaces or '+': {name!r}")
    key = Ed25519PrivateKey.generate()
    return Signer(name, key.private_bytes_raw())


# -- notes ---------------------------------------------------------------------------


def sign_note(text: str, signer: Signer) -> str:
    """``text`` (ending in a newline) signed: the note as the format writes it."""
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("a note's text ends in one newline and has no blank line")
    signature = signer.verifier.id + signer.sign(text.encode())
    return f"{text}\n{DASH} {signer.name} {b64(signature)}\n"


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[tuple[str, bytes], ...]  # (name, key id || signature)

    def signed_by(self, verifier: Verifier) -> bool:
        message = self.text.encode()
        for name, blob in self.signatures:
            if name == verifier.name and blob[:4] == verifier.id:
                return verifier.verifies(message, blob[4:])
        return False


def parse_note(note: str) -> Note:
    text, sep, lines = note.rpartition("\n\n")
    if not sep or not lines.endswith("\n"):
        raise NoteError("not a signed note (no blank line before its signatures)")
    signatures = []
    for line in lines[:-1].split("\n"):
        match = re.fullmatch(DASH + r" (\S+) (\S+)", line)
        if not match:
            raise NoteError(f"not a signature line: {line[:60]!r}")
        blob = unb64(match[2])
        if len(blob) < 5:
            raise NoteError("a signature too short")
        signatures.append((match[1], blob))
    return Note(text + "\n", tuple(signatures))


# -- checkpoints ---------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{b64(self.root)}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or not lines[0] or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise NoteError("not a checkpoint (origin, size, root hash)")
    root = unb64(lines[2])
    if len(root) != 32:
        raise NoteError("a checkpoint's root hash is not 32 bytes")
    return Checkpoint(lines[0], int(lines[1]), root)


def open_checkpoint(note_text: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint a note holds, if ``verifier`` signed it; NoteError otherwise."""
    note = parse_note(note_text)
    if not note.signed_by(verifier):
        raise NoteError(f"the checkpoint is not signed by {verifier.name} ({verifier.id.hex()})")
    return parse_checkpoint(note.text)


# -- tlog-proof ----------------------------------------------------------------------

PROOF_HEADER = "c2sp.org/tlog-proof@v1"


def proof_file(index: int, proof: list[bytes], checkpoint_note: str, extra: str = "") -> str:
    """A leaf's inclusion proof with the signed checkpoint it holds against."""
    head = PROOF_HEADER + "\n" + (f"extra {extra}\n" if extra else "")
    hashes = "".join(b64(h) + "\n" for h in proof)
    return f"{head}index {index}\n{hashes}\n{checkpoint_note}"
