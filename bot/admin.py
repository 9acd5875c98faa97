"""The portal (SPEC §11): dashboard, employees, settings, contacts, log."""

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy import DateTime, bindparam, column, func, or_, select, table, tuple_
from sqlalchemy.orm import contains_eager

from bot import bundle, doctor, evidence, ledger, phones, relay, texts
from bot import employees as staff
from bot import settings as org_settings
from bot.auth import current_admin, login_required
from bot.consent import State
from bot.database import read_only
from bot.extensions import db
from bot.forms import (
    ActionForm,
    ContactNameForm,
    DismissForm,
    EmployeeForm,
    OptOutForm,
    OrganisationForm,
    TextForm,
)
from bot.models import (
    FAILED,
    Attestation,
    Conversation,
    Direction,
    Employee,
    Message,
    RecordKind,
    utcnow,
)

bp = Blueprint("admin", __name__)

PAGE_SIZE = 50
SAMPLE_CONTACT = "+14155550123"


@bp.before_request
@login_required
def require_login():
    """Every page of the portal is behind the sign-in; a page only read is a reader's
    (on SQLite it takes no write lock, however long it renders)."""
    if request.method == "GET":
        read_only()


@bp.app_template_filter("phone")
def phone_filter(address: str | None) -> str:
    return phones.readable(address) if address else ""


@bp.app_template_filter("when")
def when_filter(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


@dataclass
class Page:
    """One page of a list in keyset order (newest first): its rows, and where the
    pages before and after it start (``None`` at either end)."""

    items: list
    newer: str | None = None
    older: str | None = None


def keyset_page(stmt, columns: tuple, key, per_page: int = PAGE_SIZE) -> Page:
    """The page of ``stmt`` that the request's ``before`` or ``after`` key names.

    Rows are ordered by ``columns``, newest first (the last is unique); ``key``
    gives a row's values of them. A page's key is those values of the row it ends
    at, joined by ``~``. Each page is an index range of its own: no OFFSET, so the
    thousandth page costs what the first does.
    """
    order = [c.desc() for c in columns]
    after = _key(request.args.get("after"), columns)
    before = _key(request.args.get("before"), columns)
    if after is not None:
        stmt = stmt.where(tuple_(*columns) > after)
        order = [c.asc() for c in columns]
    elif before is not None:
        stmt = stmt.where(tuple_(*columns) < before)
    rows = list(db.session.execute(stmt.order_by(*order).limit(per_page + 1)).scalars())
    more = len(rows) > per_page
    rows = rows[:per_page]
    if after is not None:
        rows.reverse()
    page = Page(rows)
    if rows and (more or after is not None):
        page.older = _key_text(key(rows[-1]))
    if rows and (more if after is not None else before is not None):
        page.newer = _key_text(key(rows[0]))
    return page


def _key(raw: str | None, columns: tuple) -> tuple | None:
    """A page key read back as its columns' values; None if it is not one."""
    parts = (raw or "").split("~")
    if len(parts) != len(columns):
        return None
    try:
        return tuple(
            datetime.fromisoformat(part).astimezone(UTC) if _is_time(c) else int(part)
            for part, c in zip(parts, columns, strict=True)
        )
    except ValueError:
        return None


def _is_time(column) -> bool:
    return isinstance(getattr(column.type, "impl_instance", column.type), DateTime)


def _key_text(values: tuple) -> str:
    return "~".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in values)


@bp.app_template_global()
def page_url(**keys) -> str:
    """This page's URL with its filters, at another page (``before=…`` or ``after=…``)."""
    args = {k: v for k, v in request.args.items() if k not in ("before", "after")} | keys
    return url_for(request.endpoint, **(request.view_args or {}), **args)


REVIEW_LIST = 20  # revocation hints listed at once; the rest wait for these
TIMELINE = 200  # evidence entries of a conversation shown at once, in chain order


def _pending_hints():
    """Revocation hints not reviewed yet, newest first (a partial index holds them)."""
    return (
        select(Message, Conversation)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.hint, Message.review.is_(None))
        .order_by(Message.id.desc())
    )


