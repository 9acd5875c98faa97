"""The relay: one webhook, one transaction (SPEC §5–§7, §10).

Find the line → lock the conversation → ask ``bot.consent`` → record the texts,
state and evidence → answer with TwiML. Every rule about consent lives in
``bot.consent``; this module only carries its decisions out.
"""

import contextlib
import json
import logging
import re
from collections import namedtuple
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime

from flask import current_app
from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    cast,
    insert,
    literal_column,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from bot import consent, evidence, keywords, phones, statements, texts, twiml
from bot import settings as org_settings
from bot.consent import Channel, Role
from bot.extensions import db
from bot.models import (
    GENESIS,
    Attestation,
    Conversation,
    Direction,
    Disposition,
    Employee,
    Message,
    RecordKind,
    Setting,
    new_ref,
)

log = logging.getLogger(__name__)

MAX_MEDIA = 10
# The form's names of each attachment's URL and type, in order.
_MEDIA_FIELDS = tuple((f"MediaUrl{n}", f"MediaContentType{n}") for n in range(MAX_MEDIA))
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
        if not self.media:
            return "[]"  # json.dumps([]), which most texts are
        return json.dumps([{"url": u, "content_type": t} for u, t in self.media])


class BadRequest(ValueError):
    """A webhook that cannot be routed at all (no sender or no line)."""


# Characters XML 1.0 cannot carry (C0 controls but tab, newline and return;
# lone surrogates; U+FFFE/U+FFFF). TwiML with one of them does not parse.
# (The surrogates by chr(): a compiler of this module, mypyc, takes no lone
# surrogate in a string literal.)
_NOT_XML = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{chr(0xD800)}-{chr(0xDFFF)}\ufffe\uffff]")


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
    # A plain dict: a werkzeug MultiDict raises (and catches) an exception per missing key.
    form = form.to_dict() if hasattr(form, "to_dict") else dict(form)
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
    for url_field, type_field in _MEDIA_FIELDS:
        url = form.get(url_field)
        if url and (url := sendable(_clean(url)).strip()):
            media.append((url, _clean(form.get(type_field)).strip()))
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


# -- what the relay reads and writes ---------------------------------------------
#
# The webhook's hot path runs statements built once, here, on one connection
# (Core, not the ORM; see ``_transaction``), each compiled once and run on the
# driver's cursor (``bot.statements``): the conversation is read into a plain
# record, the turn's texts and evidence entries are collected as plain rows, and
# at the end each table gets one statement: an INSERT per table (one multi-row
# INSERT on Postgres), one UPDATE of the conversation, and one executemany of the
# message UPDATE per disposition of held texts. On Postgres the INSERTs and the
# UPDATE of the conversation go as one statement.

_CONVERSATIONS = Conversation.__table__
_MESSAGES = Message.__table__
_EMPLOYEES = Employee.__table__
_ATTESTATIONS = Attestation.__table__


@dataclass(slots=True)
class Conv:
    """A locked conversation as the relay changes it; saved back in one UPDATE.

    Its fields are the ``conversations`` columns the relay reads, in the order
    the statements below select them.
    """

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

    def display(self) -> str:
        """How the contact is named to the employee: saved name, else the address."""
        return self.contact_name or self.contact


_CONV_COLUMNS = [_CONVERSATIONS.c[f.name] for f in fields(Conv)]


def _create(dialect):
    """Add the conversation unless a concurrent webhook just did."""
    return dialect.insert(_CONVERSATIONS).on_conflict_do_nothing(index_elements=["line", "contact"])


_EMPLOYEE_COLUMNS = (
    _EMPLOYEES.c.id,
    _EMPLOYEES.c.name,
    _EMPLOYEES.c.cell,
    _EMPLOYEES.c.line,
    _EMPLOYEES.c.mode,
)
_SETTINGS = Setting.__table__


def _no(columns) -> list:
    """NULLs standing for ``columns`` in one part of a UNION, of their types (Postgres
    takes two untyped NULLs for text; the rows come back through the columns'
    result processors)."""
    return [cast(null(), c.type).label(f"{c.table.name}_{c.key}") for c in columns]


def _part(n: int):
    return literal_column(str(n), Integer)


