"""Twilio's webhooks (SPEC §7): inbound texts, status callbacks, and the health check."""

import functools
import logging

from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from twilio.request_validator import RequestValidator, get_signature_algorithm

from bot import ledger, relay, twiml, writer_lock
from bot.extensions import db
from bot.models import utcnow

log = logging.getLogger(__name__)
security_log = logging.getLogger("bot.security")

bp = Blueprint("webhooks", __name__)


def signed_url() -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path when set, else this request's own.

    The query string is used exactly as it arrived (still percent-encoded), since
    that is the text Twilio signed; werkzeug's ``request.url`` re-encodes it.
    """
    base = current_app.config["PUBLIC_BASE_URL"] or request.root_url.rstrip("/")
    query = request.query_string.decode("latin-1")
    return base + request.path + ("?" + query if query else "")


def twilio_signed(view):
    """Answer 403, and change nothing, unless Twilio signed this request."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        config = current_app.config
        if config["TWILIO_VALIDATE_SIGNATURE"]:
            token = config.get("TWILIO_AUTH_TOKEN") or ""
            signature = request.headers.get("X-Twilio-Signature", "")
            url = signed_url()
            settings = request.headers.get("X-Twilio-Webhooks-Signature-Settings")
            if not token or not _valid(token, url, signature, settings):
                security_log.warning(
                    "rejected a request with a %s Twilio signature",
                    "wrong" if signature else "missing",
                    extra={"url": url, "remote_addr": request.remote_addr},
                )
                abort(403)
        return view(*args, **kwargs)

    return wrapper


def _valid(token: str, url: str, signature: str, settings: str | None) -> bool:
    """``RequestValidator.validate`` over the request's form; a URL it cannot read is refused."""
    try:
        algorithm = get_signature_algorithm(settings)
        return RequestValidator(token).validate(url, request.form, signature, algorithm)
    except ValueError:  # a Host header such as "h:99999", an algorithm the library refuses
        return False


def status_url() -> str:
    """Where Twilio should report the delivery status of the texts we send."""
    base = current_app.config["PUBLIC_BASE_URL"] or request.host_url.rstrip("/")
    return base + "/twilio/status"


def _xml(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/xml")


@bp.post("/twilio/sms")
@twilio_signed
def inbound_sms():
    """verify (the decorator) → read the text → lock, decide, persist, render (``relay``)."""
    try:
        inbound = relay.parse_form(
            request.form,
            request.headers.get("I-Twilio-Idempotency-Token"),
            signature_valid=True if current_app.config["TWILIO_VALIDATE_SIGNATURE"] else None,
        )
    except relay.BadRequest as exc:
        log.warning("unusable inbound webhook: %s", exc)
        return _xml(twiml.EMPTY, 400)
    return _xml(relay.handle_inbound(inbound, utcnow(), status_url()))


@bp.post("/twilio/status")
@twilio_signed
def status_callback():
    relay.handle_status(request.args.get("ref"), request.form, utcnow())
    return _xml(twiml.EMPTY)


@bp.get("/healthz")
def healthz():
    try:
        db.session.execute(text("SELECT 1"))
        # COMMIT, not ROLLBACK: psycopg forgets the statements it has prepared on a
        # connection when a transaction there rolls back.
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("health check: the database does not answer")
        return {"status": "unavailable", "database": "unreachable"}, 503
    return {"status": "ok", "database": "ok"}


def register(app) -> None:
    """The evidence upkeep after each webhook's answer, and the answer to a failed database."""

    @app.after_request
    def upkeep_after_answer(response: Response) -> Response:
        # The evidence is sequenced (and an hourly checkpoint made) once the answer has
        # gone to Twilio, so no webhook waits for it.
        if (
            request.blueprint == bp.name
            and request.method == "POST"
            and response.status_code == 200
        ):
            response.call_on_close(functools.partial(ledger.after_answer, app))
        return response

    @app.errorhandler(SQLAlchemyError)
    @app.errorhandler(writer_lock.Busy)
    def database_failed(exc):
        # Nothing was committed: Twilio sees a 5xx and retries or uses its fallback URL.
        log.error("database failure; the transaction was rolled back: %s", exc)
        try:
            db.session.rollback()
        except SQLAlchemyError:
            log.warning("rollback failed too; the connection is discarded")
        response = _xml(twiml.EMPTY, 503)
        response.headers["Retry-After"] = "1"
        return response
