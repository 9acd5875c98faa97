"""SPEC §12 ``twilio setup``: each line's number, Messaging Service and webhooks,
through Twilio's REST API, replaced here by a local fake of that API plugged into
the twilio library's HTTP client (as ``twilio reconcile``'s tests do)."""

import json
import logging
import re
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from test_reconcile import ACCOUNT, no_network  # noqa: F401  (the fixture guards every test)
from twilio.http import HttpClient
from twilio.http.response import Response

from bot import texts
from support import LINE, TOKEN

BASE = "https://consentline.example.com"
NUMBERS = f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json"
SERVICES = "/v1/Services"
NAME = f"ConsentLine Alice {LINE}"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class FakeTwilio(HttpClient):
    """The account's numbers and Messaging Services, in memory, paged two at a time."""

    def __init__(self):
        super().__init__(logger=logging.getLogger("fake_twilio"), is_async=False)
        self.numbers = {}  # E.164 -> PN sid
        self.services = {}  # MG sid -> service dict
        self.members = {}  # MG sid -> [PN sid]
        self.failures = []  # statuses answered before the next real answer
        self.writes = []

    def own(self, number):
        self.numbers[number] = "PN" + uuid.uuid4().hex
        return self.numbers[number]

    def service(self, name, **fields):
        sid = "MG" + uuid.uuid4().hex
        self.services[sid] = {"sid": sid, "friendly_name": name, **fields}
        self.members[sid] = []
        return sid

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, **_):
        parts = urlsplit(uri)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query.update({k: str(v) for k, v in (params or {}).items()})
        if auth != (ACCOUNT, TOKEN):
            return self.error(401, 20003, "Authenticate")
        if self.failures:
            status = self.failures.pop(0)
            return self.error(status, 20429 if status == 429 else 20500, "try later")
        path = parts.path
        if method != "GET":
            self.writes.append((method, path, dict(data or {})))
        if parts.netloc == "api.twilio.com" and path == NUMBERS:
            found = [
                {"sid": sid, "phone_number": number, "account_sid": ACCOUNT}
                for number, sid in self.numbers.items()
                if number == query.get("PhoneNumber")
            ]
            body = {"incoming_phone_numbers": found, "next_page_uri": None, "page": 0}
            return Response(200, json.dumps(body))
        assert parts.netloc == "messaging.twilio.com", uri
        if path == SERVICES and method == "GET":
            return self.page(uri, query, list(self.services.values()), "services")
        if path == SERVICES and method == "POST":
            sid = self.service(data["FriendlyName"])
            return self.update(sid, data, 201)
        match = re.fullmatch(r"/v1/Services/(MG\w+)(/PhoneNumbers(?:/(PN\w+))?)?", path)
        sid, numbers, number = match.groups()
        if not numbers and method == "POST":
            return self.update(sid, data, 200)
        if numbers and method == "GET":
            held = [{"sid": pn, "service_sid": sid} for pn in self.members[sid]]
            return self.page(uri, query, held, "phone_numbers")
        if numbers and method == "POST":
            pn = data["PhoneNumberSid"]
            if any(pn in held for held in self.members.values()):
                return self.error(409, 21710, "Phone Number is already in a Messaging Service")
            self.members[sid].append(pn)
            return Response(201, json.dumps({"sid": pn, "service_sid": sid}))
        if number and method == "DELETE":
            self.members[sid].remove(number)
            return Response(204, "")
        return self.error(404, 20404, "not found")

    def update(self, sid, data, status):
        for key, value in data.items():
            value = {"true": True, "false": False}.get(value, value)
            self.services[sid][snake(key)] = value
        return Response(status, json.dumps(self.services[sid]))

    def page(self, uri, query, records, key):
        size, number = 2, int(query.get("Page", 0))
        chunk = records[number * size : (number + 1) * size]
        url = uri.split("?")[0]
        following = None
        if (number + 1) * size < len(records):
            following = url + "?" + urlencode({"PageSize": size, "Page": number + 1})
        meta = {"page": number, "page_size": size, "next_page_url": following, "key": key}
        meta |= {"first_page_url": url, "previous_page_url": None, "url": uri}
        return Response(200, json.dumps({key: chunk, "meta": meta}))

    @staticmethod
    def error(status, code, message):
        return Response(status, json.dumps({"code": code, "message": message, "status": status}))


