"""SPEC §8 configuration: defaults, Heroku URLs, and failing fast on bad settings."""

import pytest

from bot import create_app
from bot.config import ConfigError, database_url, load
from bot.consent import Mode


def test_defaults():
    config = load({}, "/srv/instance")
    assert config["SQLALCHEMY_DATABASE_URI"] == "sqlite:////srv/instance/consentline.sqlite3"
    assert config["TWILIO_VALIDATE_SIGNATURE"] is True
    assert config["TWILIO_STOP_FILTERING"] is True
    assert config["TRUSTED_PROXIES"] == 0
    assert config["OPT_IN_MODE"] is Mode.CONSENT
    assert config["DEFAULT_REGION"] == "US"
    assert config["SIMULATOR_ENABLED"] is False
    assert config["PUBLIC_BASE_URL"] is None


def test_heroku_postgres_url_uses_psycopg():
    assert database_url("postgres://u:p@h:5432/d", "") == "postgresql+psycopg://u:p@h:5432/d"
    assert database_url("postgresql://u@h/d", "") == "postgresql+psycopg://u@h/d"
    assert database_url("sqlite:///x.db", "") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OPT_IN_MODE": "strict"}, "OPT_IN_MODE"),
        ({"TRUSTED_PROXIES": "one"}, "TRUSTED_PROXIES"),
        ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES"),
        ({"TWILIO_STOP_FILTERING": "maybe"}, "TWILIO_STOP_FILTERING"),
        ({"PUBLIC_BASE_URL": "bot.example.com"}, "PUBLIC_BASE_URL"),
        ({"DEFAULT_REGION": "XX"}, "DEFAULT_REGION"),
    ],
)
def test_malformed_settings_fail_fast(env, message):
    with pytest.raises(ConfigError, match=message):
        load(env, "/tmp")


def test_secrets_required_outside_debug(tmp_path):
    db = f"sqlite:///{tmp_path}/x.sqlite3"
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app(env={"DATABASE_URL": db, "TWILIO_AUTH_TOKEN": "t"})
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        create_app(env={"DATABASE_URL": db, "SECRET_KEY": "s"})
    app = create_app(env={"DATABASE_URL": db, "SECRET_KEY": "s", "TWILIO_VALIDATE_SIGNATURE": "0"})
    assert app.config["TWILIO_VALIDATE_SIGNATURE"] is False
    assert create_app(env={"DATABASE_URL": db, "FLASK_DEBUG": "1"}).debug
