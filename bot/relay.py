"""The relay: a text in, the consent gate's decision carried out, in one transaction.

``handle_inbound`` is the whole of a webhook's work (SPEC §5–§7, §10): read the
line → lock the conversation → ask ``bot.consent`` → build the texts, state and
evidence → render the TwiML → write it all. Every rule about consent lives in
``bot.consent``; this module only finds the facts it needs and carries its
decisions out. Status callbacks and the portal's opt-outs go the same way.
"""

import contextlib
import functools
import json
import logging
import re
from collections import namedtuple
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app
from sqlalchemy import Connection, bindparam, insert, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from bot import consent, evidence, keywords, phones, texts, twiml, writer_lock
from bot import settings as org_settings
from bot.consent import Disposition, Role
from bot.extensions import db
from bot.models import (
    GENESIS,
    Attestation,
    Conversation,
    Direction,
    Employee,
    Message,
    RecordKind,
    Setting,
    new_ref,
)

log = logging.getLogger(__name__)

MAX_MEDIA = 10
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
MAX_ADDRESS = 255
QUEUED = "queued"
RECEIVED = "received"

conversations = Conversation.__table__
messages = Message.__table__
employees = Employee.__table__
attestations = Attestation.__table__
settings = Setting.__table__


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

    @functools.cached_property
    def media_json(self) -> str:
        return json.dumps([{"url": u, "content_type": t} for u, t in self.media])


class BadRequest(ValueError):
    """A webhook that cannot be routed at all (no sender, no line, no MessageSid)."""


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
    return Inbound(
        sid=sid,
        sender=sender,
        to=to,
        body=_clean(form.get("Body")),
        media=tuple(media),
        opt_out_type=_clean(form.get("OptOutType")).strip() or None,
        idempotency_token=_clean(idempotency_token)[:255] or None,
        signature_valid=signature_valid,
    )


# -- the webhook ----------------------------------------------------------------


def handle_inbound(inbound: Inbound, now: datetime, status_url: str) -> str:
    """Process one inbound text (its signature verified) in one transaction; its TwiML.

    A repeated MessageSid (Twilio retrying a text it thinks was lost) fails on
    the unique index of ``messages.twilio_sid`` when its turn is written: the
    transaction is rolled back, so nothing changes, and the answer the first
    copy kept is returned.
    """
    try:
        with transaction() as conn:
            turn = lock(conn, inbound, now)  # the line read, the conversation locked
            decision = decide(turn)  # bot.consent
            turn.carry_out(decision)  # persist: the texts, state and evidence it makes
            # Rendered before the commit: the answer is kept with the inbound text,
            # so a repeated MessageSid gets it back without being decided again.
            answer = twiml.render(turn.outgoing, inbound.sender, inbound.to, status_url)
            turn.save(answer)  # one INSERT per table, one UPDATE of the conversation
        return answer
    except IntegrityError:
        with transaction() as conn:
            kept = conn.execute(_KEPT_ANSWER, {"sid": inbound.sid}).scalar()
        if kept is None:
            raise
        return kept


# The answer kept for an inbound text: what a repeat of its MessageSid gets.
_KEPT_ANSWER = select(messages.c.answer).where(
    messages.c.twilio_sid == bindparam("sid"), messages.c.direction == Direction.INBOUND
)


@contextlib.contextmanager
def transaction() -> Iterator[Connection]:
    """A transaction of its own, committed when the block ends, rolled back on an error.

    A caller whose session has one open already (``twilio reconcile`` reading and
    then handing texts over) shares it: on SQLite a second one would wait for it.
    """
    session = db.session
    if not session().in_transaction():
        busy = current_app.config["DATABASE_BUSY_TIMEOUT"]
        # The pool's connection first: SQLite's writer lock covers the transaction only.
        with db.engine.connect() as conn, writer_lock.held(db.engine, busy), conn.begin():
            yield conn
        return
    try:
        yield session.connection()
        session.commit()
    except BaseException:
        session.rollback()
        raise


