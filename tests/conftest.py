"""Fixtures: the app on real SQLite and Postgres (schema built by the migrations),
a client, a CLI runner, and a helper that signs webhooks like Twilio does."""

import os
import shutil

import pytest
from sqlalchemy import create_engine, text

from bot.extensions import db
from support import (
    BACKENDS,
    CELL,
    CONTACT,
    EMPTY_TREE,
    OTHER,
    TABLES,
    TEST_DATABASE_URL,
    Twilio,
    add_alice,
    make_app,
    migrate,
)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "consentline.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh schema in TEST_DATABASE_URL, built by the migrations."""
    from bot.config import database_url

    url = database_url(TEST_DATABASE_URL, "")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    migrate(url)
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A clean, migrated database of each backend, one per test."""
    if request.param == "sqlite":
        path = tmp_path / "consentline.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        conn.execute(text(EMPTY_TREE))
    engine.dispose()
    return url


@pytest.fixture
def env_overrides():
    """Override in a test module to change the app's environment."""
    return {}


@pytest.fixture
def app(database_url, env_overrides):
    app = make_app(database_url, **env_overrides)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def employee(runner):
    """Alice, whose line is LINE and cell CELL, following the default mode."""
    return add_alice(runner)


@pytest.fixture
def twilio(client):
    return Twilio(client)


@pytest.fixture(params=BACKENDS)
def scratch_url(request, tmp_path):
    """An empty database of each backend that this test alone migrates up and down."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/scratch.sqlite3"
        return
    from bot.config import database_url

    server = create_engine(database_url(TEST_DATABASE_URL, ""), isolation_level="AUTOCOMMIT")
    name = f"consentline_migrations_{os.getpid()}"
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield str(server.url.set(database=name).render_as_string(hide_password=False))
    finally:
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        server.dispose()


@pytest.fixture
def history(app, twilio, employee):
    """Two conversations: consent asked and given (held text released), texts both ways,
    a relay the employee addressed, and an opt-out."""
    twilio.sms(CONTACT, "Hi")
    twilio.sms(CONTACT, "YES")
    twilio.sms(CELL, "Hello back")
    twilio.sms(CELL, f"{OTHER} Your quote")
    twilio.sms(OTHER, "STOP")
    return app
