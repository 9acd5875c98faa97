"""Recover texts whose webhook Twilio gave up on (SPEC §9 ``twilio reconcile``).

Twilio waits 15 seconds for the answer to a webhook and then only logs the
failure, so a text can be lost before ConsentLine ever sees it. This lists the
inbound messages Twilio has for each line (SMS and WhatsApp) through the REST
API, runs those the log lacks through the relay (``relay.handle_inbound``, in
the order they were sent, marked recovered), and sends the texts the relay
decided through the REST API: no webhook is left to carry its TwiML.

A text that could not be sent for a reason that may pass (network, 5xx, 429)
stays ``queued`` in the log, and the next run sends it; one Twilio refused
(4xx) is recorded as failed with Twilio's error code, as a status callback
would have recorded it.
"""

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from flask import current_app
from sqlalchemy import select
from twilio.base import values
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bot import phones, relay, twiml
from bot.database import read_only
from bot.extensions import db
from bot.models import Direction, Employee, Message, utcnow

log = logging.getLogger(__name__)

API = "https://api.twilio.com"
PAGE_SIZE = 100
TIMEOUT = 30  # seconds per REST request
# Without PUBLIC_BASE_URL the relay still needs a base for the TwiML it keeps;
# the REST sends then carry no status callback (Twilio could not reach it).
LOCAL_STATUS_BASE = "http://localhost/twilio/status"
_CHUNK = 500  # SIDs per IN (…) query


class ReconcileError(RuntimeError):
    """Reconciling cannot start (no credentials)."""


@dataclass
class LineReport:
    """What happened on one line (its SMS and WhatsApp addresses together)."""

    line: str
    listed: int = 0
    missing: int = 0
    recovered: int = 0
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors


@dataclass
class Report:
    lines: list[LineReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)


@dataclass(frozen=True)
class Outgoing:
    """One ``<Message>`` of a TwiML answer, with its defaults filled in."""

    to: str
    from_: str
    body: str
    media: tuple[str, ...]
    status_callback: str | None
    ref: str | None


def parse_since(text: str) -> datetime:
    """``YYYY-MM-DD`` as midnight UTC; ValueError otherwise."""
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def client(http_client=None) -> Client:
    """A REST client for the configured account (``http_client``: a test seam)."""
    sid = current_app.config.get("TWILIO_ACCOUNT_SID")
    token = current_app.config.get("TWILIO_AUTH_TOKEN")
    if not sid or not token:
        raise ReconcileError(
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required to call Twilio's REST API"
        )
    return Client(sid, token, http_client=http_client or TwilioHttpClient(timeout=TIMEOUT))


def status_base() -> str:
    base = current_app.config.get("PUBLIC_BASE_URL")
    return base + "/twilio/status" if base else LOCAL_STATUS_BASE


def run(since: datetime, http_client=None) -> Report:
    """Reconcile every active line from ``since`` on."""
    api = client(http_client)
    read_only()
    lines = sorted(
        set(db.session.execute(select(Employee.line).where(Employee.active.is_(True))).scalars())
    )
    db.session.rollback()
    report = Report()
    for line in lines:
        report.lines.append(reconcile_line(api, line, since))
    return report


def reconcile_line(api: Client, line: str, since: datetime) -> LineReport:
    """List a line's inbound texts, process those the log lacks, send their answers."""
    report = LineReport(line)
    try:
        records = sorted(_inbound(api, line, since), key=_sent_order)
    except (TwilioException, OSError) as exc:
        report.errors.append(f"listing the messages failed: {exc}")
        log.error("listing the messages of %s failed: %s", line, exc)
        return report
    report.listed = len(records)
    known = _known(record.sid for record in records)
    for record in records:
        stored = known.get(record.sid)
        if stored is not None:
            if stored.recovered:
                # Recovered by an earlier run that could not send everything.
                _deliver(api, stored, report)
            continue
        report.missing += 1
        try:
            inbound = _as_inbound(api, record)
        except (TwilioException, OSError) as exc:
            # Later texts wait for this one: processing them first would break the order.
            report.errors.append(f"reading the media of {record.sid} failed: {exc}")
            log.error("reading the media of %s failed: %s", record.sid, exc)
            return report
        except relay.BadRequest as exc:
            report.errors.append(f"{record.sid} cannot be processed: {exc}")
            continue
        relay.handle_inbound(inbound, utcnow(), status_base())
        message = _stored(inbound.sid)
        if not message.recovered:
            # A webhook for the same text got there first; Twilio delivered its answer.
            continue
        report.recovered += 1
        _deliver(api, message, report)
    return report


# -- listing -------------------------------------------------------------------