# -- reading the line ------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A number texts arrive at: its active employee (None: no active line), the settings."""

    number: str
    employee: "LineEmployee | None"
    settings: org_settings.Settings | None

    def policy(self, contact: str) -> consent.Policy:
        own = self.employee.mode if self.employee is not None else None
        return consent.Policy(
            mode=consent.line_mode(own, self.settings.default_mode),
            channel=phones.channel_of(contact),
            stop_filtering=current_app.config["TWILIO_STOP_FILTERING"],
        )


LineEmployee = namedtuple("LineEmployee", "id name cell line mode")
_EMPLOYEE_COLUMNS = [employees.c[name] for name in LineEmployee._fields]
# The line's active employee, once for each saved setting (once, with NULLs, if none is
# saved): who owns the line and the settings in force, in one statement.
_LINE = (
    select(*_EMPLOYEE_COLUMNS, settings.c.key, settings.c.value)
    .outerjoin(settings, true())
    .where(employees.c.line == bindparam("line"), employees.c.active.is_(True))
)


def read_line(conn: Connection, number: str) -> Line:
    """The line's active employee and the settings in force, as of this transaction.

    A number that is no active line has no employee, and needs no settings: nothing
    is sent from it.
    """
    rows = conn.execute(_LINE, {"line": number}).all()
    if not rows:
        return Line(number, None, None)
    saved = {row.key: row.value for row in rows if row.key is not None}
    employee = LineEmployee(*rows[0][: len(_EMPLOYEE_COLUMNS)])
    return Line(number, employee, org_settings.from_saved(saved))


# -- locking the conversation ---------------------------------------------------------


@dataclass(slots=True)
class Conv:
    """A locked conversation as the turn changes it; written back in one UPDATE."""

    id: int
    line: str
    contact: str
    contact_name: str | None
    state: consent.State
    initiator: Role | None
    last_request_at: datetime | None
    twilio_opt_out: bool
    addressed_at: datetime | None
    chain_head: str
    chain_length: int

    @property
    def facts(self) -> consent.Conversation:
        return consent.Conversation(
            self.state, self.initiator, self.last_request_at, self.twilio_opt_out
        )


