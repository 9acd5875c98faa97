"""The formats of the evidence log against their standards' published vectors:
RFC 6962 / RFC 9162 hashing and proofs, C2SP signed notes, RFC 8785 leaves."""

import base64
import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import evidence, merkle, notes

# The test vectors of RFC 6962's reference implementation (Certificate Transparency's
# merkle_tree_test): eight leaves, the root of each prefix, and proofs.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243")]
LEAVES += [bytes.fromhex("5051525354555657"), bytes.fromhex("606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
H = {
    "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "0ebc": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "6e34": ROOTS[0],
    "fac5": ROOTS[1],
    "d37e": ROOTS[3],
}
INCLUSION = [  # leaf index, tree size, proof
    (0, 8, ["96a2", "5f08", "6b47"]),
    (5, 8, ["bc1a", "ca85", "d37e"]),
    (2, 3, ["fac5"]),
    (1, 5, ["6e34", "5f08", "bc1a"]),
]
CONSISTENCY = [  # old size, new size, proof
    (1, 1, []),
    (1, 8, ["96a2", "5f08", "6b47"]),
    (6, 8, ["0ebc", "ca85", "d37e"]),
    (2, 5, ["5f08", "bc1a"]),
]
HASHED = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def _hashes(names):
    return [bytes.fromhex(H[name]) for name in names]


def test_the_root_of_each_prefix_is_the_published_one():
    assert (
        merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert [merkle.root(HASHED[:n]).hex() for n in range(1, 9)] == ROOTS


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_are_the_published_ones_and_verify(index, size, proof):
    made = merkle.inclusion_proof(index, size, merkle.in_memory(HASHED))
    assert made == _hashes(proof)
    root = bytes.fromhex(ROOTS[size - 1])
    assert merkle.verify_inclusion(HASHED[index], index, size, made, root)
    assert not merkle.verify_inclusion(HASHED[index], index ^ 1, size, made, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b"other"), index, size, made, root)
    assert not merkle.verify_inclusion(HASHED[index], index, size, made[:-1], root)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_are_the_published_ones_and_verify(old, new, proof):
    old_root, new_root = bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1])
    if old < new:
        made = merkle.consistency_proof(old, new, merkle.in_memory(HASHED))
        assert made == _hashes(proof)
    else:
        made = []
    assert merkle.verify_consistency(old, new, old_root, new_root, made)
    forged = bytes.fromhex(ROOTS[(old + 1) % 8])
    assert not merkle.verify_consistency(old, new, forged, new_root, made)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.data())
def test_every_proof_over_random_trees_verifies_and_a_changed_leaf_does_not(size, data):
    leaves = [merkle.leaf_hash(bytes([i % 256, i // 256])) for i in range(size)]
    subtree = merkle.in_memory(leaves)
    root = merkle.root(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, subtree)
    assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(b"x"), index, size, proof, root)
    old = data.draw(st.integers(1, size))
    proof = merkle.consistency_proof(old, size, subtree) if old < size else []
    assert merkle.verify_consistency(old, size, merkle.root(leaves[:old]), root, proof)
    if old < size:
        changed = [*leaves[: old - 1], merkle.leaf_hash(b"changed")]
        assert not merkle.verify_consistency(old, size, merkle.root(changed), root, proof)
    # The stored-tree form: proofs from complete nodes give the same hashes.
    tree = merkle.Frontier()
    for leaf in leaves:
        tree.append(leaf)
    nodes = {(level, position): h for level, position, h in tree.added}
    from_nodes = lambda lo, hi: merkle.range_hash(lo, hi, lambda lv, p: nodes[lv, p])  # noqa: E731
    assert merkle.inclusion_proof(index, size, from_nodes) == merkle.inclusion_proof(
        index, size, subtree
    )
    assert tree.root() == root


# -- C2SP signed-note: the specification's example key and signature ------------------

SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
SIGNATURE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZS"
    "NXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_the_signed_note_example_key_and_signature():
    signer = notes.parse_signer(SKEY)
    assert str(signer) == SKEY
    assert str(signer.verifier) == VKEY
    assert notes.parse_verifier(VKEY) == signer.verifier
    assert signer.verifier.id.hex() == "c74f20a3"
    note = notes.sign_note(TEXT, signer)  # Ed25519 signs deterministically
    assert note == TEXT + "\n" + SIGNATURE
    assert notes.parse_note(note).signed_by(notes.parse_verifier(VKEY))


def test_a_note_changed_or_signed_by_another_key_does_not_open():
    verifier = notes.parse_verifier(VKEY)
    note = TEXT + "\n" + SIGNATURE
    assert not notes.parse_note(note.replace("problem,", "problem;")).signed_by(verifier)
    other = notes.generate("PeterNeumann")
    assert not notes.parse_note(notes.sign_note(TEXT, other)).signed_by(verifier)
    with pytest.raises(notes.NoteError):
        notes.parse_verifier(VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(notes.NoteError):
        notes.open_checkpoint(note, verifier)  # signed, but not a checkpoint


def test_a_checkpoint_is_the_c2sp_body_signed():
    signer = notes.generate("consentline/acme/evidence")
    checkpoint = notes.Checkpoint("consentline/acme/evidence", 8, bytes.fromhex(ROOTS[7]))
    note = notes.sign_note(checkpoint.body, signer)
    root = base64.b64encode(bytes.fromhex(ROOTS[7])).decode()
    assert note.startswith(f"consentline/acme/evidence\n8\n{root}\n\n\u2014 ")
    assert notes.open_checkpoint(note, signer.verifier) == checkpoint
    with pytest.raises(notes.NoteError):
        notes.open_checkpoint(note, notes.generate("consentline/acme/evidence").verifier)


# -- RFC 8785: the leaf as canonical JSON ------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=0x3F)),  # control characters, quotes
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=len(evidence.LEAF_FIELDS), max_size=len(evidence.LEAF_FIELDS)))
def test_a_leaf_is_exactly_what_rfc8785_writes(record):
    """The quick path for the values entries hold gives the library's bytes."""
    expected = rfc8785.dumps(dict(zip(evidence.LEAF_FIELDS, record, strict=True)))
    assert evidence.leaf(record) == expected
    assert json.loads(expected) == dict(zip(evidence.LEAF_FIELDS, record, strict=True))


def test_values_outside_the_quick_path_go_through_rfc8785():
    """An integer RFC 8785 cannot write exactly (a tampered one) has no leaf at all."""
    record = [None] * len(evidence.LEAF_FIELDS)
    record[evidence.LEAF_FIELDS.index("seq")] = 2**60
    with pytest.raises(ValueError):
        evidence.leaf(record)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 6), st.integers(0, 40))
def test_a_complete_block_appended_at_once_gives_the_same_tree(blocks, tail):
    """Verify hashes aligned blocks of leaves level by level: the same tree."""
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range((blocks << 3) + tail)]
    one_by_one, by_block = merkle.Frontier(), merkle.Frontier()
    for leaf in leaves:
        one_by_one.append(leaf)
    for b in range(blocks):
        by_block.append(merkle.complete_root(b"".join(leaves[b << 3 : (b + 1) << 3])), 3)
    for leaf in leaves[blocks << 3 :]:
        by_block.append(leaf)
    assert (by_block.size, by_block.root()) == (one_by_one.size, one_by_one.root())
    assert by_block.edge == one_by_one.edge