_NO_SETTING = _no((_SETTINGS.c.key, _SETTINGS.c.value))
# The conversation (line, contact), locked until the transaction ends (Postgres;
# SQLite's BEGIN IMMEDIATE has locked the database already), unless the sender is
# the line's active employee, whose texts lock the employee first (_from_employee).
_LOCKED = (
    select(*_CONV_COLUMNS)
    .where(
        _CONVERSATIONS.c.line == bindparam("line"),
        _CONVERSATIONS.c.contact == bindparam("contact"),
        ~select(_EMPLOYEES.c.id)
        .where(
            _EMPLOYEES.c.line == bindparam("line"),
            _EMPLOYEES.c.active.is_(True),
            _EMPLOYEES.c.cell == bindparam("sender"),
        )
        .exists(),
    )
    .with_for_update(of=_CONVERSATIONS)
    .cte("locked")
)


def _line_parts(*conversation) -> list:
    """The line's active employee and the organisation's saved settings, as parts of a
    UNION ALL: a row (0, employee, NULLs) if the line is active, a row (1, NULLs,
    key, value) per saved setting, each row ending in ``conversation``'s columns."""
    return [
        select(_part(0).label("part"), *_EMPLOYEE_COLUMNS, *_NO_SETTING, *conversation).where(
            _EMPLOYEES.c.line == bindparam("line"), _EMPLOYEES.c.active.is_(True)
        ),
        select(
            _part(1), *_no(_EMPLOYEE_COLUMNS), _SETTINGS.c.key, _SETTINGS.c.value, *conversation
        ),
    ]


# The inbound text of MessageSid ``sid``, whose ``answer`` a repeat is given.
_KEPT_ANSWER = (
    _MESSAGES.c.twilio_sid == bindparam("sid"),
    _MESSAGES.c.direction == Direction.INBOUND,
)

_CORE = {
    # The line's employee and the settings, in one read (``_line_parts``).
    "line": union_all(*_line_parts()),
    # The same, the conversation of (line, contact) locked if there is one, and the
    # answer already given to this MessageSid if it is a repeat: the first read of
    # a webhook (see ``_line_and_conversation``).
    "line_and_conversation": union_all(
        *_line_parts(*_no(_CONV_COLUMNS)),
        select(_part(2), *_no(_EMPLOYEE_COLUMNS), *_NO_SETTING, *_LOCKED.c),
        select(
            _part(3),
            *_no(_EMPLOYEE_COLUMNS),
            *_no((_SETTINGS.c.key,)),
            _MESSAGES.c.answer,  # in the settings' value column (both are text)
            *_no(_CONV_COLUMNS),
        ).where(*_KEPT_ANSWER),
    ),
    "lock_employee": select(_EMPLOYEES.c.id)
    .where(_EMPLOYEES.c.id == bindparam("employee_id"))
    .with_for_update(),
    "lock": select(*_CONV_COLUMNS)
    .where(
        _CONVERSATIONS.c.line == bindparam("line"),
        _CONVERSATIONS.c.contact == bindparam("contact"),
    )
    .with_for_update(),
    "lock_by_id": select(*_CONV_COLUMNS)
    .where(_CONVERSATIONS.c.id == bindparam("conv_id"))
    .with_for_update(),
    # The contact that last texted the line or that the employee last addressed.
    "current_contact": select(*_CONV_COLUMNS)
    .where(
        _CONVERSATIONS.c.line == bindparam("line"),
        _CONVERSATIONS.c.addressed_at.is_not(None),
        _CONVERSATIONS.c.contact != bindparam("cell"),
    )
    .order_by(_CONVERSATIONS.c.addressed_at.desc(), _CONVERSATIONS.c.id.desc())
    .limit(1)
    .with_for_update(),
    "create": {"postgresql": _create(postgresql), "sqlite": _create(sqlite)},
    # ... and return it if added (SQLite has RETURNING from 3.35 on).
    "create_returning": {
        "postgresql": _create(postgresql).returning(*_CONV_COLUMNS),
        "sqlite": _create(sqlite).returning(*_CONV_COLUMNS),
    },
    "save": update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == bindparam("conv_id")),
    "answer": select(_MESSAGES.c.answer).where(*_KEPT_ANSWER),
    "held": select(_MESSAGES)
    .where(
        _MESSAGES.c.conversation_id == bindparam("conv_id"),
        _MESSAGES.c.disposition == Disposition.HELD,
        _MESSAGES.c.direction == Direction.INBOUND,
    )
    .order_by(_MESSAGES.c.id),
    "message_by_id": select(_MESSAGES).where(_MESSAGES.c.id == bindparam("message_id")),
    "outbound_by_ref": select(_MESSAGES.c.id, _MESSAGES.c.conversation_id).where(
        _MESSAGES.c.direction == Direction.OUTBOUND, _MESSAGES.c.ref == bindparam("ref")
    ),
    "outbound_by_sid": select(_MESSAGES.c.id, _MESSAGES.c.conversation_id).where(
        _MESSAGES.c.direction == Direction.OUTBOUND, _MESSAGES.c.twilio_sid == bindparam("sid")
    ),
    "sid_taken": select(_MESSAGES.c.id).where(_MESSAGES.c.twilio_sid == bindparam("sid")),
    "update_message": update(_MESSAGES).where(_MESSAGES.c.id == bindparam("message_id")),
    "insert_messages": insert(_MESSAGES),
    "insert_entries": insert(_ATTESTATIONS),
}
# Each compiled once per dialect and run on the driver's cursor (``bot.statements``);
# the per-dialect ones are keyed by dialect name.
_SQL = {
    name: {dialect: statements.Statement(s) for dialect, s in core.items()}
    if isinstance(core, dict)
    else statements.Statement(core)
    for name, core in _CORE.items()
}


