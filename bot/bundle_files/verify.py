#!/usr/bin/env python3
"""Check this evidence bundle offline: python3 verify.py [folder or zip]

Needs Python 3.9 or newer and the `cryptography` package, nothing else. It checks:

1. every file against SHA256SUMS (and that no file is missing or added);
2. the checkpoint's Ed25519 signature under public-key.txt (C2SP signed-note);
3. each record in records/: that it is canonical JSON (RFC 8785) and that its
   proof in proofs/ (C2SP tlog-proof) places it in the checkpoint's Merkle tree
   (RFC 9162 hashing and inclusion proof);
4. each witness copy in witnesses/ holds that same signed checkpoint.

Records in pending/ were written after the checkpoint and are not yet covered by it.
Exit status 0 when everything holds; otherwise each problem is printed, naming the
file and the record, and the exit status is 1.
"""

import base64
import email
import email.policy
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DASH = "\u2014"
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def read_bundle(path):
    path = Path(path)
    if path.is_file():
        with zipfile.ZipFile(path) as bundle:
            return {name: bundle.read(name) for name in bundle.namelist() if not name.endswith("/")}
    return {
        str(p.relative_to(path)).replace("\\", "/"): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def check_sums(files):
    listed = {}
    for number, line in enumerate(
        files.get("SHA256SUMS", b"").decode("utf-8", "replace").splitlines(), 1
    ):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            problem("SHA256SUMS", f"line {number} is not '<sha256>  <file>'")
            continue
        listed[name] = digest
    if "SHA256SUMS" not in files:
        problem("SHA256SUMS", "missing")
    for name, data in files.items():
        if name == "SHA256SUMS":
            continue
        if name not in listed:
            problem(name, "not listed in SHA256SUMS (added or renamed)")
        elif hashlib.sha256(data).hexdigest() != listed[name]:
            problem(name, "does not match its SHA-256 in SHA256SUMS (the file was changed)")
    for name in listed:
        if name not in files:
            problem(name, "listed in SHA256SUMS but missing")


def unb64(text):
    return base64.b64decode(text, validate=True)


def parse_key(text):
    name, key_id, encoded = text.strip().split("+", 2)  # base64 has "+" too
    raw = unb64(encoded)
    if len(raw) != 33 or raw[0] != 1:
        raise ValueError("not an Ed25519 key")
    digest = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if digest.hex() != key_id:
        raise ValueError("the key id does not match the key")
    return name, digest, raw[1:]


def open_checkpoint(note, key):
    """The checkpoint's (origin, size, root) if the note is signed by ``key``."""
    name, key_id, public = key
    text, sep, signatures = note.rpartition("\n\n")
    if not sep:
        raise ValueError("not a signed note")
    body = text + "\n"
    for line in signatures.rstrip("\n").split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH or parts[1] != name:
            continue
        blob = unb64(parts[2])
        if blob[:4] != key_id:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], body.encode())
        except InvalidSignature:
            continue
        origin, size, root = body.split("\n")[:3]
        return origin, int(size), unb64(root)
    raise ValueError(f"not signed by the key {name}")


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def included(leaf, index, size, proof, root):
    """RFC 9162, section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def canonical(data):
    """RFC 8785 for what a record holds (strings, integers, booleans, null)."""
    value = json.loads(data)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def holds(data, is_mail, note):
    """Whether a witness's copy (a file, or a mail as sent) holds the signed note."""
    if not is_mail:
        return data.decode("utf-8", "replace") == note
    message = email.message_from_bytes(data, policy=email.policy.default)
    texts = (p for p in message.walk() if p.get_content_maintype() == "text")
    return any(note in part.get_content().replace("\r\n", "\n") for part in texts)


def describe(data, listed):
    """Which record: from the record itself, else from manifest.json."""
    for source in (lambda: json.loads(data), lambda: listed):
        try:
            record = source()
            return f"record {record['seq']} of line {record['line']}, contact {record['contact']}"
        except (ValueError, KeyError, TypeError):
            continue
    return "a record that cannot be read"


def main(where):
    files = read_bundle(where)
    check_sums(files)
    try:
        key = parse_key(files["public-key.txt"].decode())
        note = files["checkpoint.txt"].decode()
        origin, size, root = open_checkpoint(note, key)
    except (KeyError, ValueError, UnicodeError) as exc:
        problem("checkpoint.txt", f"cannot be checked: {exc}")
        return report()
    print(f"checkpoint: {origin}, {size} records, signed by {key[0]}")
    try:
        manifest = json.loads(files.get("manifest.json", b"{}"))
    except ValueError:
        manifest = {}
    records = sorted(n for n in files if n.startswith("records/") and n.endswith(".json"))
    for name in records:
        data = files[name]
        who = describe(data, manifest.get(name) if isinstance(manifest, dict) else None)
        try:
            if canonical(data) != data:
                problem(name, f"{who}: not in canonical form")
            proof_name = "proofs/" + name[len("records/") : -len(".json")] + ".tlog-proof"
            proof = files[proof_name].decode()
            head, _, embedded = proof.partition("\n\n")
            lines = head.split("\n")
            if lines[0] != "c2sp.org/tlog-proof@v1":
                raise ValueError("not a tlog-proof")
            lines = [line for line in lines[1:] if not line.startswith("extra ")]
            index = int(lines[0].removeprefix("index "))
            hashes = [unb64(h) for h in lines[1:]]
            if embedded != note:
                problem(proof_name, f"{who}: its checkpoint is not checkpoint.txt")
            leaf = hashlib.sha256(b"\x00" + data).digest()
            if not included(leaf, index, size, hashes, root):
                problem(name, f"{who}: not in the checkpoint's tree at leaf {index}")
        except (KeyError, ValueError, UnicodeError, IndexError) as exc:
            problem(name, f"{who}: its proof cannot be read ({exc})")
    for name in sorted(n for n in files if n.startswith("witnesses/")):
        if not holds(files[name], name.endswith(".eml"), note):
            problem(name, "does not hold checkpoint.txt")
    pending = [n for n in files if n.startswith("pending/")]
    print(f"{len(records)} records checked; {len(pending)} newer, not yet covered")
    return report()


def report():
    for line in problems:
        print("FAIL " + line)
    if problems:
        print(f"{len(problems)} problem(s): this bundle does not verify")
        return 1
    print("OK: every file, signature and proof holds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
