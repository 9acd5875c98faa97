"""bot.settings.from_saved: its last answer is reused only for the same defaults and rows."""

import pytest
from flask import Flask

from bot import settings
from bot.consent import Mode


@pytest.fixture
def config_app():
    app = Flask(__name__)
    app.config.update(COMPANY_NAME="Acme", OPT_IN_MODE=Mode.CONSENT)
    with app.app_context():
        yield app


def test_saved_rows_win_over_the_defaults(config_app):
    assert settings.from_saved({"company_name": "Beta"}).company_name == "Beta"
    changed = settings.from_saved({"company_name": "Gamma"})
    assert changed.company_name == "Gamma"
    text = settings.from_saved({"company_name": "Gamma", "text.help.to_contact": "Call us"})
    assert text.text("help.to_contact") == "Call us" and text.saved == {
        "company_name",
        "text.help.to_contact",
    }
    assert settings.from_saved({}).company_name == "Acme"
    assert settings.from_saved({"default_mode": "disclaimer"}).default_mode is Mode.DISCLAIMER


def test_a_changed_default_is_seen_at_once(config_app):
    assert settings.from_saved({}).company_name == "Acme"
    config_app.config["COMPANY_NAME"] = "Acme Ltd"
    assert settings.from_saved({}).company_name == "Acme Ltd"
    config_app.config["OPT_IN_MODE"] = Mode.OFF
    assert settings.from_saved({}).default_mode is Mode.OFF


def test_the_texts_are_read_only(config_app):
    first = settings.from_saved({"text.help.to_contact": "Call us"})
    with pytest.raises(TypeError):
        first.texts["help.to_contact"] = "changed"  # one Settings may serve many webhooks


def test_the_replies_about_addressing_are_texts_too(config_app):
    from bot import texts
    from bot.consent import Reply

    current = settings.from_saved({})
    assert set(texts.REPLIES) == {f"reply.{reply}" for reply in Reply}
    for key, words in texts.REPLIES.items():
        assert current.text(key) == words
    with pytest.raises(KeyError):
        current.text("no.such.text")