@pytest.fixture
def api(app):
    app.config.update(
        TWILIO_ACCOUNT_SID=ACCOUNT,
        PUBLIC_BASE_URL=BASE,
        TWILIO_BACKOFF=0,
        TWILIO_HTTP_CLIENT=FakeTwilio(),
    )
    return app.config["TWILIO_HTTP_CLIENT"]


def setup(runner, *args):
    return runner.invoke(args=["twilio", "setup", *args])


def wanted():
    return {
        "inbound_request_url": f"{BASE}/twilio/sms",
        "inbound_method": "POST",
        "fallback_url": f"{BASE}/twilio/sms",
        "fallback_method": "POST",
        "status_callback": f"{BASE}/twilio/status",
        "use_inbound_webhook_on_number": False,
    }


def test_from_an_empty_account_it_shows_then_makes_then_finds_nothing(api, runner, employee):
    api.own(LINE)
    shown = setup(runner)
    assert shown.exit_code == 0, shown.output
    assert f"would create Messaging Service {NAME!r}" in shown.output
    assert f"would put {LINE} in Messaging Service" in shown.output
    assert "run again with --apply" in shown.output
    assert api.writes == []  # nothing changed without --apply
    made = setup(runner, "--apply")
    assert made.exit_code == 0, made.output
    [service] = api.services.values()
    assert service["friendly_name"] == NAME
    assert {k: service[k] for k in wanted()} == wanted()
    assert api.members[service["sid"]] == [api.numbers[LINE]]
    writes = len(api.writes)
    again = setup(runner, "--apply")
    assert again.exit_code == 0 and "nothing to change" in again.output
    assert len(api.writes) == writes  # the second run changes nothing
    assert "Advanced Opt-Out" in again.output and "remove YES" in again.output
    confirmation = texts.render(
        texts.DEFAULTS["opt_out.to_contact"],
        {"employee_name": "Alice", "company_name": "Acme Plumbing"},
    )
    assert f"{NAME!r}: opt-out confirmation, paste exactly: {confirmation}" in again.output


def test_a_partial_set_up_is_completed(api, runner, employee):
    pn = api.own(LINE)
    wrong = wanted() | {"inbound_request_url": "https://old.example.com/sms"}
    sid = api.service(NAME, **wrong)
    other = api.service("Marketing")
    api.members[other].append(pn)
    for n in range(3):  # more services than a page
        api.service(f"Unrelated {n}")
    result = setup(runner, "--apply")
    assert result.exit_code == 0, result.output
    assert "done: set inbound_request_url" in result.output
    assert "done: take" in result.output and "'Marketing'" in result.output
    assert api.services[sid]["inbound_request_url"] == f"{BASE}/twilio/sms"
    assert api.members[other] == [] and api.members[sid] == [pn]
    assert len(api.services) == 5  # reused, not created again


def test_a_number_not_in_the_account_is_named(api, runner, employee):
    result = setup(runner)
    assert result.exit_code != 0
    assert f"{LINE} is not a number of this Twilio account" in result.output


def test_wrong_credentials_and_urls_are_said_plainly(api, app, runner, employee):
    api.own(LINE)
    app.config["TWILIO_AUTH_TOKEN"] = "wrong"
    app.config["TWILIO_VALIDATE_SIGNATURE"] = False
    result = setup(runner)
    assert result.exit_code != 0 and "refused the credentials" in result.output
    app.config["TWILIO_AUTH_TOKEN"] = TOKEN
    app.config["PUBLIC_BASE_URL"] = None
    result = setup(runner)
    assert result.exit_code != 0 and "PUBLIC_BASE_URL is not set" in result.output
    app.config["PUBLIC_BASE_URL"] = "http://consentline.example.com"
    result = setup(runner)
    assert result.exit_code != 0 and "must be https" in result.output


