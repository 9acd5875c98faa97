"""SQLite's writers queue on a file lock, handed over at once; psycopg's pipeline noise.

SPEC §7 asks that concurrent webhooks be serialised; on SQLite that is
BEGIN IMMEDIATE, and ``bot.WriterQueue`` puts a lock in front of it that lets
the next writer in as soon as the transaction ends (SQLite's busy handler
would retry only after sleeps of up to 100 ms).
"""

import contextlib
import fcntl
import logging
import os
import threading
import time

import psycopg
import pytest
from sqlalchemy import text

from bot import AbortedPipelineNoise, WriterQueue
from bot.extensions import db, read_only
from support import make_app


def _free(path: str) -> bool:
    """Whether another writer could take the lock right now."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_waiting_writer_gets_the_lock_as_soon_as_it_is_let_go(tmp_path):
    path = str(tmp_path / "db.writer-lock")
    first, second = WriterQueue(path, 10), WriterQueue(path, 10)
    a, b = object(), object()
    first.acquire(a)
    got = {}

    def wait():
        second.acquire(b)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    assert "at" not in got  # still waiting
    released = time.monotonic()
    first.release(a)
    waiter.join(5)
    assert got["at"] - released < 0.02  # not SQLite's 1-100 ms sleeps
    assert not _free(path)
    second.release(b)
    assert _free(path)


def test_a_writer_that_waited_past_the_timeout_goes_on_without_the_lock(tmp_path):
    path = str(tmp_path / "db.writer-lock")
    holder, late = WriterQueue(path, 10), WriterQueue(path, 0.05)
    holder.acquire("a")
    started = time.monotonic()
    late.acquire("b")
    assert 0.05 <= time.monotonic() - started < 1
    assert late.held == {}  # BEGIN IMMEDIATE's own busy timeout answers next
    holder.release("a")


def _open_files(path: str) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


def test_each_connection_opens_the_lock_file_once_and_connections_still_exclude(tmp_path):
    path = str(tmp_path / "db.writer-lock")
    queue = WriterQueue(path, 0.05)
    a, b = object(), object()
    queue.acquire(a)
    queue.release(a)
    assert _open_files(path) == 1
    for _ in range(50):
        assert queue.acquire(a) is not None
        assert not _free(path)
        assert _open_files(path) == 1  # the file opened the first time is the one locked
        queue.release(a)
        assert _free(path)
    # A second connection of the same process has its own file, so its own lock.
    queue.acquire(a)
    assert queue.acquire(b) is None  # timed out: a holds the lock
    queue.release(a)
    assert queue.acquire(b) is not None
    assert set(queue.held) == {id(b)}
    queue.release(b)
    queue.forget(a)
    queue.forget(b)
    assert queue.files == {} and _open_files(path) == 0


def test_a_closing_connection_lets_go_of_the_lock_and_its_file(tmp_path):
    path = str(tmp_path / "db.writer-lock")
    queue = WriterQueue(path, 10)
    queue.acquire("a")
    assert not _free(path)
    queue.forget("a")
    assert _free(path)
    assert queue.files == {} and queue.held == {}


def test_a_forked_child_does_not_share_the_parents_lock(tmp_path):
    path = str(tmp_path / "db.writer-lock")
    queue = WriterQueue(path, 0.05)
    queue.acquire("a")
    pid = os.fork()
    if pid == 0:  # the child: it must not think it holds the parent's lock
        code = 1
        try:
            code = 0 if queue.files == {} and queue.acquire("a") is None else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not _free(path)  # the child's exit did not let the parent's lock go
    queue.release("a")
    assert _free(path)
    queue.forget("a")


def _with_employee(app):
    """The app, with Alice's line (LINE, cell CELL)."""
    from support import add_alice

    add_alice(app.test_cli_runner())
    return app


def _migrated_app(tmp_path, **overrides):
    """The app on a migrated SQLite database in ``tmp_path``, and its writer-lock file."""
    from support import migrate

    url = f"sqlite:///{tmp_path}/app.sqlite3"
    migrate(url)
    return make_app(url, **overrides), f"{tmp_path}/app.sqlite3.writer-lock"


def test_the_pool_closing_a_connection_closes_its_lock_file(tmp_path):
    app, lock = _migrated_app(tmp_path)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        assert _open_files(lock) == 1  # kept by the pooled connection
        db.engine.dispose()  # the pool closes it
        assert _open_files(lock) == 0
        # A connection invalidated in the middle of a transaction lets the lock go.
        conn = db.engine.connect()
        conn.execute(text("SELECT 1"))  # BEGIN IMMEDIATE
        assert not _free(lock)
        conn.invalidate()
        assert _free(lock) and _open_files(lock) == 0
        conn.close()
        db.engine.dispose()