@dataclass
class _Turn:
    """Everything one webhook needs to carry a decision out, and the rows it writes."""

    conn: Connection
    inbound: Inbound | None
    now: datetime
    settings: org_settings.Settings | None
    employee: tuple | None
    conv: Conv
    message: dict | None = None
    outgoing: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    disposed: dict[Disposition, list[int]] = field(default_factory=dict)

    def values(self, body: str = "") -> dict[str, str]:
        return {
            "employee_name": self.employee.name if self.employee else "",
            "company_name": self.settings.company_name,
            "contact": self.conv.display(),
            "body": body,
        }

    def record(self, **fields) -> None:
        """Add an entry to the conversation's evidence chain."""
        self.entries.append(evidence.entry(self.conv, created_at=self.now, **fields))


def _fetch(conn: Connection, name: str, values: dict) -> list:
    return statements.fetch(conn, _SQL[name], values)


def _first(conn: Connection, name: str, values: dict):
    return statements.first(conn, _SQL[name], values)


def _one(conn: Connection, name: str, values: dict):
    return statements.one(conn, _SQL[name], values)


def _write(conn: Connection, name: str, values: dict | list[dict]) -> None:
    statements.execute(conn, _SQL[name], values)


def _save(turn: _Turn) -> None:
    """Write the turn: its texts, its evidence, the conversation, the held texts' fate.

    On SQLite the texts go first (a repeated MessageSid fails there, before
    anything else is written); on Postgres the texts, the evidence and the
    conversation go as one atomic statement (``statements.write``), which the
    repeated MessageSid fails as a whole.
    """
    conn, conv, now = turn.conn, turn.conv, turn.now
    statements.write(
        conn,
        [(_SQL["insert_messages"], turn.messages), (_SQL["insert_entries"], turn.entries)],
        _SQL["save"],
        {
            "conv_id": conv.id,
            "state": conv.state,
            "initiator": conv.initiator,
            "last_request_at": conv.last_request_at,
            "twilio_opt_out": conv.twilio_opt_out,
            "addressed_at": conv.addressed_at,
            "chain_head": conv.chain_head,
            "chain_length": conv.chain_length,
            "updated_at": now,
        },
    )
    for disposition, ids in turn.disposed.items():
        rows = [{"disposition": disposition, "updated_at": now, "message_id": i} for i in ids]
        _write(conn, "update_message", rows)


# -- the entry points ----------------------------------------------------------


