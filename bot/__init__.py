"""ConsentLine: a consent gate in front of a small team's business text lines."""

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Mapping

from dotenv import load_dotenv
from flask import Flask
from sqlalchemy import event
from werkzeug.middleware.proxy_fix import ProxyFix

from bot import config as settings_loader
from bot import statements
from bot.extensions import READ_ONLY, csrf, db, migrate

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None, env: Mapping[str, str] | None = None) -> Flask:
    """Build the app: configuration, extensions, blueprints, commands, errors.

    ``env`` replaces the process environment (and ``.env``) when given: tests
    pass their own so that nothing on the machine leaks into them.
    """
    if env is None:
        load_dotenv()
        env = os.environ
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.update(settings_loader.load(env, app.instance_path))
    if test_config:
        app.config.update(test_config)
    settings_loader.check(app.config)
    os.makedirs(app.instance_path, exist_ok=True)

    register_proxy(app)
    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    register_errors(app)
    if not app.config["TWILIO_VALIDATE_SIGNATURE"]:
        log.warning("TWILIO_VALIDATE_SIGNATURE=false: webhooks are accepted without a signature")
    return app


def register_proxy(app: Flask) -> None:
    """Trust exactly TRUSTED_PROXIES proxies' X-Forwarded-* headers."""
    hops = app.config["TRUSTED_PROXIES"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)


class AbortedPipelineNoise(logging.Filter):
    """Drop psycopg's "error ignored terminating <Pipeline>: pipeline aborted" warning.

    psycopg sends an executemany as a pipeline (the relay's one: the UPDATE of
    held texts' dispositions; its INSERTs are multi-row statements); when a row
    fails, it raises that error and also warns that the aborted pipeline could
    not be closed cleanly. The error is what matters and is handled or logged
    where it is raised; the warning would add a second line for the same failure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        import psycopg

        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) == 2 and isinstance(args[1], psycopg.errors.PipelineAborted))


def register_extensions(app: Flask) -> None:
    if app.config.get("SQLALCHEMY_RECORD_QUERIES"):
        # It times each statement through the execution context and
        # after_cursor_execute, which the relay's statements do not have (bot.statements).
        raise RuntimeError("SQLALCHEMY_RECORD_QUERIES is not supported")
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    if uri.startswith("postgresql"):
        psycopg_log = logging.getLogger("psycopg")
        if not any(isinstance(f, AbortedPipelineNoise) for f in psycopg_log.filters):
            psycopg_log.addFilter(AbortedPipelineNoise())
        connect_args = {"connect_timeout": 5}
        if not os.environ.get("FLASK_RUN_FROM_CLI"):
            # The web answers within Twilio's 15-second wait rather than hang past
            # it; commands (migrations, exports) may take as long as they need.
            busy = app.config["DATABASE_BUSY_TIMEOUT"] * 1000
            connect_args["options"] = f"-c lock_timeout={busy} -c statement_timeout={busy + 2000}"
        options.setdefault("connect_args", connect_args)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    csrf.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            configure_sqlite(db.engine, app.config["DATABASE_BUSY_TIMEOUT"])


def _null(_none: None) -> None:
    """sqlite3's adapter for None: None, which it binds as NULL (see ``configure_sqlite``)."""
    return None