def _failed():
    """Texts that did not arrive, newest first (a partial index holds them; the statuses
    are written into the SQL so that both databases match it to that index)."""
    failed = bindparam("failed", FAILED, expanding=True, literal_execute=True)
    return (
        select(Message, Conversation)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.status.in_(failed))
        .order_by(Message.id.desc())
    )


# -- dashboard ------------------------------------------------------------------


@bp.get("/")
def dashboard():
    counts = dict(
        db.session.execute(
            select(Conversation.state, func.count()).group_by(Conversation.state)
        ).all()
    )
    recent = db.session.execute(
        select(Attestation, Conversation)
        .join(Conversation, Conversation.id == Attestation.conversation_id)
        .where(Attestation.kind == RecordKind.CONSENT)
        .order_by(Attestation.id.desc())
        .limit(10)
    ).all()
    hints = db.session.execute(_pending_hints().limit(10)).all()
    failures = db.session.execute(_failed().limit(10)).all()
    return render_template(
        "admin/dashboard.html",
        counts=[(state, counts.get(state, 0)) for state in State],
        recent=recent,
        hints=hints,
        failures=failures,
        evidence=ledger.status(),
        action_form=ActionForm(),
    )


# -- employees --------------------------------------------------------------------


def _employee_fields(form: EmployeeForm) -> tuple:
    """Name, cell, line, mode and region, as bot.employees takes them."""
    mode = form.mode.data or None
    region = current_app.config["DEFAULT_REGION"]
    return form.name.data, form.cell.data, form.line.data, mode, region


@bp.route("/employees", methods=["GET", "POST"])
def employees():
    form = EmployeeForm()
    if form.validate_on_submit():
        try:
            employee = staff.add(*_employee_fields(form))
            db.session.commit()
        except staff.EmployeeError as exc:
            db.session.rollback()
            flash(str(exc), "error")
            return render_template("admin/employees.html", form=form, rows=staff.listing()), 400
        flash(f"{employee.name} now has the line {phones.readable(employee.line)}.", "info")
        return redirect(url_for("admin.employees"))
    return render_template(
        "admin/employees.html", form=form, rows=staff.listing(), action=ActionForm()
    )


@bp.route("/employees/<int:employee_id>", methods=["GET", "POST"])
def employee_edit(employee_id: int):
    employee = db.session.get(Employee, employee_id) or abort(404)
    form = EmployeeForm(obj=employee)
    if request.method == "GET":
        form.mode.data = employee.mode.value if employee.mode else ""
        form.cell.data = phones.readable(employee.cell)
        form.line.data = phones.readable(employee.line)
    if form.validate_on_submit():
        try:
            staff.update(employee, *_employee_fields(form))
            db.session.commit()
        except staff.EmployeeError as exc:
            db.session.rollback()
            flash(str(exc), "error")
            return render_template("admin/employee_edit.html", form=form, employee=employee), 400
        flash(f"{employee.name} saved.", "info")
        return redirect(url_for("admin.employees"))
    return render_template(
        "admin/employee_edit.html", form=form, employee=employee, action=ActionForm()
    )


@bp.post("/employees/<int:employee_id>/deactivate")
def employee_deactivate(employee_id: int):
    employee = db.session.get(Employee, employee_id) or abort(404)
    if ActionForm().validate_on_submit():
        employee.active = False
        db.session.commit()
        flash(f"{employee.name}'s line is deactivated; its history stays.", "info")
    return redirect(url_for("admin.employees"))


# -- settings -----------------------------------------------------------------------


def _sample_values(settings: org_settings.Settings) -> dict[str, str]:
    employee = db.session.execute(
        select(Employee).where(Employee.active.is_(True)).order_by(Employee.id).limit(1)
    ).scalar_one_or_none()
    return {
        "employee_name": employee.name if employee else "Alex Sample",
        "company_name": settings.company_name or "(company name not set)",
        "contact": SAMPLE_CONTACT,
        "body": "Hi, is Tuesday at 10 still good?",
    }