def handle_inbound(inbound: Inbound, now: datetime, status_base: str) -> str:
    """Process one inbound text in one transaction; return (and keep) its TwiML.

    A repeated MessageSid gets the answer the first copy stored, and nothing is
    written: the first read finds it (``_route``). A copy that read before the
    first was committed (it waits for it on the conversation's lock, or on
    Postgres on the index entry) is caught by the unique index on
    ``messages.twilio_sid`` when its turn is written: the transaction is rolled
    back and the stored answer returned.
    """
    try:
        with _transaction() as conn:
            answer = _route(conn, inbound, now, status_base)
    except IntegrityError:
        with _transaction() as conn:
            stored = _stored_answer(conn, inbound.sid)
        if stored is None:
            raise
        return stored
    return answer


@contextlib.contextmanager
def _transaction() -> Iterator[Connection]:
    """The relay's transaction, committed when the block ends, rolled back on an error.

    The caller's own when its session has one open (the portal, or
    ``twilio reconcile`` reading and then handing texts over); else a connection
    of its own, without the ORM session's bookkeeping, which the relay does not use.
    """
    session = db.session
    if session.registry.has() and session().in_transaction():
        try:
            yield session.connection()
        except BaseException:
            session.rollback()
            raise
        session.commit()
        return
    with db.engine.begin() as conn:
        yield conn


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
    if not ref and not sid:
        return False
    with _transaction() as conn:
        return _apply_status(conn, ref, sid, status, error, now, signature_valid)


def _apply_status(conn, ref, sid, status, error, now, signature_valid) -> bool:
    if ref:
        found = _first(conn, "outbound_by_ref", {"ref": ref})
    else:
        found = _first(conn, "outbound_by_sid", {"sid": sid})
    if found is None:
        log.warning("status callback for an unknown message", extra={"ref": ref, "sid": sid})
        return False
    turn = _Turn(conn, None, now, None, None, _lock_by_id(conn, found.conversation_id))
    message = _one(conn, "message_by_id", {"message_id": found.id})._asdict()
    changes = {}
    if sid and message["twilio_sid"] is None:
        if _first(conn, "sid_taken", {"sid": sid}) is None:
            changes["twilio_sid"] = sid
        else:
            log.warning("status callback names a SID another message has", extra={"sid": sid})
    changed = STATUS_RANK.get(status, 0) > STATUS_RANK.get(message["status"], 0)
    if changed:
        changes["status"] = status
        changes["error_code"] = error or message["error_code"]
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
        _write(conn, "update_message", {"updated_at": now, **changes, "message_id": found.id})
        message.update(changes)
    if changed and error == CARRIER_OPT_OUT and message["recipient"] == turn.conv.contact:
        _opt_out_elsewhere(turn, method="twilio_error_21610", cause=message)
    if turn.entries:
        _save(turn)
    return True


def _opt_out_elsewhere(turn: _Turn, method: str, **details) -> bool:
    conv = turn.conv
    decision = consent.opt_out_elsewhere(conv.facts)
    turn.employee, turn.settings = _line(turn.conn, phones.bare(conv.line))
    mode = None if turn.employee is None else _policy(turn).effective_mode
    _apply(turn, decision, mode=mode, method=method, **details)
    return bool(decision.events)


def record_opt_out(conversation_id: int, admin: str, method: str, note: str, now: datetime) -> bool:
    """An admin records an opt-out received another way; it takes effect at once."""
    with _transaction() as conn:
        turn = _Turn(conn, None, now, None, None, _lock_by_id(conn, conversation_id))
        changed = _opt_out_elsewhere(turn, method=method, admin=admin, note=note or None)
        if changed:
            _save(turn)
    return changed


def review_hint(
    message_id: int, admin: str, opted_out: bool, reason: str, method: str, now: datetime
) -> bool:
    """Close a revocation hint: record the opt-out it asked for, or dismiss it with a reason."""
    with _transaction() as conn:
        return _review_hint(conn, message_id, admin, opted_out, reason, method, now)


