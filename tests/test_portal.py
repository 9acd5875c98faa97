"""The portal (SPEC §11): sign-in, sessions, CSRF, throttling, headers, and every view."""

import html
import io
import re
import threading
import time
import zipfile
from datetime import timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import select, update

from bot import notes
from bot.extensions import db
from bot.models import Admin, AdminSession, Attestation, Conversation, Employee, Message
from support import CELL, CONTACT, LINE, OTHER, Twilio, make_app

EMAIL, PASSWORD = "office@example.com", "correct horse battery"

GET_VIEWS = [
    "/",
    "/employees",
    "/employees/1",
    "/settings",
    "/settings/texts/help.to_contact",
    "/contacts",
    "/contacts?q=0123",
    "/contacts/1",
    "/log",
    "/log?direction=inbound&status=held",
    "/log.csv",
    "/simulator/",
    "/account/password",
]
POST_VIEWS = [
    "/logout",
    "/employees/1/deactivate",
    "/settings/texts/help.to_contact/reset",
    "/contacts/1/name",
    "/contacts/1/opt-out",
    "/hints/1/dismiss",
    "/log/verify",
    "/simulator/send/contact",
    "/simulator/setup",
    "/simulator/reset",
]


@pytest.fixture
def env_overrides():
    return {"SIMULATOR_ENABLED": "true"}


@pytest.fixture
def admin(app, runner):
    app.config["PASSWORD_HASH_METHOD"] = (
        "scrypt:16384:8:1"  # fast here; the default is pinned below
    )
    result = runner.invoke(args=["admins", "create", EMAIL, "--password-stdin"], input=PASSWORD)
    assert result.exit_code == 0, result.output
    return EMAIL


def token(client, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)


def login(client, email: str = EMAIL, password: str = PASSWORD, **kwargs):
    data = {"csrf_token": token(client), "email": email, "password": password}
    return client.post("/login", data=data, **kwargs)


@pytest.fixture
def portal(client, admin, employee):
    """A signed-in browser, with one employee and one conversation in the database."""
    Twilio(client).sms(CONTACT, "Hi there")
    assert login(client).status_code == 302
    return client


# -- access -------------------------------------------------------------------------


@pytest.mark.parametrize("path", GET_VIEWS)
def test_anonymous_get_is_sent_to_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("path", POST_VIEWS)
def test_anonymous_post_is_refused(client, admin, path):
    # Without a token CSRF stops it; with one (from the login page) the sign-in does.
    assert client.post(path).status_code == 400
    response = client.post(path, data={"csrf_token": token(client)})
    assert response.status_code == 302 and "/login" in response.headers["Location"]


@pytest.mark.parametrize("path", GET_VIEWS)
def test_signed_in_views_answer(portal, path):
    response = portal.get(path)
    assert response.status_code == 200, path
    assert response.get_data(as_text=True)


@pytest.mark.parametrize("path", POST_VIEWS)
def test_post_only_views_refuse_get(portal, path):
    assert portal.get(path).status_code == 405


@pytest.mark.parametrize("path", ["/", "/contacts", "/log", "/log.csv", "/simulator/"])
def test_get_only_views_refuse_post(portal, path):
    assert portal.post(path, data={"csrf_token": token(portal, "/")}).status_code == 405


@pytest.fixture
def another_app(database_url):
    """A second app on the same database: another worker, or this one after a restart."""
    apps = []

    def build(**env):
        apps.append(make_app(database_url, **env))
        return apps[-1]

    yield build
    for app in apps:
        with app.app_context():
            db.engine.dispose()


def test_simulator_is_off_unless_enabled(another_app, admin):
    client = another_app().test_client()
    assert login(client).status_code == 302
    assert client.get("/simulator/").status_code == 404
    assert b"Simulator" not in client.get("/").data


# -- passwords, sessions, throttling ----------------------------------------------------


def test_password_hash_uses_owasp_scrypt_cost(app, runner):
    assert app.config["PASSWORD_HASH_METHOD"] == "scrypt:131072:8:1"
    runner.invoke(args=["admins", "create", "cost@example.com", "--password-stdin"], input=PASSWORD)
    with app.app_context():
        stored = db.session.execute(select(Admin.password_hash)).scalar_one()
    assert stored.startswith("scrypt:131072:8:1$")
    assert PASSWORD not in stored