def test_the_app_holds_the_lock_from_begin_to_commit_or_rollback(tmp_path):
    app, lock = _migrated_app(tmp_path)
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE
        assert not _free(lock)
        db.session.commit()
        assert _free(lock)
        db.session.execute(text("SELECT 1"))
        assert not _free(lock)
        db.session.rollback()
        assert _free(lock)
        pages = db.session.execute(text("PRAGMA wal_autocheckpoint")).scalar()
        assert pages == WriterQueue.SAFETY_CHECKPOINT_PAGES
        db.session.rollback()
        db.engine.dispose()


@pytest.mark.parametrize("error", [psycopg.errors.PipelineAborted("pipeline aborted")])
def test_only_the_aborted_pipeline_warning_is_dropped(error):
    noise = AbortedPipelineNoise()

    def record(msg, args):
        return logging.LogRecord("psycopg", logging.WARNING, __file__, 1, msg, args, None)

    assert not noise.filter(record("error ignored terminating %r: %s", (object(), error)))
    assert noise.filter(record("error ignored terminating %r: %s", (object(), ValueError("x"))))
    assert noise.filter(record("something else: %s", ("x",)))


def test_the_queue_and_sqlite_share_one_busy_timeout(tmp_path):
    """Both locks held elsewhere: the webhook answers 503 after one timeout, not two."""
    import sqlite3

    from support import CONTACT, LINE, Twilio

    app, lock = _migrated_app(tmp_path, DATABASE_BUSY_TIMEOUT="1")
    other = WriterQueue(lock, 10)
    other.acquire("outsider")
    blocker = sqlite3.connect(f"{tmp_path}/app.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    params = {"MessageSid": "SM" + "5" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    try:
        started = time.monotonic()
        response = Twilio(app.test_client()).post("/twilio/sms", params)
        waited = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        other.release("outsider")
    assert response.status_code == 503
    assert 1.0 <= waited < 1.8
    with app.app_context():
        # The next transaction waits the whole timeout again, not what was left.
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() == 1000
        db.session.rollback()
        db.engine.dispose()


def test_file_databases_flush_the_log_themselves_and_memory_ones_at_commit(tmp_path):
    """NORMAL (the queue flushes the log after the lock) only where there is a queue."""
    app, _lock = _migrated_app(tmp_path)
    memory = make_app("sqlite://")
    for each, level in ((app, 1), (memory, 2)):  # 1 = NORMAL, 2 = FULL
        with each.app_context():
            assert db.session.execute(text("PRAGMA synchronous")).scalar() == level
            db.session.rollback()
            db.engine.dispose()


def _recording_flushes(monkeypatch, tmp_path, lock):
    """Each fdatasync of the app: the file's inode, whether the writer lock was free,
    and how many texts another connection could already read."""
    import sqlite3

    flushes = []
    real = os.fdatasync

    def fdatasync(fd):
        reader = sqlite3.connect(f"{tmp_path}/app.sqlite3")
        try:
            texts = reader.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            reader.close()
        flushes.append((os.fstat(fd).st_ino, _free(lock), texts))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return flushes


def test_a_webhook_flushes_the_log_once_after_the_lock_and_before_it_answers(tmp_path, monkeypatch):
    """SPEC §7: a text is on disk before Twilio hears it was received. The one
    ``fdatasync`` comes after COMMIT (another connection already reads the text)
    and after the writer lock is let go (the next writer does not wait for it)."""
    from support import CONTACT, LINE, Twilio

    app, lock = _migrated_app(tmp_path)
    client = Twilio(_with_employee(app).test_client())
    client.post("/twilio/sms", {"MessageSid": "SM" + "6" * 32, "From": CONTACT, "To": LINE})
    with app.app_context():
        before = db.session.execute(text("SELECT count(*) FROM messages")).scalar()
        db.session.rollback()
    flushes = _recording_flushes(monkeypatch, tmp_path, lock)
    params = {"MessageSid": "SM" + "7" * 32, "From": CONTACT, "To": LINE, "Body": "YES"}
    response = client.post("/twilio/sms", params)
    flushed = list(flushes)
    assert response.status_code == 200
    wal = os.stat(f"{tmp_path}/app.sqlite3-wal").st_ino
    with app.app_context():
        after = db.session.execute(text("SELECT count(*) FROM messages")).scalar()
        db.session.rollback()
        db.engine.dispose()
    assert after > before
    # One flush, with every text of the webhook committed: the pool's rollback of
    # the connection given back flushes nothing.
    assert flushed == [(wal, True, after)]


def test_a_rolled_back_write_transaction_flushes_what_it_may_have_read(tmp_path, monkeypatch):
    app, lock = _migrated_app(tmp_path)
    flushes = _recording_flushes(monkeypatch, tmp_path, lock)
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the lock
        db.session.rollback()
        assert [free for _ino, free, _texts in flushes] == [True]
        with db.engine.connect() as conn:  # the pool's rollback of it flushes nothing
            conn.exec_driver_sql("SELECT 1")
            conn.commit()
        assert len(flushes) == 2
        db.session.rollback()
        db.engine.dispose()


def test_a_reader_flushes_its_snapshot_before_it_reads(tmp_path, monkeypatch):
    """A reader (an export, reconcile's look-ups) acts on what it reads before any
    commit of its own: another connection's commit, readable and not flushed yet,
    is on disk before the reader's first row."""
    import sqlite3

    app, lock = _migrated_app(tmp_path)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.rollback()  # the app's connection exists, on NORMAL
        writer = sqlite3.connect(f"{tmp_path}/app.sqlite3", isolation_level=None)
        writer.execute("PRAGMA synchronous=OFF")  # its commit leaves the log unflushed
        writer.execute("UPDATE settings SET value = value")
        flushes = _recording_flushes(monkeypatch, tmp_path, lock)
        read_only()
        assert len(flushes) == 1 and flushes[0][1]  # flushed as it began, holding no lock
        db.session.execute(text("SELECT count(*) FROM messages")).scalar()
        db.session.rollback()
        assert len(flushes) == 1  # and not again at its end: its snapshot did not move
        writer.close()
        db.engine.dispose()


def test_a_log_that_cannot_be_flushed_refuses_everything_until_checked(tmp_path, monkeypatch):
    """The disk refuses the flush: Twilio is not told the text arrived (503). The
    kernel may have dropped those pages and a later fdatasync would not say so, so
    the retry is refused too, in this process and in any other while the marker
    file is there; once it is removed and the app restarted, the retry is answered
    from what was kept."""
    import errno

    from support import CONTACT, LINE, Twilio, parse_twiml

    app, _lock = _migrated_app(tmp_path)
    client = Twilio(_with_employee(app).test_client())
    params = {"MessageSid": "SM" + "8" * 32, "From": CONTACT, "To": LINE, "Body": "Hello"}
    real = os.fdatasync

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    failed = client.post("/twilio/sms", params)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
    monkeypatch.setattr(os, "fdatasync", real)
    marker = tmp_path / "app.sqlite3.unflushed"
    assert marker.exists()
    assert client.post("/twilio/sms", params).status_code == 503  # this process
    other = make_app(f"sqlite:///{tmp_path}/app.sqlite3")
    assert Twilio(other.test_client()).post("/twilio/sms", params).status_code == 503
    assert other.test_client().get("/healthz").status_code == 503
    marker.unlink()
    restarted = make_app(f"sqlite:///{tmp_path}/app.sqlite3")
    retried = Twilio(restarted.test_client()).post("/twilio/sms", params)
    assert retried.status_code == 200
    assert parse_twiml(retried.data)  # the answer kept for that MessageSid
    for each in (app, other, restarted):
        with each.app_context():
            db.engine.dispose()
    with restarted.app_context():
        kept = db.session.execute(
            text("SELECT count(*) FROM messages WHERE twilio_sid = :sid"),
            {"sid": params["MessageSid"]},
        ).scalar()
        db.session.rollback()
        db.engine.dispose()
    assert kept == 1


def test_a_database_behind_a_symlink_is_flushed_where_sqlite_keeps_its_log(tmp_path, monkeypatch):
    """SQLite follows the link and keeps the log beside the real file: that is the
    file flushed (else a NORMAL connection would never be flushed at all)."""
    from support import CONTACT, LINE, Twilio

    _migrated_app(tmp_path)
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / "app.sqlite3").symlink_to(tmp_path / "app.sqlite3")
    app = _with_employee(make_app(f"sqlite:///{linked}/app.sqlite3"))
    synced = []
    real = os.fdatasync

    def fdatasync(fd):
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    params = {"MessageSid": "SM" + "9" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    assert Twilio(app.test_client()).post("/twilio/sms", params).status_code == 200
    assert not (linked / "app.sqlite3-wal").exists()
    assert os.stat(tmp_path / "app.sqlite3-wal").st_ino in synced
    with app.app_context():
        db.engine.dispose()


def test_every_path_to_a_database_queues_on_one_writer_lock(tmp_path):
    """A process that opens the database through a symlink queues on the lock beside
    the real file, the one a process opening it directly takes."""
    _migrated_app(tmp_path)
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / "app.sqlite3").symlink_to(tmp_path / "app.sqlite3")
    app = make_app(f"sqlite:///{linked}/app.sqlite3")
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE, through the link
        assert not _free(f"{tmp_path}/app.sqlite3.writer-lock")
        db.session.rollback()
        assert _free(f"{tmp_path}/app.sqlite3.writer-lock")
        db.engine.dispose()
    assert not (linked / "app.sqlite3.writer-lock").exists()


def test_none_is_bound_through_an_adapter_and_stays_null(tmp_path):
    """Without an adapter for None, sqlite3 formats and drops an AttributeError for
    each NULL it binds (about 50 a webhook); with it, the same NULL is stored."""
    import sqlite3

    app, _lock = _migrated_app(tmp_path)
    adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
    assert adapter is not None and adapter(None) is None
    with app.app_context():
        stored = db.session.execute(
            text("SELECT :nothing IS NULL, typeof(:nothing)"), {"nothing": None}
        ).one()
        db.session.rollback()
        db.engine.dispose()
    assert tuple(stored) == (1, "null")