def configure_sqlite(engine, busy_seconds: int) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE for every transaction.

    BEGIN IMMEDIATE takes the write lock up front, so concurrent webhooks (several
    gunicorn workers) queue instead of deadlocking on upgrade. They queue on a
    ``WriterQueue`` first: SQLite's own busy handler retries after sleeps of up to
    100 ms, so a webhook that found the lock taken for a millisecond could wait
    ten; the queue hands the lock over as soon as it is free. Long reads (export,
    verify) say so with ``read_only()`` and take no lock: WAL lets them read a
    snapshot while webhooks go on writing.

    Every transaction is on disk before the code that ran it goes on (before a
    webhook answers Twilio), as with ``synchronous=FULL``, but the disk flush
    comes after the writer lock is let go (``WriterQueue.flush``), so the next
    writer does not wait for this one's ``fdatasync``; a reader's snapshot is
    flushed as it is taken: see ``WriterQueue``.
    """
    # sqlite3 binds exact ints, floats, strs and bytearrays at once; any other value,
    # None (NULL) included, goes to its adapter registry first and, finding nothing
    # there, formats and drops an AttributeError (PrepareProtocol has no __adapt__)
    # before binding it all the same: some 50 of them a webhook. With an adapter
    # registered for None, a NULL is bound after one lookup. The same for any
    # connection of the process, and the same NULL.
    sqlite3.register_adapter(type(None), _null)
    path = engine.url.database
    queue = None
    if path and path != ":memory:" and not path.startswith("file:"):
        # SQLite follows a symlink to the database and keeps its log beside the real
        # file; the lock is there too, so every path to one database shares one lock.
        real = os.path.realpath(path)
        queue = WriterQueue(real + ".writer-lock", busy_seconds, wal=real + "-wal")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        prepare_sqlite_connection(dbapi_connection, queue, busy_seconds)

    @event.listens_for(engine, "begin")
    def _begin(connection):
        reader = connection.get_execution_options().get(READ_ONLY)
        if queue is None:
            if reader:
                connection.exec_driver_sql("BEGIN DEFERRED")
            else:
                statements.command(connection, "BEGIN IMMEDIATE")
            return
        driver = connection.connection.dbapi_connection
        try:
            queue.check()  # refused after a failed flush
        except sqlite3.Error as exc:  # as a database error, like BEGIN's own (503)
            connection._handle_dbapi_exception(exc, "BEGIN", (), None, None)
        if reader:
            connection.exec_driver_sql("BEGIN DEFERRED")
            # A reader acts on what it read before any commit of its own (an export
            # written out, reconcile's sends): its snapshot is taken now and flushed,
            # and cannot change after, so nothing is left to flush at its end.
            try:
                driver.execute("PRAGMA schema_version").close()
                queue.flush(driver)
            except sqlite3.Error as exc:
                connection._handle_dbapi_exception(exc, "PRAGMA schema_version", (), None, None)
            return
        queue.began(driver)  # flushed when it ends
        waited = queue.acquire(driver)
        if waited is not None and waited < 0.001:
            statements.command(connection, "BEGIN IMMEDIATE")
            return
        # One deadline for both waits: BEGIN IMMEDIATE gets what is left of the
        # busy timeout (nothing, if the queue's wait ran out).
        left = 0.0 if waited is None else max(0.0, busy_seconds - waited)
        driver.execute(f"PRAGMA busy_timeout={int(left * 1000)}").close()
        try:
            statements.command(connection, "BEGIN IMMEDIATE")
        finally:
            driver.execute(f"PRAGMA busy_timeout={busy_seconds * 1000}").close()

    if queue is not None:
        # Let the next writer in once the transaction has really ended: the
        # engine's commit and rollback events come before the driver's call.
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection):
            try:
                commit(dbapi_connection)
            finally:
                queue.ended(dbapi_connection)
                queue.release(dbapi_connection)
            queue.flush(dbapi_connection)
            queue.committed(dbapi_connection)

        def do_rollback(dbapi_connection):
            try:
                rollback(dbapi_connection)
            finally:
                began = queue.ended(dbapi_connection)
                queue.release(dbapi_connection)
            if began:
                # What the transaction read may be another writer's commit not
                # flushed yet: flushed before anything acts on it. (The pool's
                # rollback of a connection given back, after a commit, ends no
                # transaction and flushes nothing.)
                queue.flush(dbapi_connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback

        @event.listens_for(engine, "close")
        def _close(dbapi_connection, _record):
            queue.forget(dbapi_connection)

        @event.listens_for(engine, "close_detached")
        def _close_detached(dbapi_connection):
            queue.forget(dbapi_connection)


def prepare_sqlite_connection(dbapi_connection, queue: "WriterQueue | None", busy_seconds) -> None:
    """A new sqlite3 connection set up for ``queue``: WAL, the busy timeout, foreign
    keys, and the flushes left to the queue where it can make them."""
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    wal = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    cursor.execute(f"PRAGMA busy_timeout={busy_seconds * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # NORMAL: COMMIT writes the log without flushing it; the queue flushes it
    # once the lock is let go, before the transaction's caller goes on.
    # Without a queue (in-memory or URI databases), or a log where the queue
    # looks for it, COMMIT flushes itself.
    deferred = queue is not None and wal and queue.defer(dbapi_connection)
    cursor.execute(f"PRAGMA synchronous={'NORMAL' if deferred else 'FULL'}")
    if queue is not None:
        # Checkpoints run after the writer lock is let go (WriterQueue.committed);
        # SQLite's own, inside COMMIT, only as a safety net for a WAL of ~40 MB.
        cursor.execute(f"PRAGMA wal_autocheckpoint={WriterQueue.SAFETY_CHECKPOINT_PAGES}")
    cursor.close()


def _driver(connection):
    """The sqlite3 connection itself, from it or from SQLAlchemy's pool wrapper."""
    return getattr(connection, "dbapi_connection", connection)


