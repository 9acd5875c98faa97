"""gunicorn settings for the crash test: a worker dies between decision and commit.

Loaded with ``gunicorn -c tests/crash_hooks.py``; only the tests use it. While
the file named by $CONSENTLINE_CRASH_MARKER exists, a worker about to commit
a transaction that wrote something exits at once, as if the machine lost power.
"""

import os


def post_worker_init(worker):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    marker = os.environ["CONSENTLINE_CRASH_MARKER"]
    wrote = "consentline_crash_wrote"

    @event.listens_for(Engine, "before_cursor_execute")
    def note_writes(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH")):
            conn.info[wrote] = True

    @event.listens_for(Engine, "commit")
    def crash(conn):
        if conn.info.pop(wrote, False) and os.path.exists(marker):
            os._exit(1)

    @event.listens_for(Engine, "rollback")
    def forget(conn):
        conn.info.pop(wrote, None)
