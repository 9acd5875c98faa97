"""The relay: one webhook, one transaction (SPEC §5–§7, §10).

Find the line → lock the conversation → ask ``bot.consent`` → record the texts,
state and evidence → answer with TwiML. Every rule about consent lives in
``bot.consent``; this module only carries its decisions out.
"""

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from bot import consent, employees, evidence, keywords, phones, texts, twiml
from bot import settings as org_settings
from bot.consent import Channel, Role
from bot.extensions import db
from bot.models import (
    GENESIS,
    Conversation,
    Direction,
    Disposition,
    Employee,
    Message,
    RecordKind,
    new_ref,
)

log = logging.getLogger(__name__)

MAX_MEDIA = 10
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
MAX_ADDRESS = 255
QUEUED = "queued"
RECEIVED = "received"


@dataclass(frozen=True)
class Inbound:
    """An inbound text as Twilio described it (webhook form or REST record)."""

    sid: str
    sender: str
    to: str
    body: str = ""
    media: tuple[tuple[str, str], ...] = ()
    opt_out_type: str | None = None
    idempotency_token: str | None = None
    signature_valid: bool | None = True
    recovered: bool = False

    @property
    def channel(self) -> Channel:
        return phones.channel_of(self.to)

    @property
    def media_json(self) -> str:
        return json.dumps([{"url": u, "content_type": t} for u, t in self.media])


class BadRequest(ValueError):
    """A webhook that cannot be routed at all (no sender or no line)."""


# Characters XML 1.0 cannot carry (C0 controls but tab, newline and return;
# lone surrogates; U+FFFE/U+FFFF). TwiML with one of them does not parse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(value: str | None) -> str:
    """Text as stored: NUL characters cannot be kept by every database."""
    return (value or "").replace("\x00", "")


def sendable(text: str) -> str:
    """Text as it can go out in TwiML (and is recorded as sent)."""
    return _NOT_XML.sub("", text)