def test_admins_create_rejects_bad_input(runner, admin):
    short = runner.invoke(args=["admins", "create", "x@example.com", "--password-stdin"], input="a")
    assert short.exit_code != 0 and "at least 12 characters" in short.output
    again = runner.invoke(args=["admins", "create", EMAIL, "--password-stdin"], input=PASSWORD)
    assert again.exit_code != 0 and "already exists" in again.output
    bad = runner.invoke(args=["admins", "create", "nobody", "--password-stdin"], input=PASSWORD)
    assert bad.exit_code != 0 and "not an email address" in bad.output


def test_wrong_password_and_unknown_email_look_the_same(client, admin):
    wrong = login(client, password="not the password")
    unknown = login(client, email="who@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert b"Wrong email or password." in wrong.data and b"Wrong email or password." in unknown.data


def test_login_starts_a_new_session_with_safe_cookie(client, admin):
    client.get("/login")
    before = client.get_cookie("consentline")
    response = login(client)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert client.get_cookie("consentline").value != (before.value if before else None)


def test_a_webhook_opens_no_session_and_sets_no_cookie(twilio, employee, client, admin):
    params = {"MessageSid": "SM" + "6" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    response = twilio.post("/twilio/sms", params)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")
    # The same client's next page still gets a session, and signs in with it.
    assert login(client).status_code == 302
    assert client.get("/").status_code == 200


def test_a_page_that_read_the_empty_session_varies_on_cookie(client, admin):
    """Nothing to store, but the answer depended on the cookie (here: none, so the
    sign-in redirect): caches are told so, as Flask does."""
    response = client.get("/")
    assert response.status_code == 302 and "Set-Cookie" not in response.headers
    assert "Cookie" in response.headers.get("Vary", "")


def test_a_session_emptied_by_the_request_has_its_cookie_deleted(app):
    """The session interface's shortcut for an untouched empty session leaves the
    other cases to Flask: one emptied during the request deletes its cookie."""
    from flask import Response

    interface = app.session_interface
    with app.test_request_context("/"):
        session = interface.session_class({"sid": "x"})
        session.clear()  # modified, now empty
        response = Response()
        interface.save_session(app, session, response)
    [deleted] = response.headers.getlist("Set-Cookie")
    assert deleted.startswith("consentline=;") and "Expires=Thu, 01 Jan 1970" in deleted


def test_https_cookie_is_host_prefixed_and_secure(client, admin):
    html = client.get("/login", base_url="https://localhost").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', html).group(1)
    response = client.post(
        "/login",
        data={"csrf_token": csrf, "email": EMAIL, "password": PASSWORD},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},
    )
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-consentline=") and "Secure" in cookie
    assert "Domain" not in cookie
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_logout_ends_the_session_server_side(app, portal):
    stolen = portal.get_cookie("consentline").value
    assert portal.post("/logout", data={"csrf_token": token(portal, "/")}).status_code == 302
    with app.app_context():
        assert db.session.execute(select(AdminSession)).first() is None
    thief = app.test_client()
    thief.set_cookie("consentline", stolen)
    assert thief.get("/").status_code == 302


def test_password_change_signs_out_other_sessions(app, portal):
    other = app.test_client()
    assert login(other).status_code == 302
    data = {
        "csrf_token": token(portal, "/account/password"),
        "current": PASSWORD,
        "new": "a brand new passphrase",
        "confirm": "a brand new passphrase",
    }
    assert portal.post("/account/password", data=data).status_code == 302
    assert portal.get("/").status_code == 200  # this browser got a fresh session
    assert other.get("/").status_code == 302  # the other one is out
    assert login(app.test_client(), password="a brand new passphrase").status_code == 302
    assert login(app.test_client()).status_code == 401


def test_idle_session_times_out(app, portal):
    with app.app_context():
        session = db.session.execute(select(AdminSession)).scalar_one()
        session.last_seen_at -= timedelta(minutes=31)
        db.session.commit()
    assert portal.get("/").status_code == 302


def test_throttle_per_account_survives_a_restart(another_app, client, admin):
    for _ in range(5):
        assert login(client, password="guess").status_code == 401
    blocked = login(client)
    assert blocked.status_code == 429 and b"Too many failed sign-ins" in blocked.data
    # Another worker, or the app after a restart, sees the same count.
    restarted = another_app(SIMULATOR_ENABLED="true").test_client()
    assert login(restarted).status_code == 429


def test_throttle_per_address(client, admin):
    for n in range(20):
        assert login(client, email=f"guess{n}@example.com", password="guess").status_code == 401
    assert login(client).status_code == 429


def test_next_parameter_stays_on_this_site(client, admin):
    data = {"csrf_token": token(client), "email": EMAIL, "password": PASSWORD}
    response = client.post("/login?next=//evil.example/", data=data)
    assert response.headers["Location"] == "/"
    client.post("/logout", data={"csrf_token": token(client, "/")})
    data["csrf_token"] = token(client)
    assert client.post("/login?next=/log", data=data).headers["Location"] == "/log"


def test_csrf_token_is_required_when_signed_in(app, portal):
    response = portal.post(
        "/employees",
        data={"name": "Eve", "cell": "+14155550112", "line": "+14155550101", "mode": ""},
    )
    assert response.status_code == 400
    with app.app_context():
        assert db.session.execute(select(Employee).where(Employee.name == "Eve")).first() is None


def test_security_headers_on_every_page(client, portal):
    for response in (client.get("/login"), portal.get("/"), portal.get("/healthz")):
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "Strict-Transport-Security" not in response.headers  # plain http here
    for page in ("/", "/settings/texts/help.to_contact", "/simulator/"):
        html = portal.get(page).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page  # no inline script
        assert "style=" not in html


# -- what the pages do ---------------------------------------------------------------------


def test_employee_add_edit_deactivate(app, portal):
    data = {
        "csrf_token": token(portal, "/employees"),
        "name": "Bo <b>Li</b>",
        "cell": "(415) 555-0112",
        "line": "415 555 0101",
        "mode": "disclaimer",
    }
    assert portal.post("/employees", data=data).status_code == 302
    page = portal.get("/employees").get_data(as_text=True)
    assert "Bo &lt;b&gt;Li&lt;/b&gt;" in page and "<b>Li</b>" not in page
    assert "+1 415-555-0101" in page
    bad = dict(data, csrf_token=token(portal, "/employees"), cell="123")
    response = portal.post("/employees", data=bad)
    assert response.status_code == 400 and b"is not a valid phone number" in response.data
    with app.app_context():
        bo = db.session.execute(
            select(Employee).where(Employee.line == "+14155550101")
        ).scalar_one()
    edit = {
        "csrf_token": token(portal, f"/employees/{bo.id}"),
        "name": "Bo Li",
        "cell": "+14155550112",
        "line": "+14155550101",
        "mode": "",
    }
    assert portal.post(f"/employees/{bo.id}", data=edit).status_code == 302
    portal.post(f"/employees/{bo.id}/deactivate", data={"csrf_token": token(portal, "/")})
    with app.app_context():
        bo = db.session.get(Employee, bo.id)
        assert (bo.name, bo.mode, bo.active) == ("Bo Li", None, False)


def test_settings_and_text_preview_warnings_and_reset(portal, twilio):
    data = {
        "csrf_token": token(portal, "/settings"),
        "company_name": "Acme & Sons",
        "default_mode": "consent",
    }
    assert portal.post("/settings", data=data).status_code == 302
    path = "/settings/texts/help.to_contact"
    preview = portal.post(
        path,
        data={
            "csrf_token": token(portal, path),
            "value": "Ask {employee_name}",
            "action": "preview",
        },
    ).get_data(as_text=True)
    assert "Ask Alice" in preview
    assert "no longer uses {company_name}" in preview
    assert "no longer tells the contact how to opt out" in preview
    saved = portal.post(
        path,
        data={"csrf_token": token(portal, path), "value": "Ask {employee_name}", "action": "save"},
        follow_redirects=True,
    )
    assert b"Warning: the text no longer uses {company_name}" in saved.data
    assert [s.body for s in twilio.sms("+14155550177", "HELP")] == ["Ask Alice"]
    portal.post(path + "/reset", data={"csrf_token": token(portal, path)})
    assert twilio.sms("+14155550177", "HELP")[0].body.startswith("[Auto Message] Acme & Sons:")


def conversation_id(app, contact: str = CONTACT) -> int:
    with app.app_context():
        return db.session.execute(
            select(Conversation.id).where(Conversation.contact == contact)
        ).scalar_one()


def test_contacts_search_name_and_timeline_escape_markup(app, portal, twilio):
    twilio.sms(CONTACT, "<img src=x onerror=alert(1)>")
    cid = conversation_id(app)
    portal.post(
        f"/contacts/{cid}/name", data={"csrf_token": token(portal, "/"), "name": "Maria <i>"}
    )
    assert b"Maria &lt;i&gt;" in portal.get("/contacts?q=maria").data
    assert b"Maria" in portal.get("/contacts?q=555-0123").data
    assert b"No conversations" in portal.get("/contacts?q=nobody").data
    timeline = portal.get(f"/contacts/{cid}").get_data(as_text=True)
    assert "&lt;img src=x onerror=alert(1)&gt;" in timeline and "<img src=x" not in timeline
    assert "Consent: request sent" in timeline
    # The saved name is what the employee now sees in relays.
    twilio.sms(CONTACT, "YES")
    assert twilio.sms(CONTACT, "thanks")[0].body == "Maria <i>: thanks"


@pytest.mark.parametrize(
    "query, found",
    [
        ("(415) 555-0123", ["+14155550123", "whatsapp:+14155550123"]),  # a whole number
        ("4155550123", ["+14155550123", "whatsapp:+14155550123"]),
        ("5550124", ["+14155550124"]),  # a part of one
        ("012", ["+14155550123", "+14155550124", "whatsapp:+14155550123"]),
        ("okaf", ["+14155550124"]),  # a part of a name, any case
        ("Maria Ok", ["+14155550124"]),
        ("+1 212 555 0000", []),
        ("zzz", []),
    ],
)
def test_contacts_are_found_by_any_part_of_their_number_or_name(app, portal, twilio, query, found):
    for contact in (CONTACT, OTHER, "whatsapp:" + CONTACT, "+14155550188"):
        twilio.sms(contact, "Hi")
    portal.post(
        f"/contacts/{conversation_id(app, OTHER)}/name",
        data={"csrf_token": token(portal, "/"), "name": "Maria Okafor"},
    )
    page = portal.get("/contacts", query_string={"q": query}).get_data(as_text=True)
    with app.app_context():
        ids = {c.id: c.contact for c in db.session.execute(select(Conversation)).scalars()}
    shown = sorted(ids[int(i)] for i in re.findall(r'href="/contacts/(\d+)"', page))
    assert shown == found


def test_a_long_timeline_is_shown_in_parts(app, portal, twilio):
    twilio.sms(CONTACT, "Hi")
    twilio.sms(CONTACT, "YES")
    for n in range(100):
        twilio.sms(CONTACT, f"text {n}")  # each: the text and its relay
    cid = conversation_id(app)
    first = portal.get(f"/contacts/{cid}").get_data(as_text=True)
    seqs = [int(n) for n in re.findall(r"#(\d+) ·", first)]
    assert seqs == list(range(1, 201))
    later = html.unescape(re.search(r'<a href="([^"]+)" rel="next">Later entries', first)[1])
    rest = [int(n) for n in re.findall(r"#(\d+) ·", portal.get(later).get_data(as_text=True))]
    with app.app_context():
        length = db.session.get(Conversation, cid).chain_length
    assert rest == list(range(201, length + 1))


def test_record_an_opt_out_received_by_phone(app, portal, twilio):
    cid = conversation_id(app)
    data = {"csrf_token": token(portal, "/"), "method": "phone call", "note": "Called the office"}
    response = portal.post(f"/contacts/{cid}/opt-out", data=data, follow_redirects=True)
    assert b"Opt-out recorded" in response.data
    with app.app_context():
        event = db.session.execute(
            select(Attestation).where(Attestation.event == "opted_out")
        ).scalar_one()
        assert (event.admin, event.method, event.note) == (EMAIL, "phone call", "Called the office")
        held = db.session.execute(select(Message.disposition).where(Message.body == "Hi there"))
        assert held.scalar_one().value == "discarded"
    # It takes effect at once: the employee can no longer reach the contact.
    assert [s.to for s in twilio.sms(CELL, "Hello?")] == [None]


def test_revocation_hint_review(app, portal, twilio):
    twilio.sms(CONTACT, "YES")
    twilio.sms(CONTACT, "please stop texting me")
    twilio.sms(CONTACT, "remove me from your list")
    assert b"please stop texting me" in portal.get("/").data
    with app.app_context():
        first, second = db.session.execute(
            select(Message.id).where(Message.hint.is_(True)).order_by(Message.id)
        ).scalars()
    dismiss = {"csrf_token": token(portal, "/"), "reason": "Talking about her neighbour"}
    portal.post(f"/hints/{first}/dismiss", data=dismiss)
    empty = {"csrf_token": token(portal, "/"), "reason": ""}
    assert (
        b"Give a reason"
        in portal.post(f"/hints/{second}/dismiss", data=empty, follow_redirects=True).data
    )
    record = {"csrf_token": token(portal, "/"), "method": "other", "note": "asked in a text"}
    portal.post(f"/hints/{second}/opt-out", data=record)
    with app.app_context():
        reviews = db.session.execute(
            select(Message.review).order_by(Message.id).where(Message.hint.is_(True))
        ).scalars()
        assert list(reviews) == ["dismissed", "opted_out"]
        state = db.session.execute(
            select(Conversation.state).where(Conversation.contact == CONTACT)
        )
        assert state.scalar_one().value == "opted_out"
    assert b"Nothing waiting for review" in portal.get("/").data


@pytest.mark.parametrize("env_overrides", [{"DATABASE_BUSY_TIMEOUT": "1"}])
def test_a_log_download_holds_up_no_webhook(app, portal, twilio):
    """The CSV goes out row by row from a reader's snapshot: a webhook arriving in
    the middle of the download is answered at once (on SQLite the download takes
    no writer lock; with one, the webhook would wait out the busy timeout: 503)."""
    twilio.sms("+14155550177", "Other contact")
    download = portal.get("/log.csv", buffered=False)
    chunks = iter(download.response)
    assert next(chunks).startswith(b"time,direction,line,contact")
    first_row = next(chunks)  # the query has run: the download is mid-way
    answered = {}

    def webhook():  # as another worker would, while the download waits on its browser
        started = time.monotonic()
        answered["sent"] = Twilio(app.test_client()).sms("+14155550188", "Hello meanwhile")
        answered["seconds"] = time.monotonic() - started

    other = threading.Thread(target=webhook)
    other.start()
    other.join(timeout=30)
    assert answered["sent"] and answered["seconds"] < 0.9
    rest = b"".join(chunks)
    download.close()
    assert b"Hi there" in first_row + rest and b"Other contact" in first_row + rest
    # The download's snapshot was taken before the webhook: its text is not in it.
    assert b"Hello meanwhile" not in first_row + rest


def test_log_filters_export_and_verify(app, portal, twilio):
    twilio.sms("+14155550177", "Other contact")
    page = portal.get("/log?contact=0177&direction=inbound").get_data(as_text=True)
    assert "Other contact" in page and "Hi there" not in page
    csv_text = portal.get("/log.csv?contact=0177&direction=inbound").get_data(as_text=True)
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("time,direction,line,contact")
    assert len(lines) == 2 and "Other contact" in lines[1]
    assert b"Nothing matches" in portal.get("/log?since=2999-01-01").data
    assert b"use YYYY-MM-DD" in portal.get("/log?since=soon").data
    verified = portal.post("/log/verify", data={"csrf_token": token(portal, "/log")})
    assert b"The log is intact" in verified.data
    with app.app_context():
        db.session.execute(update(Attestation).where(Attestation.seq == 1).values(body="forged"))
        db.session.commit()
    broken = portal.post("/log/verify", data={"csrf_token": token(portal, "/log")})
    assert b"problem(s)" in broken.data and b"was altered" in broken.data


def test_log_pages_by_key_newest_first_every_text_once(app, portal, twilio):
    for n in range(60):
        twilio.sms(f"+141555502{n:02d}", "hello")  # 180 texts: 60 in, 120 out

    def rows_and_links(path):
        page = portal.get(path).get_data(as_text=True)
        links = dict(
            (rel, html.unescape(href))
            for href, rel in re.findall(r'<a href="([^"]+)" rel="(prev|next)"', page)
        )
        return [int(i) for i in re.findall(r'<tr id="m(\d+)">', page)], links

    pages, path = [], "/log"
    while path and len(pages) < 10:
        rows, links = rows_and_links(path)
        pages.append(rows)
        path = links.get("next")
    with app.app_context():
        total = db.session.execute(select(db.func.count(Message.id))).scalar()
    assert total >= 180 and [len(rows) for rows in pages[:-1]] == [50] * (len(pages) - 1)
    everything = [i for rows in pages for i in rows]
    assert everything == sorted(everything, reverse=True) and len(set(everything)) == total
    assert "prev" not in rows_and_links("/log")[1]
    back = []  # and back again from the last page, by the "Newer" links
    path = rows_and_links(f"/log?before={_key_of_row(app, pages[-2][-1])}")[1].get("prev")
    while path and len(back) < 10:
        rows, links = rows_and_links(path)
        back.insert(0, rows)
        path = links.get("prev")
    assert back == pages[:-1]
    assert rows_and_links("/log?before=nonsense")[0] == pages[0]  # a bad key: the first page


def _key_of_row(app, message_id: int) -> str:
    from bot.models import Message

    with app.app_context():
        message = db.session.get(Message, message_id)
        return quote(f"{message.created_at.isoformat()}~{message.id}")


def test_simulator_runs_the_consent_flow(app, portal):
    csrf = token(portal, "/simulator/")
    portal.post(
        "/simulator/setup", data={"csrf_token": csrf, "employee": "1", "contact": "4155550142"}
    )
    portal.post(
        "/simulator/send/contact", data={"contact-csrf_token": csrf, "contact-body": "Hi Alice"}
    )
    page = portal.get("/simulator/").get_data(as_text=True)
    assert "You are trying to reach Alice" in page  # on the contact's phone
    assert "A contact has attempted to send you a message" in page  # on Alice's phone
    portal.post("/simulator/send/contact", data={"contact-csrf_token": csrf, "contact-body": "YES"})
    page = portal.get("/simulator/").get_data(as_text=True)
    assert "+14155550142: Hi Alice" in page
    with app.app_context():
        sids = db.session.execute(
            select(Message.twilio_sid, Message.signature_valid).where(
                Message.direction == "inbound", Message.sender == "+14155550142"
            )
        ).all()
    assert len(sids) == 2 and all(valid for _sid, valid in sids)
    portal.post("/simulator/reset", data={"csrf_token": csrf})
    assert b"No texts yet." in portal.get("/simulator/").data


def test_a_conversation_offers_its_evidence_as_a_bundle(portal, app):
    with app.app_context():
        conv_id = db.session.execute(select(Conversation.id)).scalar_one()
    page = portal.get(f"/contacts/{conv_id}")
    assert b"Download evidence" in page.data
    download = portal.get(f"/contacts/{conv_id}/evidence.zip")
    assert download.status_code == 200 and download.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.data)) as archive:
        names = archive.namelist()
        assert "verify.py" in names and "SHA256SUMS" in names
        assert any(name.startswith("pending/") for name in names)  # no checkpoint yet


def test_the_dashboard_says_what_protects_the_evidence(portal, app):
    page = portal.get("/").get_data(as_text=True)
    assert "Evidence is unsigned" in page
    assert "has not passed verification in the last day" in page
    verified = portal.post("/log/verify", data={"csrf_token": token(portal, "/log")})
    assert b"The log is intact" in verified.data
    app.config["EVIDENCE_SIGNING_KEY"] = str(notes.generate("consentline/acme/evidence"))
    signed = portal.post(
        "/evidence/checkpoint", data={"csrf_token": token(portal, "/")}, follow_redirects=True
    )
    page = signed.get_data(as_text=True)
    assert "Checkpoint 1 signed: 4 records." in page or "Checkpoint 1 signed" in page
    assert "Evidence is unsigned" not in page
    assert "has not passed verification" not in page
    assert "No checkpoint has been witnessed in the last day" in page  # no witness configured