@bp.route("/settings", methods=["GET", "POST"])
def settings():
    current = org_settings.current()
    form = OrganisationForm()
    if request.method == "GET":
        form.company_name.data = current.company_name
        form.default_mode.data = current.default_mode.value
    if form.validate_on_submit():
        org_settings.put("company_name", form.company_name.data or "")
        org_settings.put("default_mode", form.default_mode.data)
        db.session.commit()
        flash("Settings saved. They apply from the next message on.", "info")
        return redirect(url_for("admin.settings"))
    values = _sample_values(current)
    rows = [
        (
            key,
            current.text(key),
            texts.render(current.text(key), values),
            f"text.{key}" in current.saved,
            org_settings.warnings(f"text.{key}", current.text(key)),
        )
        for key in texts.DEFAULTS
    ]
    return render_template("admin/settings.html", form=form, rows=rows)


@bp.route("/settings/texts/<key>", methods=["GET", "POST"])
def text_edit(key: str):
    if key not in texts.DEFAULTS:
        abort(404)
    current = org_settings.current()
    form = TextForm()
    if request.method == "GET":
        form.value.data = current.text(key)
    value = form.value.data or ""
    warnings = org_settings.warnings(f"text.{key}", value)
    if form.validate_on_submit() and request.form.get("action") == "save":
        try:
            org_settings.put(f"text.{key}", value)
        except org_settings.SettingError as exc:
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"Saved {key}.", "info")
            for warning in warnings:
                flash(f"Warning: {warning}.", "warning")
            return redirect(url_for("admin.settings") + f"#text-{key}")
    values = _sample_values(current)
    return render_template(
        "admin/text_edit.html",
        form=form,
        key=key,
        default=texts.DEFAULTS[key],
        preview=texts.render(value, values),
        values=values,
        warnings=warnings,
        saved=f"text.{key}" in current.saved,
        action=ActionForm(),
    )


@bp.post("/settings/texts/<key>/reset")
def text_reset(key: str):
    if key not in texts.DEFAULTS:
        abort(404)
    if ActionForm().validate_on_submit():
        org_settings.reset(f"text.{key}")
        db.session.commit()
        flash(f"{key} is back to the default.", "info")
    return redirect(url_for("admin.settings") + f"#text-{key}")


# -- contacts -------------------------------------------------------------------------


# SQLite's trigram index of numbers and names (migration 0007; Postgres's is pg_trgm).
_search = table("conversation_search", column("rowid"), column("contact"), column("contact_name"))


def contact_search(stmt, query: str):
    """``stmt`` (of conversations) narrowed to those whose number or name contains
    ``query``, and the column their newest-first order goes by.

    A whole number (typed any way, ``(415) 555-0123``) is looked up in the index
    of numbers; a part of one (three digits or more), or of a name, in each
    database's trigram index. On SQLite the search table itself is read in its
    own order, so a name that many contacts share still ends at the first page.
    """
    region = current_app.config["DEFAULT_REGION"]
    with contextlib.suppress(phones.InvalidNumber):
        number = phones.to_e164(query, region)
        return stmt.where(
            Conversation.contact.in_([number, phones.WHATSAPP + number])
        ), Conversation.id
    digits = "".join(c for c in query if c.isdigit())
    number_like = digits and not any(c.isalpha() for c in query)
    pattern = f"%{digits if number_like else query}%"
    if db.engine.dialect.name == "sqlite" and len(pattern) >= 5:  # a trigram or more
        found = _search.c.contact if number_like else _search.c.contact_name
        stmt = stmt.join(_search, _search.c.rowid == Conversation.id).where(found.like(pattern))
        return stmt, _search.c.rowid
    if number_like:
        return stmt.where(Conversation.contact.like(pattern)), Conversation.id
    return stmt.where(Conversation.contact_name.ilike(pattern)), Conversation.id


@bp.get("/contacts")
def contacts():
    query = (request.args.get("q") or "").strip()
    if query:  # matches, the newest contacts first
        stmt, order = contact_search(select(Conversation), query)
        page = keyset_page(stmt, (order,), lambda c: (c.id,))
    else:  # everyone, the latest activity first
        columns = (Conversation.updated_at, Conversation.id)
        page = keyset_page(select(Conversation), columns, lambda c: (c.updated_at, c.id))
    names = {e.line: e.name for e in staff.listing() if e.active}
    hints = db.session.execute(_pending_hints().limit(REVIEW_LIST)).all()
    return render_template(
        "admin/contacts.html", page=page, q=query, names=names, hints=hints, action=ActionForm()
    )