def _review_hint(conn, message_id, admin, opted_out, reason, method, now) -> bool:
    found = _first(conn, "message_by_id", {"message_id": message_id})
    if found is None or not found.hint:
        return False
    turn = _Turn(conn, None, now, None, None, _lock_by_id(conn, found.conversation_id))
    message = _one(conn, "message_by_id", {"message_id": message_id})._asdict()
    if message["review"] is not None:
        return False
    review = "opted_out" if opted_out else "dismissed"
    _write(conn, "update_message", {"review": review, "updated_at": now, "message_id": message_id})
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
        _opt_out_elsewhere(turn, method=method, cause=message, admin=admin, note=reason or None)
    _save(turn)
    return True


# -- routing -------------------------------------------------------------------


def _stored_answer(conn: Connection, sid: str) -> str | None:
    row = _first(conn, "answer", {"sid": sid})
    return None if row is None else row.answer


_LineEmployee = namedtuple("_LineEmployee", [c.key for c in _EMPLOYEE_COLUMNS])
_EMPLOYEE_PART = slice(1, 1 + len(_EMPLOYEE_COLUMNS))
_CONV_PART = slice(3 + len(_EMPLOYEE_COLUMNS), None)


# What a webhook's first read found: the line's active employee (or None), the
# settings in force, the locked conversation (or None) and, for a MessageSid
# already kept, the answer given to it (or None). A plain namedtuple, not a
# subclass of one: mypyc compiles no such subclass.
_FirstRead = namedtuple("_FirstRead", "employee settings conv answer")


def _read_line(rows) -> _FirstRead:
    """The employee, the settings in force, the conversation and a kept answer, from a
    read's rows."""
    employee, saved, conv, answer = None, {}, None, None
    for row in rows:
        if row.part == 0:
            employee = _LineEmployee._make(row[_EMPLOYEE_PART])
        elif row.part == 1:
            saved[row.settings_key] = row.settings_value
        elif row.part == 2:
            conv = Conv(*row[_CONV_PART])
        else:
            answer = row.settings_value
    return _FirstRead(employee, org_settings.from_saved(saved), conv, answer)


def _line(conn: Connection, line: str) -> tuple[tuple | None, org_settings.Settings]:
    """The active employee of ``line`` (if any) and the settings in force."""
    found = _read_line(_fetch(conn, "line", {"line": line}))
    return found.employee, found.settings


def _line_and_conversation(
    conn: Connection, line: str, contact: str, sender: str | None = None, sid: str | None = None
) -> _FirstRead:
    """``_line``, and the conversation of (line, contact) locked, if it exists and the
    sender (``contact`` as a bare number, if the caller has it) is not the line's
    active employee, and the answer kept for the inbound text ``sid``: one read.

    An employee text gets no conversation here (and locks none): it locks the
    employee first, then the conversation it is about, as it always has (one
    order for every employee text of a line). Whether the sender is the employee
    is decided in the same statement, on the same snapshot, as the caller's own
    comparison of the row it returns.
    """
    values = {"line": line, "contact": contact, "sender": sender or phones.bare(contact)}
    return _read_line(_fetch(conn, "line_and_conversation", values | {"sid": sid}))


def _route(conn: Connection, inbound: Inbound, now: datetime, status_base: str) -> str:
    line, sender = phones.bare(inbound.to), phones.bare(inbound.sender)
    employee, settings, conv, answer = _line_and_conversation(
        conn, line, inbound.sender, sender, inbound.sid
    )
    if answer is not None:
        # A MessageSid already kept (Twilio retrying one it thinks was lost): the
        # answer the first copy stored, nothing written. A copy that was still in
        # flight when this read ran is caught by the unique index instead
        # (handle_inbound), as before.
        return answer
    if employee is None:
        return _unrouted(conn, inbound, settings, now, conv)
    if sender == employee.cell:
        return _from_employee(conn, inbound, employee, settings, now, status_base)
    return _from_contact(conn, inbound, employee, settings, now, status_base, conv)


def _unrouted(conn: Connection, inbound: Inbound, settings, now: datetime, conv) -> str:
    """A ``To`` that is no active line: keep the text, answer nothing."""
    log.warning("text to a number that is no line", extra={"to": inbound.to, "sid": inbound.sid})
    conv = conv or _lock(conn, phones.bare(inbound.to), inbound.sender, now)
    turn = _Turn(conn, inbound, now, settings, None, conv)
    _record_inbound(turn, Role.CONTACT, Disposition.UNROUTED, answer=twiml.EMPTY)
    decision = consent.unrouted(conv.facts, keywords.classify(inbound.body, inbound.opt_out_type))
    _apply(turn, decision, mode=None, method="sms to an inactive line")
    _save(turn)
    return twiml.EMPTY