# Every WriterQueue of the process, for the one fork hook below.
_QUEUES: "weakref.WeakSet[WriterQueue]" = weakref.WeakSet()


class WriterQueue:
    """One SQLite writer at a time across processes, handed over without delay.

    An exclusive ``flock`` on a file beside the database, taken before
    BEGIN IMMEDIATE and let go when the transaction ends. Waiting polls every
    50 µs to 1 ms (not SQLite's 1–100 ms). The busy timeout covers both waits:
    BEGIN IMMEDIATE gets what the queue left of it, and none once it ran out
    (the webhook then answers 503). A process that dies lets go of its lock with
    its file descriptors.

    Each driver connection opens the lock file once and keeps it open until the
    connection closes (``forget``): ``flock`` locks belong to an open file, so two
    connections of one process (threads) still exclude each other, and a webhook
    pays two ``flock`` calls, not an open and a close as well. A forked child
    drops the files it inherited: they share their lock with the parent's.

    Durability (``flush``): the connections run ``synchronous=NORMAL``, so COMMIT
    appends the transaction to the write-ahead log without flushing it, and the
    lock is let go at once; then the committer calls ``fdatasync`` on the log
    before it goes on. The next writer builds its transaction while this one's
    flush runs. What the committer goes on to do (a webhook's answer) therefore
    still comes after its commit is on disk, as with ``synchronous=FULL``.

    Under NORMAL a commit can be read before it is flushed, so every writer's
    transaction that began is flushed when it ends, commit or rollback, before
    its caller acts on what it read: the flush covers the log up to the end of
    what the transaction saw, every earlier commit included. A reader (``read_only()``:
    exports, ``audit verify``, reconcile's look-ups) is flushed as soon as its
    snapshot is taken, since it acts while it reads. A writer must not act
    outside (answer, send) before its transaction ends; none does. A checkpoint
    flushes the log before copying it into the database (SQLite does so under
    NORMAL), and the log is only started again once the database holds all of it.

    A flush that fails may have lost pages the kernel will not write again, and
    a later ``fdatasync`` would not say so: the queue then refuses every
    transaction of the process, and of any process of this database while the
    marker file beside it (``<database>.unflushed``) exists, until the disk is
    checked, the marker removed and the app restarted.
    """

    # Copy the WAL into the database every this many commits of a process, once
    # the lock is let go: a PASSIVE checkpoint waits for no reader or writer.
    CHECKPOINT_EVERY = 100
    SAFETY_CHECKPOINT_PAGES = 10_000

    def __init__(self, path: str, timeout_seconds: float, wal: str | None = None):
        self.path = path
        self.wal = wal  # the database's write-ahead log, flushed by ``flush``
        self.marker = wal[: -len("-wal")] + ".unflushed" if wal else None
        self.failed: str | None = None  # why a flush of this process failed
        self.timeout = timeout_seconds
        self.files: dict[int, int] = {}  # id of the driver connection -> its lock file descriptor
        self.held: dict[int, int] = {}  # the same, for the connections holding the lock
        self.deferred: set[int] = set()  # connections on synchronous=NORMAL, flushed here
        self.open: set[int] = set()  # connections in a writer's transaction that began
        self.commits = 0
        _QUEUES.add(self)

    def _forked(self) -> None:
        inherited = list(self.files.values())
        self.files.clear()
        self.held.clear()
        self.deferred.clear()
        self.open.clear()
        for fd in inherited:  # the child's copies; the parent's lock stays the parent's
            with contextlib.suppress(OSError):
                os.close(fd)

    def acquire(self, dbapi_connection) -> float | None:
        """Take the lock; return the seconds waited, or None when the wait ran out.

        A lock file that cannot be opened (another user's, a read-only
        directory) leaves the queue out: SQLite's busy handler serialises alone.
        """
        key = id(_driver(dbapi_connection))
        if key in self.held:
            return 0.0
        fd = self.files.get(key)
        if fd is None:
            try:
                # Read-only is enough for flock, so a file made by another user still works.
                fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                log.warning("writer queue unavailable (%s); SQLite's busy timeout applies", exc)
                return 0.0
            self.files[key] = fd
        pause, started = 0.00005, time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started >= self.timeout:
                    return None
                time.sleep(pause)
                pause = min(pause * 2, 0.001)
        self.held[key] = fd
        return time.monotonic() - started

    def defer(self, dbapi_connection) -> bool:
        """Whether this new connection (in WAL mode) can leave its flushes to the queue:
        only if its log is where the queue will flush it."""
        if self.wal is None or not os.path.exists(self.wal):
            # A database still empty has none yet (SQLite makes it with the first
            # write); elsewhere, a log SQLite keeps where the queue cannot see it.
            log.info("no write-ahead log at %s: COMMIT flushes itself", self.wal)
            return False
        self.deferred.add(id(_driver(dbapi_connection)))
        return True

    def check(self) -> None:
        """Refuse a transaction once a flush has failed, here or in another process."""
        if self.failed is not None or (self.marker and os.path.exists(self.marker)):
            raise sqlite3.OperationalError(
                f"writes and reads refused: a flush of {self.wal} failed"
                f" ({self.failed or 'in another process'}); check the disk, then remove"
                f" {self.marker} and restart"
            )

    def began(self, dbapi_connection) -> None:
        """A writer's transaction begins: it is flushed when it ends, commit or rollback."""
        self.open.add(id(_driver(dbapi_connection)))

    def ended(self, dbapi_connection) -> bool:
        """The connection's transaction ends; whether a writer's had begun."""
        key = id(_driver(dbapi_connection))
        began = key in self.open
        self.open.discard(key)
        return began

    def flush(self, dbapi_connection) -> None:
        """``fdatasync`` the write-ahead log: every commit so far is on disk once it returns.

        Opened for each flush, while the caller's connection is open (SQLite
        removes the log only when the last connection closes), so the file
        flushed is the log of now, never one a kept descriptor outlived. A
        connection on ``synchronous=FULL`` (not in WAL mode) may find no log,
        and its COMMIT flushed itself; one on NORMAL must find it. A log that
        cannot be flushed fails the caller's transaction as a database error
        (a webhook answers 503) and every later one (see the class).
        """
        if self.wal is None:
            return
        try:
            try:
                fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if id(_driver(dbapi_connection)) not in self.deferred:
                    return
                raise
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._failed(exc)
            message = f"the write-ahead log could not be flushed: {exc}"
            raise sqlite3.OperationalError(message) from exc

    def _failed(self, exc: OSError) -> None:
        self.failed = str(exc)
        log.critical(
            "the write-ahead log %s could not be flushed (%s): what was committed may"
            " not be on disk; every transaction is refused until the disk is checked,"
            " %s removed and the app restarted",
            self.wal,
            exc,
            self.marker,
        )
        try:  # tells the other processes; a disk that takes no file leaves it to this one
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{exc}\n".encode())
            finally:
                os.close(fd)
        except OSError as marker_error:
            log.critical("could not write %s: %s", self.marker, marker_error)

    def committed(self, dbapi_connection) -> None:
        self.commits += 1
        if self.commits % self.CHECKPOINT_EVERY:
            return
        try:
            _driver(dbapi_connection).execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except sqlite3.Error as exc:  # nothing is lost: the next one copies the same pages
            log.warning("WAL checkpoint failed: %s", exc)

    def release(self, dbapi_connection) -> bool:
        """Let go of the lock; whether the connection held it."""
        fd = self.held.pop(id(_driver(dbapi_connection)), None)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:  # closing the file lets the lock go in any case
            self.forget(dbapi_connection)
        return True

    def forget(self, dbapi_connection) -> None:
        """The connection is closing: let go of the lock and close its lock file.

        Unlocked first: closing alone would not let the lock go while another
        copy of the file is open (a child forked meanwhile).
        """
        key = id(_driver(dbapi_connection))
        self.deferred.discard(key)
        self.open.discard(key)
        held = self.held.pop(key, None)
        fd = self.files.pop(key, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if held is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


os.register_at_fork(after_in_child=lambda: [queue._forked() for queue in list(_QUEUES)])


def register_blueprints(app: Flask) -> None:
    from bot import admin, auth, security, simulator, webhooks

    csrf.exempt(webhooks.bp)  # Twilio signs its requests instead
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(simulator.bp)
    security.register(app)


def register_commands(app: Flask) -> None:
    from bot import cli

    for group in cli.groups:
        app.cli.add_command(group)


def register_errors(app: Flask) -> None:
    from bot import webhooks

    webhooks.register_errors(app)