def test_rate_limits_and_server_errors_are_retried(api, runner, employee):
    api.own(LINE)
    api.failures = [429, 503, 429]
    result = setup(runner, "--apply")
    assert result.exit_code == 0, result.output
    assert len(api.services) == 1
    api.failures = [429] * 10  # beyond the tries: said, not hidden
    result = setup(runner)
    assert result.exit_code != 0 and "too many requests" in result.output


# -- twilio doctor and the Health page ---------------------------------------------------


def doctor(runner):
    return runner.invoke(args=["twilio", "doctor"])


def test_a_set_up_account_passes_the_doctor_with_warnings_only(api, app, runner, employee):
    api.own(LINE)
    assert setup(runner, "--apply").exit_code == 0
    app.config["SECRET_KEY"] = "x" * 40
    result = doctor(runner)
    assert result.exit_code == 0, result.output
    assert "ok      Twilio accepts the credentials" in result.output
    assert f"ok      {LINE}: webhook, status callback and fallback set" in result.output
    assert "WARNING evidence is unsigned" in result.output  # a warning: exit status 0


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"TWILIO_VALIDATE_SIGNATURE": False}, "Twilio's signatures are not checked"),
        ({"PUBLIC_BASE_URL": None}, "PUBLIC_BASE_URL is not set"),
        ({"SECRET_KEY": None}, "SECRET_KEY is missing"),
        ({"SIMULATOR_ENABLED": True}, "the simulator is on in production"),
        ({"TWILIO_AUTH_TOKEN": "wrong"}, "Twilio refused the credentials"),
    ],
    ids=["signatures-off", "no-public-url", "no-secret-key", "simulator-on", "wrong-token"],
)
def test_each_misconfiguration_is_an_error_with_its_fix(api, app, runner, employee, change, said):
    api.own(LINE)
    assert setup(runner, "--apply").exit_code == 0
    app.config["SECRET_KEY"] = "x" * 40
    app.config.update(change)
    result = doctor(runner)
    assert result.exit_code != 0
    assert f"ERROR   {said}" in result.output
    assert "fix: " in result.output


def test_a_line_set_up_wrong_and_a_failing_cell_are_errors(api, app, runner, employee, twilio):
    from sqlalchemy import update

    from bot.extensions import db
    from bot.models import Message
    from support import CELL, CONTACT

    api.own(LINE)
    assert setup(runner, "--apply").exit_code == 0
    [sid] = api.services
    api.services[sid]["status_callback"] = "https://old.example.com/status"
    app.config["PUBLIC_BASE_URL"] = None  # the test client signs for http://localhost
    twilio.sms(CONTACT, "Hi")
    app.config["PUBLIC_BASE_URL"] = BASE
    with app.app_context():
        db.session.execute(
            update(Message)
            .where(Message.recipient == CELL)
            .values(status="failed", error_code="21610")
        )
        db.session.commit()
    result = doctor(runner)
    assert result.exit_code != 0
    assert f"{LINE}: set-up would set status_callback" in result.output
    assert f"texts to Alice's cell {CELL} failed lately (error 21610)" in result.output


def test_the_health_page_shows_the_same(api, app, client, employee):
    import re

    api.own(LINE)
    app.config["PASSWORD_HASH_METHOD"] = "scrypt:16384:8:1"
    runner = app.test_cli_runner()
    assert (
        runner.invoke(
            args=["admins", "create", "a@example.com", "--password-stdin"],
            input="a long password 1",
        ).exit_code
        == 0
    )
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*?value="([^"]+)"', page).group(1)
    client.post(
        "/login",
        data={"csrf_token": token, "email": "a@example.com", "password": "a long password 1"},
    )
    health = client.get("/health").get_data(as_text=True)
    assert "set-up would create Messaging Service" in health
    assert "twilio setup --apply" in health