@bp.get("/contacts/<int:conversation_id>")
def conversation(conversation_id: int):
    conv = db.session.get(Conversation, conversation_id) or abort(404)
    start = request.args.get("from", default=0, type=int)
    entries = list(
        db.session.execute(
            select(Attestation)
            .where(Attestation.conversation_id == conv.id, Attestation.seq > start)
            .order_by(Attestation.seq)
            .limit(TIMELINE + 1)
        ).scalars()
    )
    later = entries[TIMELINE - 1].seq if len(entries) > TIMELINE else None
    hints = db.session.execute(
        select(Message).where(
            Message.conversation_id == conv.id, Message.hint.is_(True), Message.review.is_(None)
        )
    ).scalars()
    name_form = ContactNameForm(name=conv.contact_name)
    return render_template(
        "admin/conversation.html",
        conv=conv,
        entries=entries[:TIMELINE],
        start=start,
        later=later,
        hints=list(hints),
        employee=staff.active_by_line(conv.line),
        name_form=name_form,
        opt_out_form=OptOutForm(),
        dismiss_form=DismissForm(),
    )


@bp.post("/contacts/<int:conversation_id>/name")
def conversation_name(conversation_id: int):
    conv = db.session.get(Conversation, conversation_id) or abort(404)
    form = ContactNameForm()
    if form.validate_on_submit():
        conv.contact_name = (form.name.data or "").strip() or None
        db.session.commit()
        flash("Name saved.", "info")
    return redirect(url_for("admin.conversation", conversation_id=conv.id))


@bp.post("/contacts/<int:conversation_id>/opt-out")
def conversation_opt_out(conversation_id: int):
    conv = db.session.get(Conversation, conversation_id) or abort(404)
    form = OptOutForm()
    if form.validate_on_submit():
        db.session.rollback()
        changed = relay.record_opt_out(
            conv.id, current_admin().email, form.method.data, form.note.data or "", utcnow()
        )
        flash(
            "Opt-out recorded; nothing more will be sent to this contact."
            if changed
            else "This contact had already opted out.",
            "info",
        )
    else:
        flash("Choose how the opt-out was received.", "error")
    return redirect(url_for("admin.conversation", conversation_id=conversation_id))


@bp.post("/hints/<int:message_id>/<action>")
def hint_review(message_id: int, action: str):
    message = db.session.get(Message, message_id) or abort(404)
    if action not in ("opt-out", "dismiss"):
        abort(404)
    form = OptOutForm() if action == "opt-out" else DismissForm()
    if form.validate_on_submit():
        reason = form.note.data if action == "opt-out" else form.reason.data
        method = f"revocation hint: {form.method.data}" if action == "opt-out" else ""
        db.session.rollback()
        done = relay.review_hint(
            message_id, current_admin().email, action == "opt-out", reason or "", method, utcnow()
        )
        flash("Review recorded." if done else "This hint was already reviewed.", "info")
    else:
        flash("Give a reason to dismiss a hint.", "error")
    return redirect(url_for("admin.conversation", conversation_id=message.conversation_id))


# -- log --------------------------------------------------------------------------------


def _log_query():
    """Messages filtered by the query string: line, contact, direction, status, dates."""
    args = request.args
    stmt = select(Message).join(Message.conversation).options(contains_eager(Message.conversation))
    filters = {}
    if line := (args.get("line") or "").strip():
        filters["line"] = line
        with contextlib.suppress(phones.InvalidNumber):
            line = phones.to_e164(line, current_app.config["DEFAULT_REGION"])
        stmt = stmt.where(Message.line == line)
    if contact := (args.get("contact") or "").strip():
        filters["contact"] = contact
        matching, _ = contact_search(select(Conversation.id), contact)
        stmt = stmt.where(Message.conversation_id.in_(matching))
    if (direction := args.get("direction")) in ("inbound", "outbound"):
        filters["direction"] = direction
        stmt = stmt.where(Message.direction == Direction(direction))
    if status := (args.get("status") or "").strip():
        filters["status"] = status
        stmt = stmt.where(or_(Message.status == status, Message.disposition == status))
    for name, op in (("since", "ge"), ("until", "lt")):
        raw = (args.get(name) or "").strip()
        if not raw:
            continue
        try:
            day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            flash(f"{name}: use YYYY-MM-DD", "error")
            continue
        filters[name] = raw
        if op == "ge":
            stmt = stmt.where(Message.created_at >= day)
        else:
            stmt = stmt.where(Message.created_at < day + timedelta(days=1))
    return stmt, filters


