"""gunicorn settings for the crash test: a worker dies between decision and commit.

Loaded with ``gunicorn -c tests/crash_hooks.py``; only the tests use it. While
the file named by $CONSENTLINE_CRASH_MARKER exists, a worker about to commit
a webhook's transaction exits at once, as if the machine lost power.
"""

import os


def post_worker_init(worker):
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    marker = os.environ["CONSENTLINE_CRASH_MARKER"]

    @event.listens_for(Session, "before_commit")
    def crash(session):
        if os.path.exists(marker) and session.new:
            os._exit(1)
