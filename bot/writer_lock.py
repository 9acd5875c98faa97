"""One SQLite writer at a time across processes, handed over the moment it is free.

With several gunicorn workers on one SQLite file, a webhook whose ``BEGIN
IMMEDIATE`` finds the write lock taken is left to SQLite's busy handler, which
sleeps 1, 2, 5, 10 … up to 100 ms between tries: a webhook that found the lock
held for a millisecond can wait tens. This lock, an ``flock`` on a file beside
the database, is taken before the transaction begins and let go when it has
ended; a waiter looks again every half millisecond. Its worth is measured in
docs/performance.md. Postgres locks rows and needs none of this.
"""

import contextlib
import fcntl
import functools
import logging
import os
import time
from collections.abc import Iterator

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

POLL = 0.0005  # seconds between two looks at a taken lock


class Busy(RuntimeError):
    """Another writer held the lock for longer than the busy timeout."""


@contextlib.contextmanager
def held(engine: Engine, timeout: float) -> Iterator[None]:
    """The database's writer lock, for the block (nothing to take but for a SQLite file)."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    try:
        fd = os.open(_lock_file(path), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:  # a folder we cannot write: SQLite's busy timeout alone
        log.warning("no writer lock (%s): SQLite's busy timeout applies", exc)
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy(f"no turn to write within {timeout} s") from None
                time.sleep(POLL)
        yield
    finally:
        os.close(fd)  # lets the lock go


@functools.cache
def _lock_file(path: str) -> str:
    """SQLite follows a symlink to the database: so does the lock, one per real file."""
    return os.path.realpath(path) + ".writer-lock"
