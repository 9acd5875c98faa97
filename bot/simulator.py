"""The two-phone simulator: be a contact and an employee without a phone.

Each text is signed like Twilio signs it and posted to ``/twilio/sms`` inside
the app, so it takes exactly the path a real text takes and leaves the same
records; the phones show what each side would have received.
"""

import secrets

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import or_, select
from twilio.request_validator import RequestValidator

from bot import phones
from bot.auth import login_required
from bot.extensions import db
from bot.forms import ActionForm, SimulatorForm
from bot.models import Direction, Employee, Message, utcnow

bp = Blueprint("simulator", __name__, url_prefix="/simulator")

DEFAULT_CONTACT = "+14155550142"
WEBHOOK = "/twilio/sms"


@bp.before_request
@login_required
def require_login_and_switch():
    if not current_app.config["SIMULATOR_ENABLED"]:
        abort(404)


def _state() -> tuple[Employee | None, str, bool, str | None]:
    """The simulated employee, contact number, channel and start of the view."""
    active = db.session.execute(
        select(Employee).where(Employee.active.is_(True)).order_by(Employee.name)
    ).scalars()
    active = list(active)
    chosen = next((e for e in active if e.id == session.get("sim_employee")), None)
    employee = chosen or (active[0] if active else None)
    return (
        employee,
        session.get("sim_contact", DEFAULT_CONTACT),
        bool(session.get("sim_whatsapp")),
        session.get("sim_since"),
    )


def deliver(sender: str, to: str, body: str, media_url: str | None = None) -> int:
    """Post one text to the webhook as Twilio would (signed); answer the status code."""
    params = {
        "MessageSid": "SM" + secrets.token_hex(16),
        "AccountSid": current_app.config.get("TWILIO_ACCOUNT_SID") or "AC" + "0" * 32,
        "From": sender,
        "To": to,
        "Body": body,
        "NumMedia": "1" if media_url else "0",
    }
    if media_url:
        params |= {"MediaUrl0": media_url, "MediaContentType0": "image/jpeg"}
    base = current_app.config["PUBLIC_BASE_URL"] or "http://localhost"
    token = current_app.config.get("TWILIO_AUTH_TOKEN") or ""
    signature = RequestValidator(token).compute_signature(base + WEBHOOK, params)
    db.session.commit()  # hold no lock while the webhook takes its own
    response = current_app.test_client().post(
        WEBHOOK, data=params, headers={"X-Twilio-Signature": signature}, base_url=base
    )
    return response.status_code


def _phone_messages(employee: Employee, contact: str, since: str | None):
    """What each phone sent and received on this line since the view was reset."""
    stmt = select(Message).order_by(Message.id)
    if since:
        stmt = stmt.where(Message.id > int(since))
    contact_view, employee_view = [], []
    for message in db.session.execute(
        stmt.where(
            or_(
                Message.sender.in_([contact, employee.cell]),
                Message.recipient.in_([contact, employee.cell]),
            )
        )
    ).scalars():
        mine = message.direction is Direction.INBOUND
        if contact in (message.sender, message.recipient):
            contact_view.append((message, mine))
        if employee.cell in (message.sender, message.recipient) and (
            phones.bare(message.recipient) == employee.line
            or phones.bare(message.sender) == employee.line
        ):
            employee_view.append((message, mine))
    return contact_view, employee_view


@bp.get("/")
def index():
    employee, contact, whatsapp, since = _state()
    address = phones.on_channel(
        contact, phones.Channel.WHATSAPP if whatsapp else phones.Channel.SMS
    )
    views = _phone_messages(employee, address, since) if employee else ([], [])
    employees = db.session.execute(
        select(Employee).where(Employee.active.is_(True)).order_by(Employee.name)
    ).scalars()
    return render_template(
        "simulator/index.html",
        employee=employee,
        employees=list(employees),
        contact=contact,
        address=address,
        whatsapp=whatsapp,
        contact_view=views[0],
        employee_view=views[1],
        contact_form=SimulatorForm(prefix="contact"),
        employee_form=SimulatorForm(prefix="employee"),
        action=ActionForm(),
    )


@bp.post("/send/<side>")
def send(side: str):
    employee, contact, whatsapp, _since = _state()
    if employee is None or side not in ("contact", "employee"):
        abort(404)
    form = SimulatorForm(prefix=side)
    if not form.validate_on_submit():
        problems = [problem for errors in form.errors.values() for problem in errors]
        flash("The text could not be sent: " + "; ".join(problems), "error")
        return redirect(url_for("simulator.index"))
    channel = phones.Channel.WHATSAPP if whatsapp else phones.Channel.SMS
    if side == "contact":
        sender = phones.on_channel(contact, channel)
        to = phones.on_channel(employee.line, channel)
    else:
        sender, to = employee.cell, employee.line
    status = deliver(sender, to, form.body.data or "", form.media_url.data or None)
    if status != 200:
        flash(f"The webhook answered {status}.", "error")
    return redirect(url_for("simulator.index") + f"#{side}")


@bp.post("/setup")
def setup():
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        employee_id = int(request.form.get("employee", "0"))
    except ValueError:
        abort(400)
    raw = request.form.get("contact") or DEFAULT_CONTACT
    try:
        number = phones.to_e164(raw, current_app.config["DEFAULT_REGION"])
    except phones.InvalidNumber as exc:
        flash(str(exc), "error")
        return redirect(url_for("simulator.index"))
    session["sim_employee"] = employee_id
    session["sim_contact"] = number
    session["sim_whatsapp"] = request.form.get("whatsapp") == "on"
    return redirect(url_for("simulator.index"))


@bp.post("/reset")
def reset():
    if not ActionForm().validate_on_submit():
        abort(400)
    last = db.session.execute(select(Message.id).order_by(Message.id.desc()).limit(1)).scalar()
    session["sim_since"] = str(last or 0)
    flash(f"Phones cleared at {utcnow():%H:%M:%S}; the log keeps everything.", "info")
    return redirect(url_for("simulator.index"))