def parse_form(
    form: Mapping[str, str],
    idempotency_token: str | None = None,
    signature_valid: bool | None = True,
) -> Inbound:
    """Read Twilio's webhook parameters, tolerating missing or malformed ones."""
    sender = sendable(_clean(form.get("From"))).strip()
    to = sendable(_clean(form.get("To"))).strip()
    if not sender or not to:
        raise BadRequest("From and To are required")
    if len(sender) > MAX_ADDRESS or len(to) > MAX_ADDRESS:
        raise BadRequest("From or To is too long to be an address")
    sid = _clean(form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")).strip()
    if not MESSAGE_SID.fullmatch(sid):
        # Twilio's ids are SM/MM and 32 hex digits. Anything else is not from
        # Twilio: a genuine request re-cut to keep its signature but lose its id
        # would otherwise be taken for a new text.
        raise BadRequest("MessageSid is missing or malformed")
    media = []
    for n in range(MAX_MEDIA):
        url = sendable(_clean(form.get(f"MediaUrl{n}"))).strip()
        if url:
            media.append((url, _clean(form.get(f"MediaContentType{n}")).strip()))
    token = _clean(idempotency_token)[:255] or None
    return Inbound(
        sid=sid,
        sender=sender,
        to=to,
        body=_clean(form.get("Body")),
        media=tuple(media),
        opt_out_type=_clean(form.get("OptOutType")).strip() or None,
        idempotency_token=token,
        signature_valid=signature_valid,
    )


@dataclass
class _Turn:
    """Everything one webhook needs to carry a decision out."""

    inbound: Inbound | None
    now: datetime
    settings: org_settings.Settings | None
    employee: Employee | None
    conv: Conversation
    message: Message | None = None
    outgoing: list[Message] = field(default_factory=list)

    def values(self, body: str = "") -> dict[str, str]:
        return {
            "employee_name": self.employee.name if self.employee else "",
            "company_name": self.settings.company_name,
            "contact": self.conv.display(),
            "body": body,
        }


# -- the entry points ----------------------------------------------------------


def handle_inbound(inbound: Inbound, now: datetime, status_base: str) -> str:
    """Process one inbound text in one transaction; return (and keep) its TwiML.

    A repeated MessageSid is recognised once the conversation is locked, so a
    copy arriving at the same moment waits for the first and answers as it did.
    Nothing is flushed before the commit: the rows go out in one batch per table.
    """
    try:
        with db.session.no_autoflush:
            answer = _route(inbound, now, status_base)
        db.session.commit()
    except IntegrityError:
        # A concurrent copy of this webhook committed first: answer as it did.
        db.session.rollback()
        stored = _stored_answer(inbound.sid)
        if stored is None:
            raise
        db.session.rollback()
        return stored
    return answer


STATUS_RANK = {
    "accepted": 1,
    "scheduled": 1,
    "queued": 2,
    "sending": 3,
    "sent": 4,
    "delivered": 5,
    "undelivered": 5,
    "failed": 5,
    "canceled": 5,
    "partially_delivered": 5,
    "read": 6,
}
CARRIER_OPT_OUT = "21610"


def handle_status(
    ref: str | None, form: Mapping[str, str], now: datetime, signature_valid: bool | None = True
) -> bool:
    """Apply a status callback; the status only moves forward. True if it was ours."""
    sid = _clean(form.get("MessageSid") or form.get("SmsSid")).strip()[:64] or None
    status = _clean(form.get("MessageStatus") or form.get("SmsStatus")).strip().lower()[:24]
    error = _clean(form.get("ErrorCode")).strip()[:16] or None
    query = select(Message.id, Message.conversation_id).where(
        Message.direction == Direction.OUTBOUND
    )
    if ref:
        query = query.where(Message.ref == ref)
    elif sid:
        query = query.where(Message.twilio_sid == sid)
    else:
        return False
    found = db.session.execute(query).first()
    if found is None:
        db.session.rollback()
        log.warning("status callback for an unknown message", extra={"ref": ref, "sid": sid})
        return False
    conv = _lock_by_id(found.conversation_id)
    message = db.session.get(Message, found.id, populate_existing=True)
    if sid and message.twilio_sid is None:
        taken = db.session.execute(select(Message.id).where(Message.twilio_sid == sid)).first()
        if taken is None:
            message.twilio_sid = sid
        else:
            log.warning("status callback names a SID another message has", extra={"sid": sid})
    changed = STATUS_RANK.get(status, 0) > STATUS_RANK.get(message.status, 0)
    if changed:
        message.status = status
        message.error_code = error or message.error_code
        evidence.append(
            conv,
            created_at=now,
            kind=RecordKind.STATUS,
            message_ref=message.ref,
            direction=Direction.OUTBOUND,
            sender=message.sender,
            recipient=message.recipient,
            twilio_sid=sid,
            status=status,
            error_code=error,
            signature_valid=signature_valid,
        )
    if changed and error == CARRIER_OPT_OUT and message.recipient == conv.contact:
        _opt_out_elsewhere(conv, now, method="twilio_error_21610", cause=message)
    db.session.commit()
    return True


def _opt_out_elsewhere(conv: Conversation, now: datetime, method: str, **details) -> bool:
    decision = consent.opt_out_elsewhere(conv.facts)
    employee = employees.active_by_line(conv.line)
    mode = None
    if employee is not None:
        settings = org_settings.current()
        mode = consent.Policy(
            employee.effective_mode(settings.default_mode), phones.channel_of(conv.contact)
        ).effective_mode
    _apply(_Turn(None, now, None, employee, conv), decision, mode=mode, method=method, **details)
    return bool(decision.events)


def record_opt_out(conversation_id: int, admin: str, method: str, note: str, now: datetime) -> bool:
    """An admin records an opt-out received another way; it takes effect at once."""
    conv = _lock_by_id(conversation_id)
    changed = _opt_out_elsewhere(conv, now, method=method, admin=admin, note=note or None)
    db.session.commit()
    return changed


def review_hint(
    message_id: int, admin: str, opted_out: bool, reason: str, method: str, now: datetime
) -> bool:
    """Close a revocation hint: record the opt-out it asked for, or dismiss it with a reason."""
    found = db.session.get(Message, message_id)
    if found is None or not found.hint:
        return False
    conv = _lock_by_id(found.conversation_id)
    message = db.session.get(Message, message_id, populate_existing=True)
    if message.review is not None:
        db.session.rollback()
        return False
    message.review = "opted_out" if opted_out else "dismissed"
    evidence.append(
        conv,
        created_at=now,
        kind=RecordKind.REVIEW,
        message_ref=message.ref,
        direction=Direction.INBOUND,
        twilio_sid=message.twilio_sid,
        body=message.body,
        admin=admin,
        status=message.review,
        note=reason or None,
    )
    if opted_out:
        _opt_out_elsewhere(
            conv, now, method=method, cause=message, admin=admin, note=reason or None
        )
    db.session.commit()
    return True


# -- routing -------------------------------------------------------------------


def _stored_answer(sid: str) -> str | None:
    return db.session.execute(
        select(Message.answer).where(
            Message.twilio_sid == sid, Message.direction == Direction.INBOUND
        )
    ).scalar_one_or_none()


def _route(inbound: Inbound, now: datetime, status_base: str) -> str:
    employee = employees.active_by_line(phones.bare(inbound.to))
    if employee is None:
        return _unrouted(inbound, now)
    if phones.bare(inbound.sender) == employee.cell:
        return _from_employee(inbound, employee, now, status_base)
    return _from_contact(inbound, employee, now, status_base)


def _unrouted(inbound: Inbound, now: datetime) -> str:
    """A ``To`` that is no active line: keep the text, answer nothing."""
    log.warning("text to a number that is no line", extra={"to": inbound.to, "sid": inbound.sid})
    conv = _lock(phones.bare(inbound.to), inbound.sender, now)
    if (stored := _stored_answer(inbound.sid)) is not None:
        return stored
    turn = _Turn(inbound, now, org_settings.current(), None, conv)
    _record_inbound(turn, Role.CONTACT, Disposition.UNROUTED)
    decision = consent.unrouted(conv.facts, keywords.classify(inbound.body, inbound.opt_out_type))
    _apply(turn, decision, mode=None, method="sms to an inactive line")
    turn.message.answer = twiml.EMPTY
    return twiml.EMPTY


def _from_contact(inbound: Inbound, employee: Employee, now: datetime, status_base: str) -> str:
    conv = _lock(employee.line, inbound.sender, now)
    if (stored := _stored_answer(inbound.sid)) is not None:
        return stored
    turn = _Turn(inbound, now, org_settings.current(), employee, conv)
    policy = _policy(turn)
    classified = keywords.classify(inbound.body, inbound.opt_out_type)
    decision = consent.decide(conv.facts, policy, Role.CONTACT, classified, now)
    _record_inbound(turn, Role.CONTACT, _disposition(decision), hint=classified.hint)
    conv.addressed_at = now
    _apply(turn, decision, mode=policy.effective_mode)
    return _answer(turn, status_base)


def _from_employee(inbound: Inbound, employee: Employee, now: datetime, status_base: str) -> str:
    # One employee text at a time: who "the current contact" is must not race.
    _lock_employee(employee)
    settings = org_settings.current()
    region = current_app.config["DEFAULT_REGION"]
    if inbound.body.strip().lower() == "#help":
        return _control(inbound, employee, settings, now, status_base, texts.USAGE)
    if not inbound.body.strip() and not inbound.media:
        return _control(inbound, employee, settings, now, status_base, texts.EMPTY)
    try:
        addressed = phones.leading_address(inbound.body, region)
    except phones.InvalidNumber as exc:
        reply = texts.BAD_NUMBER.format(error=str(exc))
        return _control(inbound, employee, settings, now, status_base, reply)
    if addressed.address is None:
        conv = _current_contact(employee)
        if conv is None:
            return _control(inbound, employee, settings, now, status_base, texts.USAGE)
    elif phones.bare(addressed.address) in (employee.line, employee.cell):
        return _control(inbound, employee, settings, now, status_base, texts.NOT_A_CONTACT)
    else:
        conv = _lock(employee.line, addressed.address, now)
    if (stored := _stored_answer(inbound.sid)) is not None:
        return stored
    conv.addressed_at = now
    turn = _Turn(inbound, now, settings, employee, conv)
    if addressed.address is not None and not sendable(addressed.body) and not inbound.media:
        # A bare number: switch the current contact and confirm.
        _record_inbound(turn, Role.EMPLOYEE, Disposition.ANSWERED)
        reply = texts.render(texts.SWITCHED, {"contact": phones.readable(conv.contact)})
        _send(turn, Role.EMPLOYEE, reply, text_key=None)
        return _answer(turn, status_base)
    policy = _policy(turn)
    decision = consent.decide(conv.facts, policy, Role.EMPLOYEE, keywords.TEXT, now)
    relay_body = addressed.body if addressed.address is not None else None
    _record_inbound(turn, Role.EMPLOYEE, _disposition(decision), relay_body=relay_body)
    _apply(turn, decision, mode=policy.effective_mode)
    return _answer(turn, status_base)


def _control(inbound, employee, settings, now, status_base, reply: str) -> str:
    """Answer the employee about addressing; kept on the line's own conversation."""
    conv = _lock(employee.line, inbound.sender, now)
    if (stored := _stored_answer(inbound.sid)) is not None:
        return stored
    turn = _Turn(inbound, now, settings, employee, conv)
    _record_inbound(turn, Role.EMPLOYEE, Disposition.ANSWERED)
    _send(turn, Role.EMPLOYEE, reply, text_key=None)
    return _answer(turn, status_base)


def _policy(turn: _Turn) -> consent.Policy:
    mode = turn.employee.effective_mode(turn.settings.default_mode)
    return consent.Policy(
        mode=mode,
        channel=phones.channel_of(turn.conv.contact),
        stop_filtering=current_app.config["TWILIO_STOP_FILTERING"],
    )


def _disposition(decision: consent.Decision) -> Disposition:
    return Disposition(decision.disposition.value)


# -- conversations and their locks --------------------------------------------


def _lock(line: str, contact: str, now: datetime) -> Conversation:
    """The conversation, created if new, locked until the transaction ends.

    Postgres: a row lock (SELECT … FOR UPDATE). SQLite: the whole database is
    already locked by BEGIN IMMEDIATE (see ``configure_sqlite``).
    """
    query = (
        select(Conversation)
        .where(Conversation.line == line, Conversation.contact == contact)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    conv = db.session.execute(query).scalar_one_or_none()
    if conv is not None:
        return conv
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    db.session.execute(
        dialect.insert(Conversation)
        .values(
            line=line,
            contact=contact,
            state=consent.State.NEW,
            chain_head=GENESIS,
            chain_length=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["line", "contact"])
    )
    return db.session.execute(query).scalar_one()


def _lock_employee(employee: Employee) -> None:
    """Postgres: hold the employee's row until commit (SQLite is locked whole already)."""
    db.session.execute(
        select(Employee.id).where(Employee.id == employee.id).with_for_update()
    ).first()


def _lock_by_id(conversation_id: int) -> Conversation:
    return db.session.execute(
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def _current_contact(employee: Employee) -> Conversation | None:
    """The contact that last texted the line or that the employee last addressed."""
    found = db.session.execute(
        select(Conversation.contact)
        .where(
            Conversation.line == employee.line,
            Conversation.addressed_at.is_not(None),
            Conversation.contact != employee.cell,
        )
        .order_by(Conversation.addressed_at.desc(), Conversation.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if found is None else _lock(employee.line, found, None)


# -- carrying a decision out ---------------------------------------------------


_MESSAGE_DEFAULTS = {
    "author": None,
    "relay_body": None,
    "twilio_sid": None,
    "idempotency_token": None,
    "error_code": None,
    "disposition": None,
    "text_key": None,
    "source_ref": None,
    "hint": False,
    "recovered": False,
    "signature_valid": None,
    "answer": None,
    "review": None,
}


def _new_message(**fields) -> Message:
    """A message row with every column set, so a turn's rows insert in one batch."""
    fields.setdefault("updated_at", fields["created_at"])
    message = Message(ref=new_ref(), **(_MESSAGE_DEFAULTS | fields))
    db.session.add(message)
    return message


def _record_inbound(
    turn: _Turn,
    author: Role,
    disposition: Disposition,
    hint: bool = False,
    relay_body: str | None = None,
) -> None:
    inbound = turn.inbound
    message = _new_message(
        conversation_id=turn.conv.id,
        direction=Direction.INBOUND,
        author=author,
        sender=inbound.sender,
        recipient=inbound.to,
        body=inbound.body,
        relay_body=relay_body,
        media_json=inbound.media_json,
        twilio_sid=inbound.sid,
        idempotency_token=inbound.idempotency_token,
        status=RECEIVED,
        disposition=disposition,
        hint=hint,
        recovered=inbound.recovered,
        signature_valid=inbound.signature_valid,
        created_at=turn.now,
    )
    turn.message = message
    evidence.append(
        turn.conv,
        created_at=turn.now,
        kind=RecordKind.MESSAGE,
        message_ref=message.ref,
        direction=Direction.INBOUND,
        sender=inbound.sender,
        recipient=inbound.to,
        body=inbound.body,
        media_json=message.media_json,
        twilio_sid=inbound.sid,
        status=RECEIVED,
        signature_valid=inbound.signature_valid,
        note=disposition.value + (" (recovered)" if inbound.recovered else ""),
    )


def _apply(
    turn: _Turn,
    decision: consent.Decision,
    mode: consent.Mode | None,
    method: str = "sms",
    cause: Message | None = None,
    admin: str | None = None,
    note: str | None = None,
) -> None:
    """Carry out a decision: state, consent events, then texts, releases and discards.

    The consent events go into the evidence ahead of the texts they cause, so a
    reader of the chain sees why each text went out.
    """
    conv = turn.conv
    after = decision.after
    conv.state, conv.initiator = after.state, after.initiator
    conv.last_request_at, conv.twilio_opt_out = after.last_request_at, after.twilio_opt_out
    cause = cause or turn.message
    shown = {
        step.key: sendable(texts.render(turn.settings.text(step.key), turn.values()))
        for step in decision.steps
        if isinstance(step, consent.Text) and step.to is Role.CONTACT
    }
    for event in decision.events:
        evidence.append(
            conv,
            created_at=turn.now,
            kind=RecordKind.CONSENT,
            event=event,
            mode=mode,
            state=after.state,
            shown_text=_shown(event, shown),
            cause_sid=cause.twilio_sid if cause else None,
            cause_body=cause.body if cause else None,
            signature_valid=cause.signature_valid if cause else None,
            method=method,
            admin=admin,
            note=note,
        )
    for step in decision.steps:
        if isinstance(step, consent.Text):
            template = turn.settings.text(step.key)
            _send(turn, step.to, texts.render(template, turn.values()), text_key=step.key)
        elif isinstance(step, consent.Relay):
            _relay(turn, turn.message)
        elif isinstance(step, consent.Release):
            for held in _held(turn):
                _relay(turn, held)
                _dispose(turn, held, Disposition.RELEASED)
    if decision.discard_held:
        for held in _held(turn):
            _dispose(turn, held, Disposition.DISCARDED)


_SHOWN_KEYS = {
    consent.Event.REQUEST_SENT: lambda k: k.startswith("consent.") and k.count(".") == 2,
    consent.Event.DISCLAIMER_SENT: lambda k: k.startswith("disclaimer."),
    consent.Event.OPTED_IN: lambda k: ".opted_in." in k,
    consent.Event.OPTED_OUT: lambda k: k.startswith("opt_out."),
}


def _shown(event: consent.Event, shown: dict[str, str]) -> str | None:
    """The exact text the contact was shown with this event, if any."""
    wanted = _SHOWN_KEYS.get(event)
    if wanted is None:
        return None
    return next((text for key, text in shown.items() if wanted(key)), None)


def _held(turn: _Turn) -> list[Message]:
    current = turn.message.id if turn.message is not None else None
    rows = db.session.execute(
        select(Message)
        .where(
            Message.conversation_id == turn.conv.id,
            Message.disposition == Disposition.HELD,
            Message.direction == Direction.INBOUND,
        )
        .order_by(Message.id)
    ).scalars()
    return [m for m in rows if m is not turn.message and m.id != current]


def _dispose(turn: _Turn, held: Message, disposition: Disposition) -> None:
    held.disposition = disposition
    evidence.append(
        turn.conv,
        created_at=turn.now,
        kind=RecordKind.DISPOSITION,
        message_ref=held.ref,
        direction=Direction.INBOUND,
        twilio_sid=held.twilio_sid,
        note=disposition.value,
    )


def _relay(turn: _Turn, source: Message) -> None:
    """Deliver a text to the other side of the conversation."""
    if source.author is Role.CONTACT:
        template = turn.settings.text("relay.to_employee")
        values = turn.values(source.body)
        mark = texts.HINT_MARK if source.hint else ""
        if template.endswith("{body}"):
            prefix = texts.render(template[: -len("{body}")], values)
            parts = texts.split(source.body + mark, prefix)
        else:
            parts = texts.split(texts.render(template, values) + mark)
        _send(turn, Role.EMPLOYEE, parts, text_key=None, media=source.media_json, source=source)
    else:
        body = source.relay_body if source.relay_body is not None else source.body
        _send(
            turn,
            Role.CONTACT,
            texts.split(body),
            text_key=None,
            media=source.media_json,
            source=source,
        )


def _send(
    turn: _Turn,
    to: Role,
    body: str | list[str],
    text_key: str | None,
    media: str = "[]",
    source: Message | None = None,
) -> None:
    """Queue a text (in parts of at most 1600 characters) and record it."""
    conv = turn.conv
    line = turn.employee.line if turn.employee else phones.bare(conv.line)
    if to is Role.CONTACT:
        recipient = conv.contact
        sender = phones.on_channel(line, phones.channel_of(conv.contact))
    else:
        recipient = turn.employee.cell
        sender = line
    parts = texts.split(sendable(body)) if isinstance(body, str) else [sendable(p) for p in body]
    for number, part in enumerate(parts):
        message = _new_message(
            conversation_id=conv.id,
            direction=Direction.OUTBOUND,
            author=source.author if source else None,
            sender=sender,
            recipient=recipient,
            body=part,
            media_json=media if number == 0 else "[]",
            status=QUEUED,
            text_key=text_key,
            source_ref=source.ref if source else None,
            created_at=turn.now,
        )
        turn.outgoing.append(message)
        evidence.append(
            conv,
            created_at=turn.now,
            kind=RecordKind.MESSAGE,
            message_ref=message.ref,
            direction=Direction.OUTBOUND,
            sender=sender,
            recipient=recipient,
            body=part,
            media_json=message.media_json,
            status=QUEUED,
            note=text_key or ("relay of " + source.ref if source else None),
        )


def _answer(turn: _Turn, status_base: str) -> str:
    answer = twiml.render(turn.outgoing, turn.inbound.sender, turn.inbound.channel, status_base)
    turn.message.answer = answer
    return answer