def _inbound(api: Client, line: str, since: datetime) -> Iterator:
    """Twilio's inbound messages to the line on both channels, every page."""
    for address in (line, phones.WHATSAPP + line):
        for record in api.messages.stream(to=address, date_sent_after=since, page_size=PAGE_SIZE):
            if record.direction == "inbound":
                yield record


def _sent_order(record) -> tuple[datetime, str]:
    when = record.date_sent or record.date_created
    return (when if isinstance(when, datetime) else datetime.min.replace(tzinfo=UTC), record.sid)


_STORED = (Message.twilio_sid, Message.recovered, Message.answer, Message.sender, Message.recipient)


def _known(sids: Iterable[str]) -> dict:
    """The texts of the log with these SIDs, by SID (rows of ``_STORED``)."""
    sids = list(sids)
    found = {}
    read_only()
    for start in range(0, len(sids), _CHUNK):
        chunk = sids[start : start + _CHUNK]
        found.update(
            (row.twilio_sid, row)
            for row in db.session.execute(select(*_STORED).where(Message.twilio_sid.in_(chunk)))
        )
    db.session.rollback()
    return found


def _stored(sid: str):
    read_only()
    row = db.session.execute(
        select(*_STORED).where(Message.twilio_sid == sid, Message.direction == Direction.INBOUND)
    ).one()
    db.session.rollback()
    return row


def _as_inbound(api: Client, record) -> relay.Inbound:
    """The REST record as the webhook would have described it (no signature: not a webhook)."""
    form = {
        "MessageSid": record.sid or "",
        "From": record.from_ or "",
        "To": record.to or "",
        "Body": record.body or "",
    }
    if int(record.num_media or 0) > 0:
        for n, media in enumerate(api.messages(record.sid).media.list()):
            form[f"MediaUrl{n}"] = API + (media.uri or "").removesuffix(".json")
            form[f"MediaContentType{n}"] = media.content_type or ""
    inbound = relay.parse_form(form, signature_valid=None)
    return replace(inbound, recovered=True)


# -- sending what the relay decided ------------------------------------------------


def outgoing(answer: str, sender: str, to: str) -> list[Outgoing]:
    """The texts of a TwiML answer to ``sender``'s text received at ``to``, in order."""
    texts = []
    for verb in ET.fromstring(answer):
        if verb.tag != "Message":
            continue
        body = verb.find("Body")
        callback = verb.get("statusCallback")
        refs = parse_qs(urlsplit(callback).query).get("ref") if callback else None
        texts.append(
            Outgoing(
                to=verb.get("to") or sender,
                from_=verb.get("from") or to,
                body=((body.text if body is not None else verb.text) or ""),
                media=tuple(m.text or "" for m in verb.findall("Media")),
                status_callback=callback,
                ref=refs[0] if refs else None,
            )
        )
    return texts


def _deliver(api: Client, inbound, report: LineReport) -> None:
    """Send the texts of the answer to ``inbound`` (a row of ``_STORED``) not gone out yet."""
    texts = outgoing(inbound.answer or twiml.EMPTY, inbound.sender, inbound.recipient)
    unsent = _unsent([t.ref for t in texts if t.ref])
    public = bool(current_app.config.get("PUBLIC_BASE_URL"))
    for text in texts:
        if text.ref not in unsent:
            continue
        try:
            created = api.messages.create(
                to=text.to,
                from_=text.from_,
                body=text.body or values.unset,
                media_url=list(text.media) or values.unset,
                status_callback=text.status_callback if public else values.unset,
            )
        except (TwilioException, OSError) as exc:
            report.failed += 1
            _failed(text, exc, report)
            continue
        report.sent += 1
        form = {"MessageSid": created.sid or "", "MessageStatus": created.status or ""}
        relay.handle_status(text.ref, form, utcnow(), signature_valid=None)


def _unsent(refs: list[str]) -> set[str]:
    """The refs of texts still queued: no SID from Twilio and no error recorded."""
    if not refs:
        return set()
    read_only()
    found = set(
        db.session.execute(
            select(Message.ref).where(
                Message.ref.in_(refs),
                Message.direction == Direction.OUTBOUND,
                Message.twilio_sid.is_(None),
                Message.status == relay.QUEUED,
                Message.error_code.is_(None),
            )
        ).scalars()
    )
    db.session.rollback()
    return found


def _failed(text: Outgoing, exc: Exception, report: LineReport) -> None:
    """Twilio refused (4xx): record the failure. Otherwise leave it queued for the next run."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    refused = isinstance(status, int) and 400 <= status < 500 and status != 429
    what = f"sending to {text.to} failed: {exc}"
    if refused:
        form = {"MessageStatus": "failed", "ErrorCode": str(code or status)}
        relay.handle_status(text.ref, form, utcnow(), signature_valid=None)
    else:
        what += " (left queued: the next run tries again)"
    report.errors.append(what)
    log.error("%s", what, extra={"ref": text.ref})
