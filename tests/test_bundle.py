"""SPEC §10: one contact's evidence as a zip that anyone checks offline with the
bundle's own verify.py, in a virtualenv holding nothing but `cryptography` (and
what pip installs with it)."""

import importlib.metadata
import subprocess
import sys
import zipfile

import pytest

from bot import notes
from support import CELL, CONTACT, OTHER

KEY = notes.generate("consentline/acme-plumbing/evidence")


@pytest.fixture
def env_overrides(tmp_path):
    return {"EVIDENCE_SIGNING_KEY": str(KEY), "EVIDENCE_WITNESS_DIR": str(tmp_path / "witness")}


@pytest.fixture(scope="module")
def python_with_cryptography_only(tmp_path_factory):
    """A fresh virtualenv (no pip, no site packages) that sees only the distributions
    `pip install cryptography` brings: cryptography, cffi, pycparser."""
    root = tmp_path_factory.mktemp("offline")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    deps = root / "deps"
    deps.mkdir()
    for name in ("cryptography", "cffi", "pycparser"):
        dist = importlib.metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or ()}:
            source = dist.locate_file(top)
            if source.exists() and not (deps / top).exists():
                (deps / top).symlink_to(source)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (root / "venv" / site.split("/venv/", 1)[1] / "deps.pth").write_text(str(deps) + "\n")
    return python


def check(python, folder):
    return subprocess.run(
        [python, "verify.py", "."], cwd=folder, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def bundle(app, twilio, employee, runner, tmp_path):
    twilio.sms(CONTACT, "Hi")
    twilio.sms(CONTACT, "YES")
    twilio.sms(CELL, "See you Tuesday")
    twilio.sms(OTHER, "Hello")
    result = runner.invoke(args=["audit", "checkpoint"])
    assert result.exit_code == 0, result.output
    twilio.sms(CONTACT, "Running late")  # after the checkpoint: pending, not proven
    out = tmp_path / "evidence.zip"
    result = runner.invoke(args=["audit", "bundle", CONTACT, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "newer, not yet covered" in result.output
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(folder)
    return folder


def test_the_bundle_holds_what_section_10_lists(bundle):
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    for required in (
        "checkpoint.txt",
        "public-key.txt",
        "SHA256SUMS",
        "timeline.html",
        "README.txt",
        "CERTIFICATION.txt",
        "verify.py",
    ):
        assert required in names
    records = [n for n in names if n.startswith("records/")]
    proofs = [n for n in names if n.startswith("proofs/")]
    pending = [n for n in names if n.startswith("pending/")]
    assert records and len(records) == len(proofs) and pending
    assert any(n.startswith("witnesses/") for n in names)
    assert (bundle / proofs[0]).read_text().startswith("c2sp.org/tlog-proof@v1\nindex ")
    assert OTHER not in (bundle / "timeline.html").read_text()  # one contact's evidence only
    assert "Running late" in (bundle / "timeline.html").read_text()
    assert "902(13)" in (bundle / "CERTIFICATION.txt").read_text()


def test_the_bundle_verifies_offline(bundle, python_with_cryptography_only):
    result = check(python_with_cryptography_only, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every file, signature and proof holds" in result.stdout


def test_one_flipped_byte_in_any_file_fails_naming_it(bundle, python_with_cryptography_only):
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    for path in files:
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            result = check(python_with_cryptography_only, bundle)
        finally:
            path.write_bytes(original)
        name = path.relative_to(bundle).as_posix()
        assert result.returncode == 1, name
        if name == "verify.py":
            continue  # a changed checker may say anything; SHA256SUMS names it to anyone
        assert f"FAIL {name}" in result.stdout or name in result.stdout, (name, result.stdout)
        if name.startswith("records/"):
            assert f"of line +14155550100, contact {CONTACT}" in result.stdout, result.stdout


def test_a_record_changed_with_its_sum_still_fails_its_proof(bundle, python_with_cryptography_only):
    """A forger who also rewrites SHA256SUMS is caught by the Merkle proof."""
    import hashlib

    record = sorted((bundle / "records").iterdir())[0]
    record.write_bytes(record.read_bytes().replace(b'"seq":', b'"seq": '[:-1] + b"", 1) + b" ")
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    name = f"records/{record.name}"
    fixed = [
        f"{hashlib.sha256(record.read_bytes()).hexdigest()}  {name}"
        if line.endswith(name)
        else line
        for line in sums
    ]
    (bundle / "SHA256SUMS").write_text("\n".join(fixed) + "\n")
    result = check(python_with_cryptography_only, bundle)
    assert result.returncode == 1
    assert f"FAIL {name}" in result.stdout and "not in the checkpoint's tree" in result.stdout