def _from_contact(conn, inbound: Inbound, employee, settings, now, status_base: str, conv) -> str:
    conv = conv or _lock(conn, employee.line, inbound.sender, now)
    turn = _Turn(conn, inbound, now, settings, employee, conv)
    policy = _policy(turn)
    classified = keywords.classify(inbound.body, inbound.opt_out_type)
    decision = consent.decide(conv.facts, policy, Role.CONTACT, classified, now)
    _record_inbound(turn, Role.CONTACT, _disposition(decision), hint=classified.hint)
    conv.addressed_at = now
    _apply(turn, decision, mode=policy.effective_mode)
    return _answer(turn, status_base)


def _from_employee(conn, inbound: Inbound, employee: tuple, settings, now, status_base: str) -> str:
    if conn.dialect.name == "postgresql":
        # One employee text at a time: who "the current contact" is must not race.
        # (SQLite's BEGIN IMMEDIATE has locked the whole database already.)
        _fetch(conn, "lock_employee", {"employee_id": employee.id})
    region = current_app.config["DEFAULT_REGION"]
    if inbound.body.strip().lower() == "#help":
        return _control(conn, inbound, employee, settings, now, status_base, texts.USAGE)
    if not inbound.body.strip() and not inbound.media:
        return _control(conn, inbound, employee, settings, now, status_base, texts.EMPTY)
    try:
        addressed = phones.leading_address(inbound.body, region)
    except phones.InvalidNumber as exc:
        reply = texts.BAD_NUMBER.format(error=str(exc))
        return _control(conn, inbound, employee, settings, now, status_base, reply)
    if addressed.address is None:
        where = {"line": employee.line, "cell": employee.cell}
        row = _first(conn, "current_contact", where)
        if row is None:
            return _control(conn, inbound, employee, settings, now, status_base, texts.USAGE)
        conv = Conv(*row)
    elif phones.bare(addressed.address) in (employee.line, employee.cell):
        return _control(conn, inbound, employee, settings, now, status_base, texts.NOT_A_CONTACT)
    else:
        conv = _lock(conn, employee.line, addressed.address, now)
    conv.addressed_at = now
    turn = _Turn(conn, inbound, now, settings, employee, conv)
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


def _control(conn, inbound, employee, settings, now, status_base, reply: str) -> str:
    """Answer the employee about addressing; kept on the line's own conversation."""
    conv = _lock(conn, employee.line, inbound.sender, now)
    turn = _Turn(conn, inbound, now, settings, employee, conv)
    _record_inbound(turn, Role.EMPLOYEE, Disposition.ANSWERED)
    _send(turn, Role.EMPLOYEE, reply, text_key=None)
    return _answer(turn, status_base)


def _policy(turn: _Turn) -> consent.Policy:
    return consent.Policy(
        mode=consent.line_mode(turn.employee.mode, turn.settings.default_mode),
        channel=phones.channel_of(turn.conv.contact),
        stop_filtering=current_app.config["TWILIO_STOP_FILTERING"],
    )


def _disposition(decision: consent.Decision) -> Disposition:
    return Disposition(decision.disposition.value)


# -- conversations and their locks --------------------------------------------


def _lock(conn: Connection, line: str, contact: str, now: datetime) -> Conv:
    """The conversation, created if new, locked until the transaction ends.

    Postgres: a row lock (SELECT … FOR UPDATE; a row this transaction inserted is
    its own until commit). SQLite: the whole database is already locked by
    BEGIN IMMEDIATE (see ``configure_sqlite``).
    """
    key = {"line": line, "contact": contact}
    row = _first(conn, "lock", key)
    if row is None:
        created = {
            **key,
            "state": consent.State.NEW,
            "twilio_opt_out": False,
            "chain_head": GENESIS,
            "chain_length": 0,
            "created_at": now,
            "updated_at": now,
        }
        dialect = conn.dialect
        if dialect.insert_returning:
            row = statements.first(conn, _SQL["create_returning"][dialect.name], created)
        else:
            statements.execute(conn, _SQL["create"][dialect.name], created)
            row = None
        if row is None:  # created by a concurrent webhook (wait for its lock), or no RETURNING
            row = _one(conn, "lock", key)
    return Conv(*row)