@bp.get("/log")
def log():
    stmt, filters = _log_query()
    columns = (Message.created_at, Message.id)
    page = keyset_page(stmt, columns, lambda m: (m.created_at, m.id))
    lines = [e.line for e in staff.listing()]
    return render_template(
        "admin/log.html", page=page, filters=filters, lines=lines, action=ActionForm()
    )


LOG_COLUMNS = (
    "time",
    "direction",
    "line",
    "contact",
    "from",
    "to",
    "body",
    "media",
    "twilio_sid",
    "status",
    "error_code",
    "disposition",
    "recovered",
)


@bp.get("/log.csv")
def log_csv():
    stmt, _filters = _log_query()
    stmt = stmt.with_only_columns(
        Message.created_at,
        Message.direction,
        Conversation.line,
        Conversation.contact,
        Message.sender,
        Message.recipient,
        Message.body,
        Message.media_json,
        Message.twilio_sid,
        Message.status,
        Message.error_code,
        Message.disposition,
        Message.recovered,
        maintain_column_froms=True,
    )
    stmt = stmt.order_by(Message.created_at.desc(), Message.id.desc())

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def flush() -> str:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            return text

        writer.writerow(LOG_COLUMNS)
        yield flush()
        # A reader: on SQLite it holds no write lock however long the download takes.
        read_only()
        result = db.session.execute(stmt, execution_options={"yield_per": 500})
        try:
            for row in result:
                media = " ".join(m["url"] for m in json.loads(row.media_json or "[]"))
                writer.writerow(
                    [
                        when_filter(row.created_at),
                        row.direction.value,
                        row.line,
                        row.contact,
                        row.sender,
                        row.recipient,
                        row.body,
                        media,
                        row.twilio_sid or "",
                        row.status,
                        row.error_code or "",
                        row.disposition.value if row.disposition else "",
                        "yes" if row.recovered else "",
                    ]
                )
                yield flush()
        finally:
            result.close()  # also when the browser goes away mid-download

    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="consentline-log-{stamp}.csv"'},
    )


@bp.get("/contacts/<int:conversation_id>/evidence.zip")
def conversation_bundle(conversation_id: int):
    conv = db.session.get(Conversation, conversation_id) or abort(404)
    out = io.BytesIO()
    bundle.build(phones.bare(conv.contact), conv.line, out)
    stamp = utcnow().strftime("%Y%m%d")
    name = f"evidence-{phones.bare(conv.contact).lstrip('+')}-{stamp}.zip"
    return Response(
        out.getvalue(),
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/health")
def health():
    findings = doctor.check(http_client=current_app.config.get("TWILIO_HTTP_CLIENT"))
    errors = sum(f.level == doctor.ERROR for f in findings)
    return render_template("admin/health.html", findings=findings, errors=errors)


@bp.post("/evidence/checkpoint")
def evidence_checkpoint():
    if not ActionForm().validate_on_submit():
        abort(400)
    key = ledger.signer()
    if key is None:
        flash("Evidence is unsigned: set EVIDENCE_SIGNING_KEY (flask audit keygen).", "error")
        return redirect(url_for("admin.dashboard"))
    try:
        record, new = ledger.checkpoint(key)
    except ledger.Refused as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.dashboard"))
    if new:
        flash(f"Checkpoint {record.id} signed: {record.size} records.", "info")
    else:
        flash(f"Nothing new since checkpoint {record.id}.", "info")
    return redirect(url_for("admin.dashboard"))


@bp.post("/log/verify")
def log_verify():
    if not ActionForm().validate_on_submit():
        abort(400)
    db.session.rollback()
    report = evidence.verify()
    ledger.record_verify(report)
    return render_template("admin/verify.html", report=report)
