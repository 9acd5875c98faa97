"""Portal sign-in: admins, hashed passwords, server-side sessions, throttling."""

import functools
import hashlib
import re
import secrets
from datetime import datetime, timedelta

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import delete, func, select
from werkzeug.security import check_password_hash, generate_password_hash

from bot.extensions import db
from bot.forms import LoginForm, PasswordForm
from bot.models import Admin, AdminSession, LoginAttempt, utcnow

bp = Blueprint("auth", __name__)

MIN_PASSWORD = 12
IDLE_TIMEOUT = timedelta(minutes=30)
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ACCOUNT = 5
MAX_FAILURES_PER_ADDRESS = 20
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Checked when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16), method="scrypt:16384:8:1")


class AuthError(ValueError):
    """A sign-in or password problem, worded for the person at the keyboard."""


class PortalSessionInterface(SecureCookieSessionInterface):
    """Cookie-held session id; ``__Host-`` prefixed and Secure whenever served over https."""

    def get_cookie_name(self, app) -> str:
        return "__Host-consentline" if request.is_secure else "consentline"

    def get_cookie_secure(self, app) -> bool:
        return request.is_secure

    def get_cookie_domain(self, app):
        return None

    def get_cookie_path(self, app) -> str:
        return "/"

    def open_session(self, app, request):
        # A request without cookies (every Twilio webhook) has no session to read:
        # skip building the signing serializer, which Flask does first.
        if app.secret_key and not request.environ.get("HTTP_COOKIE"):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response) -> None:
        # An empty session nothing read or wrote (every Twilio webhook): no cookie
        # to set or delete and no Vary, which Flask's own concludes only after
        # reading seven cookie settings, two of them through the request proxy.
        if not session and not session.modified and not session.accessed:
            return
        super().save_session(app, session, response)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=current_app.config["PASSWORD_HASH_METHOD"])


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"use at least {MIN_PASSWORD} characters")


def create_admin(email: str, password: str) -> Admin:
    """Add a portal admin (the caller commits)."""
    email = (email or "").strip().lower()
    if not _EMAIL.match(email):
        raise AuthError(f"{email!r} is not an email address")
    _check_new_password(password)
    if db.session.execute(select(Admin.id).where(Admin.email == email)).first():
        raise AuthError(f"an admin with the email {email} already exists")
    admin = Admin(email=email, password_hash=hash_password(password))
    db.session.add(admin)
    return admin


def _recent_failures(column, value: str, now: datetime) -> int:
    since = now - THROTTLE_WINDOW
    last_success = db.session.execute(
        select(func.max(LoginAttempt.at)).where(column == value, LoginAttempt.succeeded.is_(True))
    ).scalar()
    if last_success is not None and last_success > since:
        since = last_success
    return db.session.execute(
        select(func.count(LoginAttempt.id)).where(
            column == value, LoginAttempt.at > since, LoginAttempt.succeeded.is_(False)
        )
    ).scalar()


def authenticate(email: str, password: str, address: str, now: datetime) -> Admin:
    """The admin these credentials belong to; every attempt is recorded (and commits)."""
    email = (email or "").strip().lower()[:255]
    address = (address or "unknown")[:64]
    if (
        _recent_failures(LoginAttempt.email, email, now) >= MAX_FAILURES_PER_ACCOUNT
        or _recent_failures(LoginAttempt.address, address, now) >= MAX_FAILURES_PER_ADDRESS
    ):
        db.session.add(LoginAttempt(email=email, address=address, at=now, succeeded=False))
        db.session.commit()
        raise AuthError("Too many failed sign-ins. Wait 15 minutes and try again.")
    admin = db.session.execute(select(Admin).where(Admin.email == email)).scalar_one_or_none()
    valid = check_password_hash(admin.password_hash if admin else _DUMMY_HASH, password or "")
    db.session.add(
        LoginAttempt(email=email, address=address, at=now, succeeded=bool(admin and valid))
    )
    db.session.commit()
    if admin is None or not valid:
        raise AuthError("Wrong email or password.")
    return admin


def start_session(admin: Admin) -> None:
    """A fresh session id on every sign-in (no fixation), held server-side."""
    token = secrets.token_urlsafe(32)
    db.session.add(AdminSession(token_hash=_digest(token), admin_id=admin.id))
    db.session.commit()
    session.clear()
    session["sid"] = token


def end_sessions(admin_id: int, keep: str | None = None) -> None:
    """Sign an admin out everywhere (but ``keep``, a session token) (the caller commits)."""
    query = delete(AdminSession).where(AdminSession.admin_id == admin_id)
    if keep:
        query = query.where(AdminSession.token_hash != _digest(keep))
    db.session.execute(query)


def current_admin() -> Admin | None:
    """The signed-in admin, or None; an idle session expires and is removed."""
    if "admin" in g:
        return g.admin
    g.admin = None
    token = session.get("sid")
    if not token:
        return None
    row = db.session.execute(
        select(AdminSession).where(AdminSession.token_hash == _digest(token))
    ).scalar_one_or_none()
    now = utcnow()
    if row is None or now - row.last_seen_at > IDLE_TIMEOUT:
        if row is not None:
            db.session.delete(row)
            db.session.commit()
        session.clear()
        return None
    if now - row.last_seen_at > timedelta(minutes=1):
        row.last_seen_at = now
        db.session.commit()
    g.admin = row.admin
    return g.admin


@bp.app_context_processor
def signed_in_admin():
    admin = current_admin()
    return {"signed_in": admin is not None, "current_admin": admin}


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if current_admin() is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper


def _safe_next(target: str | None) -> str:
    """Only local paths: never send a signed-in admin to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        try:
            admin = authenticate(form.email.data, form.password.data, request.remote_addr, utcnow())
        except AuthError as exc:
            flash(str(exc), "error")
            return render_template("auth/login.html", form=form), 429 if "Too many" in str(
                exc
            ) else 401
        start_session(admin)
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
@login_required
def logout():
    db.session.execute(
        delete(AdminSession).where(AdminSession.token_hash == _digest(session.get("sid", "")))
    )
    db.session.commit()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    form = PasswordForm()
    if form.validate_on_submit():
        admin = current_admin()
        try:
            if not check_password_hash(admin.password_hash, form.current.data):
                raise AuthError("The current password is wrong.")
            _check_new_password(form.new.data)
        except AuthError as exc:
            flash(str(exc), "error")
            return render_template("auth/password.html", form=form), 400
        admin.password_hash = hash_password(form.new.data)
        end_sessions(admin.id)
        db.session.commit()
        start_session(admin)
        flash("Password changed. Other browsers signed in as you were signed out.", "info")
        return redirect(url_for("admin.dashboard"))
    return render_template("auth/password.html", form=form)