def _lock_by_id(conn: Connection, conversation_id: int) -> Conv:
    return Conv(*_one(conn, "lock_by_id", {"conv_id": conversation_id}))


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


def _new_message(turn: _Turn, **fields) -> dict:
    """A ``messages`` row with every column set, so a turn's rows insert in one batch."""
    row = _MESSAGE_DEFAULTS | fields
    row["ref"] = new_ref()
    row["conversation_id"] = turn.conv.id
    row["created_at"] = row["updated_at"] = turn.now
    turn.messages.append(row)
    return row


def _record_inbound(
    turn: _Turn,
    author: Role,
    disposition: Disposition,
    hint: bool = False,
    relay_body: str | None = None,
    answer: str | None = None,
) -> None:
    inbound = turn.inbound
    message = _new_message(
        turn,
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
        answer=answer,
    )
    turn.message = message
    turn.record(
        kind=RecordKind.MESSAGE,
        message_ref=message["ref"],
        direction=Direction.INBOUND,
        sender=inbound.sender,
        recipient=inbound.to,
        body=inbound.body,
        media_json=message["media_json"],
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
    cause: dict | None = None,
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
        turn.record(
            kind=RecordKind.CONSENT,
            event=event,
            mode=mode,
            state=after.state,
            shown_text=_shown(event, shown),
            cause_sid=cause["twilio_sid"] if cause else None,
            cause_body=cause["body"] if cause else None,
            signature_valid=cause["signature_valid"] if cause else None,
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


def _held(turn: _Turn) -> list[dict]:
    """The conversation's held texts, oldest first (this turn's own text is not written yet)."""
    return [row._asdict() for row in _fetch(turn.conn, "held", {"conv_id": turn.conv.id})]


def _dispose(turn: _Turn, held: dict, disposition: Disposition) -> None:
    turn.disposed.setdefault(disposition, []).append(held["id"])
    turn.record(
        kind=RecordKind.DISPOSITION,
        message_ref=held["ref"],
        direction=Direction.INBOUND,
        twilio_sid=held["twilio_sid"],
        note=disposition.value,
    )


def _relay(turn: _Turn, source: dict) -> None:
    """Deliver a text to the other side of the conversation."""
    if source["author"] is Role.CONTACT:
        template = turn.settings.text("relay.to_employee")
        values = turn.values(source["body"])
        mark = texts.HINT_MARK if source["hint"] else ""
        if template.endswith("{body}"):
            prefix = texts.render(template[: -len("{body}")], values)
            parts = texts.split(source["body"] + mark, prefix)
        else:
            parts = texts.split(texts.render(template, values) + mark)
        _send(turn, Role.EMPLOYEE, parts, text_key=None, source=source)
    else:
        body = source["relay_body"] if source["relay_body"] is not None else source["body"]
        _send(turn, Role.CONTACT, texts.split(body), text_key=None, source=source)


def _send(
    turn: _Turn,
    to: Role,
    body: str | list[str],
    text_key: str | None,
    source: dict | None = None,
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
    media = source["media_json"] if source else "[]"
    parts = texts.split(sendable(body)) if isinstance(body, str) else [sendable(p) for p in body]
    for number, part in enumerate(parts):
        message = _new_message(
            turn,
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
        turn.outgoing.append(message)
        turn.record(
            kind=RecordKind.MESSAGE,
            message_ref=message["ref"],
            direction=Direction.OUTBOUND,
            sender=sender,
            recipient=recipient,
            body=part,
            media_json=message["media_json"],
            status=QUEUED,
            note=text_key or ("relay of " + source["ref"] if source else None),
        )


def _answer(turn: _Turn, status_base: str) -> str:
    answer = twiml.render(turn.outgoing, turn.inbound.sender, turn.inbound.channel, status_base)
    turn.message["answer"] = answer
    _save(turn)
    return answer
