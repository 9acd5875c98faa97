"""Twilio's webhooks (SPEC §7): inbound texts, status callbacks, and the health check."""

import functools
import hmac
import logging
from urllib.parse import parse_qsl, urlparse

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" error handler used below
from flask import Blueprint, Config, Request, Response, abort, current_app, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from twilio.request_validator import RequestValidator, get_signature_algorithm

from bot import relay, twiml
from bot.extensions import db
from bot.models import utcnow

log = logging.getLogger(__name__)
security_log = logging.getLogger("bot.security")

bp = Blueprint("webhooks", __name__)


def here() -> tuple[Request, Config]:
    """This request and the app's configuration, each read once through its proxy.

    Every attribute read on ``request`` or ``current_app`` is the proxy's own
    failed lookup first (an AttributeError formatted and caught) and only then
    the object's: the webhooks read them from these instead.
    """
    return request._get_current_object(), current_app._get_current_object().config


def signed_url(req: Request, config: Config) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL + path when set, else this request's own.

    The query string is used exactly as it arrived (still percent-encoded), since
    that is the text Twilio signed; werkzeug's ``request.url`` re-encodes it.
    """
    base = config["PUBLIC_BASE_URL"] or req.root_url.rstrip("/")
    query = req.query_string.decode("latin-1")
    return base + req.path + ("?" + query if query else "")


URLENCODED = "application/x-www-form-urlencoded"


def read_form(req: Request) -> dict[str, list[str]]:
    """The request's form, each name's values in order: what ``req.form.lists()`` gives.

    Twilio posts ``application/x-www-form-urlencoded``, and that is parsed here as
    werkzeug parses it (the body as UTF-8, none of it if it is not, then
    ``parse_qsl`` with werkzeug's own arguments), from the same body under the
    same ``MAX_CONTENT_LENGTH``, without werkzeug's two MultiDicts and the limits
    it reads from the app for each request (about 50 µs of a webhook). Any other
    body goes to werkzeug.
    """
    if req.mimetype != URLENCODED:
        return dict(req.form.lists())
    try:
        body = req.get_data(cache=True).decode()
    except UnicodeDecodeError:  # werkzeug's parser gives an empty form for it
        return {}
    form: dict[str, list[str]] = {}
    for name, value in parse_qsl(body, keep_blank_values=True, errors="werkzeug.url_quote"):
        form.setdefault(name, []).append(value)
    return form


def first_values(form: dict[str, list[str]]) -> dict[str, str]:
    """Each name's first value, as werkzeug's ``MultiDict.to_dict()``."""
    return {name: values[0] for name, values in form.items()}


class _Params(dict):
    """A form as ``RequestValidator`` reads a Flask one (each name's list of values),
    without the AttributeError it raises and catches per name on a werkzeug MultiDict."""

    __slots__ = ()

    def getall(self, name):
        return self[name]


def signature_matches(
    token: str, url: str, form: dict[str, list[str]], signature: str, algorithm
) -> bool:
    """Exactly what ``RequestValidator(token).validate`` answers, in one HMAC when it is yes.

    ``validate`` computes two: one over the URL without its port and one with it,
    for Twilio signs either. When the URL comes back unchanged through ``urlparse``
    it is itself one of the two (the port-less form if it has no port, the other if
    it has one), so a match over it is a match ``validate`` finds too. Anything
    else (no match, a URL that does not round-trip, a ``bodySHA256`` query, an
    algorithm the library refuses) is answered by ``validate`` itself; a URL whose
    port it cannot read (it would raise) is refused. ``form`` is each name's values,
    as ``read_form`` gives them.
    """
    validator = RequestValidator(token)
    params = _Params(form)
    parsed = urlparse(url)
    try:
        parsed.port  # noqa: B018 - validate() reads it, and raises for a malformed one
    except ValueError:  # a Host header such as "h:99999": nothing Twilio signed
        return False
    if "bodySHA256" not in url and parsed.geturl() == url:
        try:
            expected = validator.compute_signature(url, params, algorithm)
        except ValueError:  # an unsupported algorithm: validate() logs and refuses it
            pass
        else:
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return True
    return validator.validate(url, params, signature, algorithm)


def twilio_signed(view):
    """Answer 403, and change nothing, unless Twilio signed this request.

    The view is given the form the signature was checked over (``read_form``),
    the request and the app's configuration (``here``).
    """

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        req, config = here()
        form = read_form(req)
        if config["TWILIO_VALIDATE_SIGNATURE"]:
            token = config.get("TWILIO_AUTH_TOKEN") or ""
            headers = req.headers
            signature = headers.get("X-Twilio-Signature", "")
            url = signed_url(req, config)
            algorithm = get_signature_algorithm(headers.get("X-Twilio-Webhooks-Signature-Settings"))
            if not token or not signature_matches(token, url, form, signature, algorithm):
                security_log.warning(
                    "rejected a request with a %s Twilio signature",
                    "wrong" if signature else "missing",
                    extra={"url": url, "remote_addr": req.remote_addr},
                )
                abort(403)
        return view(form, req, config, *args, **kwargs)

    return wrapper


def status_base(req: Request, config: Config) -> str:
    """Where Twilio should report the delivery status of the texts we send."""
    base = config["PUBLIC_BASE_URL"] or req.host_url.rstrip("/")
    return base + "/twilio/status"


def _xml(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/xml")


@bp.post("/twilio/sms")
@twilio_signed
def inbound_sms(form: dict[str, list[str]], req: Request, config: Config):
    try:
        inbound = relay.parse_form(
            first_values(form),
            req.headers.get("I-Twilio-Idempotency-Token"),
            signature_valid=True if config["TWILIO_VALIDATE_SIGNATURE"] else None,
        )
    except relay.BadRequest as exc:
        log.warning("unusable inbound webhook: %s", exc)
        return _xml(twiml.EMPTY, 400)
    return _xml(relay.handle_inbound(inbound, utcnow(), status_base(req, config)))


@bp.post("/twilio/status")
@twilio_signed
def status_callback(form: dict[str, list[str]], req: Request, config: Config):
    relay.handle_status(req.args.get("ref"), first_values(form), utcnow())
    return _xml(twiml.EMPTY)


@bp.get("/healthz")
def healthz():
    try:
        db.session.execute(text("SELECT 1"))
        # COMMIT, not ROLLBACK, to end it: psycopg drops every statement it has
        # prepared on a connection when a transaction there rolls back, and a
        # monitor's checks would keep the relay's statements from staying prepared.
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("health check: the database does not answer")
        return {"status": "unavailable", "database": "unreachable"}, 503
    return {"status": "ok", "database": "ok"}


def register_errors(app) -> None:
    @app.errorhandler(SQLAlchemyError)
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
