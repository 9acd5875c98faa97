"""``twilio doctor`` and the portal's Health page (SPEC §12): the whole set-up checked,
each problem with its fix in one line."""

import os
from dataclasses import dataclass
from datetime import timedelta

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from sqlalchemy import select

from bot import employees as staff
from bot import ledger, provision, reconcile
from bot.extensions import db, migrate
from bot.models import FAILED, Message, utcnow

ERROR, WARNING, OK = "error", "warning", "ok"
RECENT = timedelta(days=7)


@dataclass(frozen=True)
class Finding:
    level: str
    what: str
    fix: str = ""


def check(http_client=None) -> list[Finding]:
    """Every check, in the order a new team would fix them."""
    found = _configuration() + _migrations() + _evidence() + _cells()
    found += _twilio(http_client)
    return found


def failed(findings: list[Finding]) -> bool:
    return any(f.level == ERROR for f in findings)


def _configuration() -> list[Finding]:
    config, found = current_app.config, []
    base = config.get("PUBLIC_BASE_URL")
    if not base:
        found.append(
            Finding(ERROR, "PUBLIC_BASE_URL is not set", "set it to the https address Twilio calls")
        )
    elif not base.startswith("https://"):
        found.append(Finding(ERROR, f"PUBLIC_BASE_URL is {base}", "use the https address"))
    else:
        found.append(Finding(OK, f"PUBLIC_BASE_URL is {base}"))
    if not config["TWILIO_VALIDATE_SIGNATURE"]:
        found.append(
            Finding(
                ERROR, "Twilio's signatures are not checked", "set TWILIO_VALIDATE_SIGNATURE=true"
            )
        )
    else:
        found.append(Finding(OK, "Twilio's signatures are checked"))
    on_heroku = "DYNO" in os.environ
    if on_heroku and config["TRUSTED_PROXIES"] != 1:
        found.append(
            Finding(
                ERROR,
                f"TRUSTED_PROXIES is {config['TRUSTED_PROXIES']} on Heroku",
                "set TRUSTED_PROXIES=1",
            )
        )
    secret = config.get("SECRET_KEY") or ""
    if len(secret) < 32:
        found.append(
            Finding(
                ERROR if not secret else WARNING,
                "SECRET_KEY is missing" if not secret else "SECRET_KEY is short",
                "set it to: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        )
    if config["SIMULATOR_ENABLED"] and not config.get("DEBUG"):
        found.append(
            Finding(ERROR, "the simulator is on in production", "set SIMULATOR_ENABLED=false")
        )
    return found


def _migrations() -> list[Finding]:
    config = migrate.get_config()
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        return [
            Finding(
                ERROR, "the database's migrations are not current", "run flask --app app db upgrade"
            )
        ]
    return [Finding(OK, "migrations are current")]


def _evidence() -> list[Finding]:
    state = ledger.status()
    if not state["signing"]:
        return [
            Finding(
                WARNING,
                "evidence is unsigned",
                "run flask --app app audit keygen; set EVIDENCE_SIGNING_KEY",
            )
        ]
    if state["stale"]:
        return [
            Finding(
                WARNING,
                "no checkpoint was witnessed in the last day",
                "set EVIDENCE_WITNESS_EMAIL or _DIR; run audit checkpoint",
            )
        ]
    return [Finding(OK, "evidence is signed and witnessed")]


def _cells() -> list[Finding]:
    """Texts to an employee's own cell that failed lately (after a STOP to their own
    line, say, which Twilio then blocks)."""
    found = []
    since = utcnow() - RECENT
    for employee in staff.listing():
        if not employee.active:
            continue
        failures = db.session.execute(
            select(Message.error_code)
            .where(
                Message.recipient == employee.cell,
                Message.status.in_(FAILED),
                Message.created_at >= since,
            )
            .limit(1)
        ).first()
        if failures:
            found.append(
                Finding(
                    ERROR,
                    f"texts to {employee.name}'s cell {employee.cell} failed lately"
                    + (f" (error {failures[0]})" if failures[0] else ""),
                    "if they texted STOP to their line, have them text START to it",
                )
            )
    return found


def _twilio(http_client) -> list[Finding]:
    """The credentials, and each line's set-up as ``twilio setup`` would make it."""
    try:
        provision.urls()
    except provision.SetupError:  # said above, with its fix
        return [Finding(WARNING, "the lines' Twilio set-up is checked once PUBLIC_BASE_URL is")]
    try:
        plan = provision.run(apply=False, http_client=http_client)
    except (provision.SetupError, reconcile.ReconcileError) as exc:
        return [Finding(ERROR, str(exc), "see the README's Twilio set-up")]
    found = [Finding(OK, "Twilio accepts the credentials")]
    for line in plan.lines:
        for error in line.errors:
            found.append(
                Finding(ERROR, f"{line.line}: {error}", "check the number in the Twilio console")
            )
        for change in line.changes:
            found.append(
                Finding(
                    ERROR,
                    f"{line.line}: set-up would {change}",
                    "run flask --app app twilio setup --apply",
                )
            )
        if not line.changes and not line.errors:
            found.append(Finding(OK, f"{line.line}: webhook, status callback and fallback set"))
    return found
