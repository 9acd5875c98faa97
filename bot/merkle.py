"""Merkle tree hashing, inclusion and consistency proofs (RFC 6962 §2.1, RFC 9162 §2.1).

Pure functions over hashes. A tree is reached through ``subtree(lo, hi)``, which
gives the hash of leaves ``[lo, hi)`` for the aligned ranges the proofs ask for
(a complete subtree: ``hi - lo`` a power of two and ``lo`` a multiple of it, or
the right-hand part of a tree); ``Frontier`` appends leaves one at a time and
keeps only the right edge, so a log of any size is hashed in constant memory.
"""

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Subtree = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass
class Frontier:
    """The right edge of a tree: one (level, hash) per complete subtree, largest first.

    ``added`` collects every complete node made since it was last emptied, as
    ``(level, index, hash)``: what the database keeps to answer proofs.
    """

    size: int = 0
    edge: list[tuple[int, bytes]] = field(default_factory=list)
    added: list[tuple[int, int, bytes]] = field(default_factory=list)

    def append(self, hashed: bytes, level: int = 0) -> None:
        """Add the next leaf, given its leaf hash; or (``level`` > 0) the next complete
        subtree of 2**level leaves, given its root, where the size is a multiple of that."""
        start, value, span = self.size, hashed, 1 << level
        self.added.append((level, start >> level, value))
        while self.edge and self.edge[-1][0] == level:
            value = node_hash(self.edge.pop()[1], value)
            level += 1
            self.added.append((level, start >> level, value))
        self.edge.append((level, value))
        self.size = start + span

    def root(self) -> bytes:
        """The tree head: MTH of every leaf so far."""
        if not self.edge:
            return EMPTY_ROOT
        value = self.edge[-1][1]
        for _, left in reversed(self.edge[:-1]):
            value = node_hash(left, value)
        return value


def complete_root(leaves: bytes) -> bytes:
    """MTH of 2**k leaf hashes laid end to end (32 bytes each), level by level."""
    level = [leaves[at : at + 32] for at in range(0, len(leaves), 32)]
    while len(level) > 1:
        level = list(map(node_hash, level[::2], level[1::2]))
    return level[0]


def edge_of(size: int) -> list[tuple[int, int]]:
    """The (level, index) of each complete subtree on the right edge of a tree of ``size``."""
    edge, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            edge.append((level, start >> level))
            start += 1 << level
    return edge


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes."""
    frontier = Frontier()
    for hashed in leaves:
        frontier.append(hashed)
    return frontier.root()


def in_memory(leaves: Sequence[bytes]) -> Subtree:
    """``subtree`` over a list of leaf hashes."""
    return lambda lo, hi: root(leaves[lo:hi])


def range_hash(lo: int, hi: int, node: Callable[[int, int], bytes]) -> bytes:
    """MTH of leaves ``[lo, hi)`` from the complete nodes ``node(level, index)``."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        return node(n.bit_length() - 1, lo // n)
    k = split(n)
    return node_hash(range_hash(lo, lo + k, node), range_hash(lo + k, hi, node))


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split(hi - lo)
        if index < lo + k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
    return proof[::-1]


def consistency_proof(old: int, new: int, subtree: Subtree) -> list[bytes]:
    """PROOF(old, D[0:new]) (RFC 9162 §2.1.4.1)."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    proof: list[bytes] = []
    lo, hi, whole = 0, new, True
    while old != hi:
        k = split(hi - lo)
        if old - lo <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, whole = lo + k, False
    if not whole:
        proof.append(subtree(lo, hi))
    return proof[::-1]


def verify_inclusion(
    hashed: bytes, index: int, size: int, proof: Iterable[bytes], expected: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` place the leaf hash ``hashed`` at ``index``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, hashed
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == expected


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree of ``old`` leaves a prefix of that of ``new``?"""
    if old == new:
        return not proof and old_root == new_root
    if not 0 < old < new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
