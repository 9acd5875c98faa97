"""ConsentLine: a consent gate in front of a small team's business text lines."""

import logging
import os
from collections.abc import Mapping

from dotenv import load_dotenv
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from bot import config as settings_loader
from bot import database
from bot.extensions import csrf, db, migrate

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


def register_extensions(app: Flask) -> None:
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = database.engine_options(
        app.config["SQLALCHEMY_DATABASE_URI"],
        app.config,
        app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {},
    )
    db.init_app(app)
    csrf.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            database.configure_sqlite(db.engine, app.config["DATABASE_BUSY_TIMEOUT"])


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

    webhooks.register(app)