_CONV_COLUMNS = [conversations.c[name] for name in Conv.__slots__]
_LOCK = (
    select(*_CONV_COLUMNS)
    .where(
        conversations.c.line == bindparam("line"), conversations.c.contact == bindparam("contact")
    )
    .with_for_update()
)
_LOCK_BY_ID = select(*_CONV_COLUMNS).where(conversations.c.id == bindparam("id")).with_for_update()
# A new conversation, returned unless a concurrent webhook has just added it.
_INSERT_IF_MISSING = {
    name: dialect.insert(conversations)
    .on_conflict_do_nothing(index_elements=["line", "contact"])
    .returning(*_CONV_COLUMNS)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def lock_conversation(conn: Connection, line: str, contact: str, now: datetime) -> Conv:
    """The conversation (line, contact), created if new, locked until the transaction ends.

    Postgres: ``SELECT … FOR UPDATE``; a conversation not there yet is inserted
    first (``ON CONFLICT DO NOTHING``: two webhooks creating it at once both go
    on, the second waiting for the first's row lock). SQLite: ``BEGIN
    IMMEDIATE`` already holds the database's write lock (``bot.database``).
    """
    key = {"line": line, "contact": contact}
    row = conn.execute(_LOCK, key).first()
    if row is None:
        new = {"state": consent.State.NEW, "twilio_opt_out": False, "chain_head": GENESIS}
        new |= {"chain_length": 0, "created_at": now, "updated_at": now}
        row = conn.execute(_INSERT_IF_MISSING[conn.dialect.name], key | new).first()
    if row is None:  # added meanwhile: wait for its webhook's lock
        row = conn.execute(_LOCK, key).one()
    return Conv(*row)


def _lock_by_id(conn: Connection, conversation_id: int) -> Conv:
    return Conv(*conn.execute(_LOCK_BY_ID, {"id": conversation_id}).one())


_LOCK_EMPLOYEE = select(employees.c.id).where(employees.c.id == bindparam("id")).with_for_update()
# The line's current contact: the one that last texted it or that the employee last addressed.
_CURRENT_CONTACT = (
    select(conversations.c.contact)
    .where(
        conversations.c.line == bindparam("line"),
        conversations.c.addressed_at.is_not(None),
        conversations.c.contact != bindparam("cell"),
    )
    .order_by(conversations.c.addressed_at.desc(), conversations.c.id.desc())
    .limit(1)
)


def lock(conn: Connection, inbound: Inbound, now: datetime) -> "Turn":
    """The turn of the text: its line, the conversation it belongs to (locked), its author.

    A contact's text belongs to (line, contact). An employee's text goes where
    ``consent.route_employee_text`` sends it; their texts take the employee's
    row lock first (on Postgres; SQLite's write lock covers it), so that who the
    current contact is cannot change under one of them. A reply about
    addressing is kept on the line's conversation with the employee's own cell.
    """
    line = read_line(conn, phones.bare(inbound.to))
    employee = line.employee
    if employee is None or phones.bare(inbound.sender) != employee.cell:
        conv = lock_conversation(conn, line.number, inbound.sender, now)
        classified = keywords.classify(inbound.body, inbound.opt_out_type)
        if employee is not None:
            conv.addressed_at = now
        method = "sms" if employee else "sms to an inactive line"
        return Turn(conn, now, line, conv, inbound, Role.CONTACT, classified, method=method)
    if conn.dialect.name == "postgresql":  # SQLite's write lock is held already
        conn.execute(_LOCK_EMPLOYEE, {"id": employee.id})
    text = employee_text(inbound)
    current = None
    if text.named is None:  # the current contact matters only to a text that names none
        where = {"line": employee.line, "cell": employee.cell}
        current = conn.execute(_CURRENT_CONTACT, where).scalar()
    route = consent.route_employee_text(text, (employee.line, employee.cell), current)
    conv = lock_conversation(conn, employee.line, route.contact or inbound.sender, now)
    if route.contact is not None:
        conv.addressed_at = now
    return Turn(conn, now, line, conv, inbound, Role.EMPLOYEE, keywords.TEXT, route)


def employee_text(inbound: Inbound) -> consent.EmployeeText:
    """An employee's text read for addressing: a leading number, and what follows it."""
    body, media = inbound.body, bool(inbound.media)
    try:
        addressed = phones.leading_address(body, current_app.config["DEFAULT_REGION"])
    except phones.InvalidNumber as exc:
        return consent.EmployeeText(body, media, invalid=str(exc))
    if addressed.address is None:
        return consent.EmployeeText(body, media)
    number = phones.bare(addressed.address)
    rest = sendable(addressed.body)
    return consent.EmployeeText(body, media, addressed.address, number, rest)


def decide(turn: "Turn") -> consent.Decision:
    """``bot.consent``'s decision about the turn's text."""
    conv = turn.conv.facts
    if turn.line.employee is None:
        return consent.unrouted(conv, turn.classified)
    if turn.route is not None and turn.route.reply is not None:
        return consent.answer_employee(conv, turn.route.reply)
    policy = turn.line.policy(turn.conv.contact)
    return consent.decide(conv, policy, turn.author, turn.classified, turn.now)


# -- carrying a decision out -----------------------------------------------------------


# The columns of a text that its evidence entry keeps too, as they are in its row.
_EVIDENCE_OF_A_TEXT = ("direction", "sender", "recipient", "body", "media_json", "twilio_sid")
_EVIDENCE_OF_A_TEXT += ("status", "signature_valid")
# A ``messages`` row with every column set, so a turn's rows go in one INSERT.
_MESSAGE = dict.fromkeys((c.key for c in messages.c if c.key != "id"), None) | {
    "hint": False,
    "recovered": False,
    "media_json": "[]",
    "body": "",
}


@dataclass
class Turn:
    """One transaction's work on one conversation: the rows it writes, in order."""

    conn: Connection
    now: datetime
    line: Line | None
    conv: Conv
    inbound: Inbound | None = None
    author: Role | None = None
    classified: keywords.Classification = keywords.TEXT
    route: consent.Route | None = None
    method: str = "sms"
    message: dict | None = None  # the inbound text's row
    outgoing: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    disposed: dict[Disposition, list[int]] = field(default_factory=dict)

    @property
    def mode(self) -> consent.Mode | None:
        """The mode in force for this conversation (recorded with its consent events)."""
        if self.line is None or self.line.employee is None:
            return None
        return self.line.policy(self.conv.contact).effective_mode

    def values(self, body: str = "") -> dict[str, str]:
        """The placeholders' values of a text (SPEC §3)."""
        return {
            "employee_name": self.line.employee.name,
            "company_name": self.line.settings.company_name,
            "contact": self.conv.contact_name or self.conv.contact,
            "body": body,
        }

    def record(self, **fields) -> None:
        """Add an entry to the conversation's evidence chain."""
        self.entries.append(evidence.entry(self.conv, created_at=self.now, **fields))

    def _text(self, note: str | None, **fields) -> dict:
        """A text in or out: its ``messages`` row, and its evidence entry (with ``note``)."""
        row = _MESSAGE | fields
        row |= {"ref": new_ref(), "conversation_id": self.conv.id, "line": self.conv.line}
        row |= {"created_at": self.now, "updated_at": self.now}
        self.messages.append(row)
        as_sent = {name: row[name] for name in _EVIDENCE_OF_A_TEXT}
        self.record(kind=RecordKind.MESSAGE, message_ref=row["ref"], note=note, **as_sent)
        return row

    def receive(self, disposition: Disposition) -> None:
        """Record the inbound text and what becomes of it."""
        inbound = self.inbound
        relay_body = self.route.body if self.route else None
        # A revocation hint is flagged for the employee's copy and the portal's review.
        hint = self.classified.hint and self.line.employee is not None
        note = disposition.value + (" (recovered)" if inbound.recovered else "")
        self.message = self._text(
            note,
            direction=Direction.INBOUND,
            author=self.author,
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
        )

    def carry_out(
        self,
        decision: consent.Decision,
        method: str | None = None,
        cause: dict | None = None,
        admin: str | None = None,
        note: str | None = None,
    ) -> None:
        """The decision's rows: the inbound text, state, consent events, then texts,
        releases and discards.

        The consent events go into the evidence ahead of the texts they cause, so a
        reader of the chain sees why each text went out.
        """
        if self.inbound is not None:
            self.receive(decision.disposition)
        conv, after = self.conv, decision.after
        conv.state, conv.initiator = after.state, after.initiator
        conv.last_request_at, conv.twilio_opt_out = after.last_request_at, after.twilio_opt_out
        cause = cause or self.message
        for event in decision.events:
            self.record(
                kind=RecordKind.CONSENT,
                event=event.event,
                mode=self.mode,
                state=after.state,
                shown_text=self.render(event.shown) if event.shown else None,
                cause_sid=cause["twilio_sid"] if cause else None,
                cause_body=cause["body"] if cause else None,
                signature_valid=cause["signature_valid"] if cause else None,
                method=method or self.method,
                admin=admin,
                note=note,
            )
        for step in decision.steps:
            if isinstance(step, consent.Text):
                key = step.key if step.key in texts.DEFAULTS else None  # not a reply's
                self.send(step.to, self.render(step.key), text_key=key)
            elif isinstance(step, consent.Relay):
                self.relay(self.message)
            elif isinstance(step, consent.Release):
                for held in self.held():
                    self.relay(held)
                    self.dispose(held, Disposition.RELEASED)
        if decision.discard_held:
            for held in self.held():
                self.dispose(held, Disposition.DISCARDED)

    def render(self, key: str) -> str:
        """The text ``key`` in the organisation's words, filled in (as it is sent)."""
        template, values = self.line.settings.text(key), self.values()
        if key in texts.REPLIES:  # the replies' own placeholders
            values["number"] = phones.readable(self.conv.contact)
            values["error"] = self.route.detail
        return sendable(texts.render(template, values))

    def held(self) -> list[dict]:
        """The conversation's held texts, oldest first (this turn's own is not written yet)."""
        rows = self.conn.execute(_HELD, {"id": self.conv.id}).mappings()
        return [dict(row) for row in rows]

    def dispose(self, held: dict, disposition: Disposition) -> None:
        self.disposed.setdefault(disposition, []).append(held["id"])
        self.record(
            kind=RecordKind.DISPOSITION,
            message_ref=held["ref"],
            direction=Direction.INBOUND,
            twilio_sid=held["twilio_sid"],
            note=disposition.value,
        )

    def relay(self, source: dict) -> None:
        """Deliver a text to the other side of the conversation."""
        if source["author"] is Role.CONTACT:
            template = self.line.settings.text("relay.to_employee")
            mark = texts.HINT_MARK if source["hint"] else ""
            parts = texts.relay_parts(template, self.values(source["body"]), mark)
            self.send(Role.EMPLOYEE, parts, text_key=None, source=source)
        else:
            body = source["relay_body"] if source["relay_body"] is not None else source["body"]
            self.send(Role.CONTACT, texts.split(sendable(body)), text_key=None, source=source)

    def send(
        self, to: Role, body: str | list[str], text_key: str | None, source: dict | None = None
    ) -> None:
        """Queue a text (in parts of at most 1600 characters) and record it."""
        conv = self.conv
        employee = self.line.employee if self.line else None
        line = employee.line if employee else phones.bare(conv.line)
        if to is Role.CONTACT:
            recipient = conv.contact
            sender = phones.on_channel(line, phones.channel_of(conv.contact))
        else:
            recipient, sender = employee.cell, line
        media = source["media_json"] if source else "[]"
        parts = texts.split(body) if isinstance(body, str) else [sendable(p) for p in body]
        for number, part in enumerate(parts):
            note = text_key or ("relay of " + source["ref"] if source else None)
            row = self._text(
                note,
                direction=Direction.OUTBOUND,
                author=source["author"] if source else None,
                sender=sender,
                recipient=recipient,
                body=part,
                media_json=media if number == 0 else "[]",
                status=QUEUED,
                text_key=text_key,
                source_ref=source["ref"] if source else None,
            )
            self.outgoing.append(row)

    def save(self, answer: str | None = None) -> None:
        """Write the turn: one INSERT per table, the conversation, the held texts' fate.

        The rows of a table go as one executemany: one round trip on Postgres
        (psycopg's pipeline), one statement prepared once on both databases.
        """
        conn, conv, now = self.conn, self.conv, self.now
        if self.message is not None:
            self.message["answer"] = answer
        if self.messages:
            conn.execute(_INSERT_MESSAGES, self.messages)
        if self.entries:
            conn.execute(_INSERT_ENTRIES, self.entries)
        changed = {name: getattr(conv, name) for name in _CHANGING}
        conn.execute(_SAVE_CONVERSATION, changed | {"conv_id": conv.id, "updated_at": now})
        for disposition, ids in self.disposed.items():
            conn.execute(_DISPOSE, {"ids": ids, "disposition": disposition, "updated_at": now})


_INSERT_MESSAGES = insert(messages)
_INSERT_ENTRIES = insert(attestations)
# What a turn changes of its conversation: the columns SET (those named in the parameters).
_CHANGING = ("state", "initiator", "last_request_at", "twilio_opt_out", "addressed_at")
_CHANGING += ("chain_head", "chain_length")
_SAVE_CONVERSATION = update(conversations).where(conversations.c.id == bindparam("conv_id"))
_DISPOSE = update(messages).where(messages.c.id.in_(bindparam("ids", expanding=True)))


_HELD = (
    select(messages)
    .where(
        messages.c.conversation_id == bindparam("id"),
        messages.c.disposition == Disposition.HELD,
        messages.c.direction == Direction.INBOUND,
    )
    .order_by(messages.c.id)
)


# -- status callbacks ------------------------------------------------------------------

# How far a text has got: a status callback only moves it further (they come late, twice).
FINAL = ("delivered", "undelivered", "failed", "canceled", "partially_delivered")
STATUS_RANK = {"accepted": 1, "scheduled": 1, "queued": 2, "sending": 3, "sent": 4, "read": 6}
STATUS_RANK |= dict.fromkeys(FINAL, 5)

_OUTBOUND = select(messages).where(messages.c.direction == Direction.OUTBOUND)


def handle_status(
    ref: str | None, form: Mapping[str, str], now: datetime, signature_valid: bool | None = True
) -> bool:
    """Apply a status callback; the status only moves forward. True if it was ours."""
    sid = _clean(form.get("MessageSid") or form.get("SmsSid")).strip()[:64] or None
    status = _clean(form.get("MessageStatus") or form.get("SmsStatus")).strip().lower()[:24]
    error = _clean(form.get("ErrorCode")).strip()[:16] or None
    if not ref and not sid:
        return False
    with transaction() as conn:
        where = messages.c.ref == ref if ref else messages.c.twilio_sid == sid
        found = conn.execute(_OUTBOUND.where(where)).first()
        if found is None:
            log.warning("status callback for an unknown message", extra={"ref": ref, "sid": sid})
            return False
        conv = _lock_by_id(conn, found.conversation_id)
        # Read again under the conversation's lock: another callback may have moved it on.
        message = dict(conn.execute(_OUTBOUND.where(messages.c.id == found.id)).mappings().one())
        _apply_status(conn, conv, message, sid, status, error, now, signature_valid)
    return True


def _apply_status(conn, conv, message, sid, status, error, now, signature_valid) -> None:
    turn = Turn(conn, now, None, conv)
    changes = {}
    if sid and message["twilio_sid"] is None:
        taken = conn.execute(select(messages.c.id).where(messages.c.twilio_sid == sid)).first()
        if taken is None:
            changes["twilio_sid"] = sid
        else:
            log.warning("status callback names a SID another message has", extra={"sid": sid})
    moved = STATUS_RANK.get(status, 0) > STATUS_RANK.get(message["status"], 0)
    if moved:
        changes |= {"status": status, "error_code": error or message["error_code"]}
        turn.record(
            kind=RecordKind.STATUS,
            message_ref=message["ref"],
            direction=Direction.OUTBOUND,
            sender=message["sender"],
            recipient=message["recipient"],
            twilio_sid=sid,
            status=status,
            error_code=error,
            signature_valid=signature_valid,
        )
    if changes:
        conn.execute(
            update(messages).where(messages.c.id == message["id"]).values(updated_at=now, **changes)
        )
        message |= changes
    if moved:
        to_contact = message["recipient"] == conv.contact
        decision = consent.delivery_failed(conv.facts, error, to_contact)
        _elsewhere(turn, decision, "twilio_error_21610", cause=message)
    if turn.entries:
        turn.save()


# -- opt-outs recorded in the portal ---------------------------------------------------


def record_opt_out(conversation_id: int, admin: str, method: str, note: str, now: datetime) -> bool:
    """An admin records an opt-out received another way; it takes effect at once."""
    with transaction() as conn:
        turn = Turn(conn, now, None, _lock_by_id(conn, conversation_id))
        decision = consent.opt_out_elsewhere(turn.conv.facts)
        if changed := _elsewhere(turn, decision, method, admin=admin, note=note or None):
            turn.save()
    return changed


def _elsewhere(turn: Turn, decision: consent.Decision, method: str, **details) -> bool:
    """A decision about a text that did not come in (a failed send, the portal), carried
    out; whether it changed anything."""
    if not decision.events:
        return False
    turn.line = read_line(turn.conn, phones.bare(turn.conv.line))
    turn.carry_out(decision, method, **details)
    return True


def review_hint(
    message_id: int, admin: str, opted_out: bool, reason: str, method: str, now: datetime
) -> bool:
    """Close a revocation hint: record the opt-out it asked for, or dismiss it with a reason."""
    inbound = select(messages).where(messages.c.id == message_id, messages.c.hint.is_(True))
    with transaction() as conn:
        found = conn.execute(inbound).first()
        if found is None:
            return False
        turn = Turn(conn, now, None, _lock_by_id(conn, found.conversation_id))
        message = dict(conn.execute(inbound).mappings().one())  # read again under the lock
        if message["review"] is not None:
            return False
        review = "opted_out" if opted_out else "dismissed"
        reviewed = update(messages).where(messages.c.id == message_id)
        conn.execute(reviewed.values(review=review, updated_at=now))
        turn.record(
            kind=RecordKind.REVIEW,
            message_ref=message["ref"],
            direction=Direction.INBOUND,
            twilio_sid=message["twilio_sid"],
            body=message["body"],
            admin=admin,
            status=review,
            note=reason or None,
        )
        if opted_out:
            decision = consent.opt_out_elsewhere(turn.conv.facts)
            _elsewhere(turn, decision, method, cause=message, admin=admin, note=reason or None)
        turn.save()
    return True
