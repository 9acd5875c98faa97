"""SPEC §7: when the database fails mid-webhook the answer is 5xx and nothing is half-written."""

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError

from bot.extensions import db
from bot.models import Attestation, Conversation, Message
from support import CONTACT, LINE, TEST_DATABASE_URL


@pytest.fixture
def fail_on(app):
    """Make the database refuse the next statement that starts with a given SQL prefix,
    or holds it as a data-modifying ``WITH`` query (Postgres writes a turn in one)."""
    armed: dict[str, str | None] = {"prefix": None}

    def before(conn, cursor, statement, parameters, context, executemany):
        prefix = armed["prefix"]
        sql = statement.lstrip().upper()
        if prefix and (sql.startswith(prefix) or (sql.startswith("WITH") and prefix in sql)):
            armed["prefix"] = None
            raise OperationalError(statement, parameters, Exception("injected failure"))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    yield armed
    event.remove(engine, "before_cursor_execute", before)


def counts(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(
            db.session.execute(select(func.count()).select_from(model)).scalar()
            for model in (Conversation, Message, Attestation)
        )


@pytest.mark.parametrize(
    "prefix",
    [
        "INSERT INTO ATTESTATIONS",
        "INSERT INTO MESSAGES",
        "UPDATE CONVERSATIONS",
        "INSERT INTO CONV",
    ],
)
def test_failure_inside_the_transaction_answers_503_and_writes_nothing(
    app, twilio, employee, fail_on, prefix
):
    before = counts(app)
    fail_on["prefix"] = prefix
    params = {"MessageSid": "SM" + "9" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    response = twilio.post("/twilio/sms", params)
    assert response.status_code == 503
    assert fail_on["prefix"] is None  # the failure really happened
    assert counts(app) == before
    # Twilio's retry of the same webhook then succeeds, once.
    retry = twilio.post("/twilio/sms", params)
    assert retry.status_code == 200
    assert b"You are trying to reach Alice" in retry.data
    assert counts(app)[1] == 3


def test_failure_releasing_held_texts_answers_503_and_writes_nothing(
    app, twilio, employee, fail_on
):
    """The held texts' UPDATE comes after the turn's other writes: failing it keeps none."""

    def held() -> int:
        with app.app_context():
            query = select(func.count()).select_from(Message).where(Message.disposition == "held")
            return db.session.execute(query).scalar()

    assert twilio.sms(CONTACT, "Hello")  # held; the consent request goes out
    assert twilio.sms(CONTACT, "Still there?") == []  # held too
    before = counts(app)
    assert held() == 2
    fail_on["prefix"] = "UPDATE MESSAGES"
    params = {"MessageSid": "SM" + "8" * 32, "From": CONTACT, "To": LINE, "Body": "YES"}
    assert twilio.post("/twilio/sms", params).status_code == 503
    assert fail_on["prefix"] is None  # the failure really happened
    assert counts(app) == before and held() == 2
    assert twilio.post("/twilio/sms", params).status_code == 200
    assert held() == 0


def test_a_passing_health_check_commits_and_rolls_nothing_back(app, client):
    """A ROLLBACK would drop the statements psycopg has prepared on the connection."""
    ended = []
    with app.app_context():
        engine = db.engine
    on_commit, on_rollback = (
        (lambda conn: ended.append("commit")),
        (lambda conn: ended.append("rollback")),
    )
    event.listen(engine, "commit", on_commit)
    event.listen(engine, "rollback", on_rollback)
    try:
        assert client.get("/healthz").status_code == 200
    finally:
        event.remove(engine, "commit", on_commit)
        event.remove(engine, "rollback", on_rollback)
    assert ended == ["commit"]


def test_healthz_tells_the_truth_when_the_database_is_down(app, client, fail_on):
    fail_on["prefix"] = "SELECT 1"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["database"] == "unreachable"
    assert client.get("/healthz").status_code == 200


# -- the database unreachable, restarted, busy; a worker crashing before commit --------


def test_unreachable_database_answers_503_and_healthz_says_so(tmp_path, request):
    from support import Twilio, make_app

    urls = [f"sqlite:///{tmp_path}/missing/dir/db.sqlite3"]
    if TEST_DATABASE_URL:
        urls.append("postgresql://postgres@127.0.0.1:9/consentline")  # nothing listens on 9
    for url in urls:
        app = make_app(url)
        client = app.test_client()
        assert client.get("/healthz").status_code == 503
        params = {"MessageSid": "SM" + "3" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
        response = Twilio(client).post("/twilio/sms", params)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        with app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize("env_overrides", [{"DATABASE_BUSY_TIMEOUT": "1"}])
def test_database_restart_mid_run_fails_one_webhook_then_recovers(app, twilio, employee):
    """Postgres drops every connection (a restart); SQLite is held busy by another process."""
    twilio.sms(CONTACT, "before")
    with app.app_context():
        url = db.engine.url
    params = {"MessageSid": "SM" + "4" * 32, "From": CONTACT, "To": LINE, "Body": "during"}
    if url.get_backend_name() == "postgresql":
        outsider = create_engine(url)
        with outsider.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        outsider.dispose()
        first = twilio.post("/twilio/sms", params)
    else:
        import sqlite3

        blocker = sqlite3.connect(url.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            first = twilio.post("/twilio/sms", params)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert first.status_code == 503
    retry = twilio.post("/twilio/sms", params)
    assert retry.status_code == 200
    with app.app_context():
        bodies = db.session.execute(select(Message.body).where(Message.direction == "inbound"))
        assert sorted(bodies.scalars()) == ["before", "during"]


def test_a_worker_crash_before_commit_leaves_no_trace(database_url, employee, tmp_path):
    import requests
    from twilio.request_validator import RequestValidator

    from support import TOKEN, gunicorn, make_app

    marker = tmp_path / "crash"
    hooks = str(Path(__file__).with_name("crash_hooks.py"))
    with gunicorn(
        database_url, workers=2, extra_args=["-c", hooks], CONSENTLINE_CRASH_MARKER=str(marker)
    ) as base:
        url = base + "/twilio/sms"
        params = {"MessageSid": "SM" + "6" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
        headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params)}
        marker.touch()
        with pytest.raises(requests.ConnectionError):
            requests.post(url, data=params, headers=headers, timeout=30)
        app = make_app(database_url)
        assert counts(app) == (0, 0, 0)
        marker.unlink()
        # gunicorn replaces the dead worker; Twilio's retry is then processed once.
        deadline = time.monotonic() + 30
        while True:
            try:
                retry = requests.post(url, data=params, headers=headers, timeout=30)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert retry.status_code == 200
        assert counts(app) == (1, 3, 4)
        with app.app_context():
            db.engine.dispose()
