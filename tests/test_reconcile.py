"""SPEC §9 ``twilio reconcile``: lost webhooks recovered through Twilio's REST API.

Twilio is replaced by ``FakeTwilio``, a local fake of its REST API plugged in as
the twilio library's HTTP client; a guard on sockets makes sure nothing else
could have reached the network.
"""

import json
import logging
import socket
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import select
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response

from bot import reconcile, texts
from bot.consent import State
from bot.extensions import db
from bot.models import Attestation, Conversation, Direction, Message, RecordKind
from support import CELL, CONTACT, LINE, OTHER, TOKEN

ACCOUNT = "AC" + "0123456789abcdef" * 2
API = f"/2010-04-01/Accounts/{ACCOUNT}"
SINCE = "2024-05-01"
T0 = datetime(2024, 5, 2, 9, 0, tzinfo=UTC)
WA_LINE, WA_CONTACT = "whatsapp:" + LINE, "whatsapp:" + CONTACT
D = texts.DEFAULTS
ALICE = {"employee_name": "Alice", "company_name": "Acme Plumbing"}


def text(key: str) -> str:
    return texts.render(D[key], ALICE)


class FakeTwilio(HttpClient):
    """Twilio's REST API for Messages, in memory: paged listing, media, and sending.

    Lists newest first as Twilio does, ``page_size`` records a page, following
    ``next_page_uri``; filters by ``To`` and ``DateSent>`` (on or after).
    ``refuse[to] = (status, code)`` makes sends to ``to`` fail with Twilio's error JSON.
    """

    def __init__(self, page_size: int = 2):
        super().__init__(logger=logging.getLogger("fake_twilio"), is_async=False)
        self.page_size = page_size
        self.records: list[dict] = []
        self.media: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.sent: list[dict] = []
        self.refuse: dict[str, tuple[int, int]] = {}
        self.broken_listing: set[str] = set()
        self.broken_media: set[str] = set()
        self.on_media = lambda sid: None

    # -- what Twilio has -----------------------------------------------------------

    def message(self, sender, to, body="", at=T0, direction="inbound", media=(), sid=None):
        sid = sid or ("MM" if media else "SM") + uuid.uuid4().hex
        stamp = format_datetime(at, usegmt=True)
        self.records.append(
            {
                "account_sid": ACCOUNT,
                "api_version": "2010-04-01",
                "sid": sid,
                "from": sender,
                "to": to,
                "body": body,
                "direction": direction,
                "status": "received" if direction == "inbound" else "delivered",
                "num_media": str(len(media)),
                "num_segments": "1",
                "date_created": stamp,
                "date_sent": stamp,
                "date_updated": stamp,
                "error_code": None,
                "error_message": None,
                "messaging_service_sid": None,
                "price": None,
                "price_unit": "USD",
                "uri": f"{API}/Messages/{sid}.json",
                "subresource_uris": {"media": f"{API}/Messages/{sid}/Media.json"},
            }
        )
        self.media[sid] = [
            {
                "sid": f"ME{n:032x}",
                "account_sid": ACCOUNT,
                "parent_sid": sid,
                "content_type": content_type,
                "uri": f"{API}/Messages/{sid}/Media/ME{n:032x}.json",
            }
            for n, content_type in enumerate(media)
        ]
        return sid

    # -- the HTTP side ---------------------------------------------------------------

    def request(
        self,
        method,
        uri,
        params=None,
        data=None,
        headers=None,
        auth=None,
        timeout=None,
        allow_redirects=False,
    ):
        parts = urlsplit(uri)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query.update({k: str(v) for k, v in (params or {}).items()})
        self.requests.append((method, parts.path, query))
        assert (parts.scheme, parts.netloc) == ("https", "api.twilio.com"), uri
        if auth != (ACCOUNT, TOKEN):
            return self._error(401, 20003, "Authenticate")
        if method == "GET" and parts.path == f"{API}/Messages.json":
            return self._list(parts.path, query)
        if method == "GET" and parts.path.endswith("/Media.json"):
            sid = parts.path.split("/")[-2]
            self.on_media(sid)
            if sid in self.broken_media:
                return self._error(500, 20500, "Internal Server Error")
            return self._page(parts.path, {}, self.media[sid], "media_list")
        if method == "POST" and parts.path == f"{API}/Messages.json":
            return self._create(data or {})
        return self._error(404, 20404, "The requested resource was not found")

    def _list(self, path, query):
        if query.get("To") in self.broken_listing:
            return self._error(500, 20500, "Internal Server Error")
        since = query.get("DateSent>")
        records = [
            r
            for r in self.records
            if r["to"] == query.get("To")
            and (since is None or self._when(r) >= datetime.fromisoformat(since))
        ]
        records.sort(key=self._when, reverse=True)
        return self._page(path, query, records, "messages")

    def _page(self, path, query, records, key):
        size = int(query.get("PageSize", self.page_size))
        size = min(size, self.page_size)
        number = int(query.get("Page", 0))
        chunk = records[number * size : (number + 1) * size]
        base = {k: v for k, v in query.items() if k not in ("Page", "PageToken", "PageSize")}
        following = None
        if (number + 1) * size < len(records):
            following = f"{path}?" + urlencode(
                {**base, "PageSize": size, "Page": number + 1, "PageToken": f"PA{number + 1}"}
            )
        payload = {
            key: chunk,
            "page": number,
            "page_size": size,
            "start": number * size,
            "end": number * size + len(chunk) - 1,
            "first_page_uri": f"{path}?" + urlencode({**base, "PageSize": size, "Page": 0}),
            "next_page_uri": following,
            "previous_page_uri": None,
            "uri": f"{path}?" + urlencode({**query, "PageSize": size}),
        }
        return Response(200, json.dumps(payload))

    def _create(self, data):
        self.sent.append(data)
        if data["To"] in self.refuse:
            status, code = self.refuse[data["To"]]
            return self._error(status, code, f"refused with {code}")
        sid = "SM" + uuid.uuid4().hex
        record = {
            "sid": sid,
            "account_sid": ACCOUNT,
            "from": data.get("From"),
            "to": data["To"],
            "body": data.get("Body", ""),
            "direction": "outbound-api",
            "status": "queued",
            "num_media": str(len(data.get("MediaUrl", []) or [])),
            "date_created": format_datetime(T0 + timedelta(days=1), usegmt=True),
            "date_sent": None,
            "uri": f"{API}/Messages/{sid}.json",
        }
        return Response(201, json.dumps(record))

    @staticmethod
    def _when(record):
        return parsedate_to_datetime(record["date_sent"])

    @staticmethod
    def _error(status, code, message):
        body = {"code": code, "message": message, "more_info": "", "status": status}
        return Response(status, json.dumps(body))

    # -- what the tests look at ------------------------------------------------------

    def listings(self, to: str) -> list[dict]:
        return [
            q
            for m, p, q in self.requests
            if m == "GET" and p.endswith("/Messages.json") and q.get("To") == to
        ]

    def posted(self) -> list[tuple[str, str, str]]:
        return [(d["To"], d.get("From"), d.get("Body", "")) for d in self.sent]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only loopback and Unix sockets: a request that misses the fake fails loudly."""
    connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach the network: {address}")
        return connect(self, address)

    def resolve(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost", None):
            raise AssertionError(f"a test tried to look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.fixture
def twilio_api(app):
    app.config["TWILIO_ACCOUNT_SID"] = ACCOUNT
    fake = FakeTwilio()
    app.config["TWILIO_HTTP_CLIENT"] = fake
    return fake


def run(app, fake) -> reconcile.Report:
    with app.app_context():
        return reconcile.run(reconcile.parse_since(SINCE), http_client=fake)


def cli(runner, since=SINCE):
    return runner.invoke(args=["twilio", "reconcile", "--since", since])


def only(report: reconcile.Report) -> reconcile.LineReport:
    (line,) = report.lines
    return line


def inbound(app) -> dict[str, Message]:
    with app.app_context():
        rows = db.session.execute(
            select(Message).where(Message.direction == Direction.INBOUND).order_by(Message.id)
        ).scalars()
        found = {m.twilio_sid: m for m in rows}
        db.session.expunge_all()
        return found


def outbound(app) -> list[Message]:
    with app.app_context():
        rows = list(
            db.session.execute(
                select(Message).where(Message.direction == Direction.OUTBOUND).order_by(Message.id)
            ).scalars()
        )
        db.session.expunge_all()
        return rows


def state(app, contact=CONTACT) -> State:
    with app.app_context():
        return db.session.execute(
            select(Conversation.state).where(Conversation.contact == contact)
        ).scalar_one()


def set_mode(runner, mode: str) -> None:
    assert runner.invoke(args=["employees", "set-mode", LINE, mode]).exit_code == 0


# -- the consent flow, in order, marked recovered --------------------------------------


def test_lost_texts_run_the_consent_flow_in_order(app, runner, employee, twilio_api):
    first = twilio_api.message(CONTACT, LINE, "Is the plumber free on Monday?", at=T0)
    yes = twilio_api.message(CONTACT, LINE, "YES", at=T0 + timedelta(minutes=5))
    # Before --since: not listed at all.
    twilio_api.message(CONTACT, LINE, "old news", at=T0 - timedelta(days=3))

    result = cli(runner)

    assert result.exit_code == 0, result.output
    assert "+1 415-555-0100: 2 listed, 2 missing, 2 recovered, 5 sent, 0 failed" in result.output
    assert twilio_api.posted() == [
        (CONTACT, LINE, text("consent.contact_initiated.to_contact")),
        (CELL, LINE, text("consent.contact_initiated.to_employee")),
        (CONTACT, LINE, text("consent.contact_initiated.opted_in.to_contact")),
        (CELL, LINE, text("consent.contact_initiated.opted_in.to_employee")),
        (CELL, LINE, f"{CONTACT}: Is the plumber free on Monday?"),
    ]
    # Without PUBLIC_BASE_URL Twilio could not reach a status callback: none is sent.
    assert all("StatusCallback" not in data for data in twilio_api.sent)
    assert "PUBLIC_BASE_URL is not set" in result.output
    stored = inbound(app)
    assert list(stored) == [first, yes]
    assert all(m.recovered and m.signature_valid is None for m in stored.values())
    assert stored[first].disposition.value == "released"
    assert state(app) is State.OPTED_IN
    # Each text Twilio accepted has its SID, for the status callbacks to come.
    assert all(m.twilio_sid and m.status == "queued" for m in outbound(app))
    with app.app_context():
        notes = db.session.execute(
            select(Attestation.note).where(
                Attestation.kind == RecordKind.MESSAGE, Attestation.direction == Direction.INBOUND
            )
        ).scalars()
        assert all(note.endswith("(recovered)") for note in notes)
    verified = runner.invoke(args=["audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_status_callbacks_point_at_the_public_url(app, runner, employee, twilio_api):
    app.config["PUBLIC_BASE_URL"] = "https://bot.example.com"
    twilio_api.message(CONTACT, LINE, "Hello?")

    result = cli(runner)

    assert result.exit_code == 0 and "PUBLIC_BASE_URL" not in result.output
    callbacks = [data["StatusCallback"] for data in twilio_api.sent]
    assert len(callbacks) == 2
    assert all(c.startswith("https://bot.example.com/twilio/status?ref=") for c in callbacks)


WEBHOOK_SID = "SM" + "b" * 32


def test_texts_in_the_log_are_skipped_and_a_second_run_changes_nothing(
    app, twilio, employee, twilio_api
):
    answered = twilio.sms(CONTACT, "Hi", sid=WEBHOOK_SID)  # delivered by the webhook
    assert len(answered) == 2  # consent request and notice, as TwiML
    twilio_api.message(CONTACT, LINE, "Hi", at=T0, sid=WEBHOOK_SID)
    lost = twilio_api.message(CONTACT, LINE, "Are you there?", at=T0 + timedelta(minutes=1))

    line = only(run(app, twilio_api))

    assert (line.listed, line.missing, line.recovered, line.sent) == (2, 1, 1, 0)
    # Pending and asked less than 24 hours ago: the lost text is held, nothing is sent.
    assert not inbound(app)[WEBHOOK_SID].recovered and inbound(app)[lost].recovered
    requests_before = len(twilio_api.requests)

    again = only(run(app, twilio_api))

    assert (again.listed, again.missing, again.recovered, again.sent, again.failed) == (
        2,
        0,
        0,
        0,
        0,
    )
    assert not twilio_api.sent
    assert all(m == "GET" for m, _, _ in twilio_api.requests[requests_before:])
    assert len(inbound(app)) == 2


def test_paging_order_outbound_and_the_employees_side(app, runner, employee, twilio_api):
    """Three pages, listed newest first; processed oldest first, so 'current contact' holds."""
    set_mode(runner, "off")
    t = [T0 + timedelta(minutes=n) for n in range(6)]
    twilio_api.message(CONTACT, LINE, "one", at=t[0])
    twilio_api.message(CONTACT, LINE, "two", at=t[1])
    # The employee answers without naming the contact: it goes to the current contact.
    twilio_api.message(CELL, LINE, "answer", at=t[2])
    twilio_api.message(OTHER, LINE, "three", at=t[3])
    twilio_api.message(CELL, LINE, "second answer", at=t[4])
    # Sent by the account to the line (from another of its numbers): not an inbound text.
    twilio_api.message("+14155550199", LINE, "outbound", at=t[5], direction="outbound-api")

    line = only(run(app, twilio_api))

    assert (line.listed, line.missing, line.recovered, line.sent, line.failed) == (5, 5, 5, 5, 0)
    pages = twilio_api.listings(LINE)
    assert len(pages) == 3 and [p.get("Page", "0") for p in pages] == ["0", "1", "2"]
    # The library followed next_page_uri: the filters ride along in it.
    assert [p.get("PageToken") for p in pages] == [None, "PA1", "PA2"]
    assert all(p["DateSent>"] == "2024-05-01T00:00:00Z" for p in pages)
    assert twilio_api.posted() == [
        (CELL, LINE, f"{CONTACT}: one"),
        (CELL, LINE, f"{CONTACT}: two"),
        (CONTACT, LINE, "answer"),
        (CELL, LINE, f"{OTHER}: three"),
        (OTHER, LINE, "second answer"),
    ]
    assert len(inbound(app)) == 5


def test_whatsapp_side_of_the_line_is_reconciled_too(app, employee, twilio_api):
    twilio_api.message(WA_CONTACT, WA_LINE, "Hola")

    line = only(run(app, twilio_api))

    assert (line.listed, line.recovered, line.sent) == (1, 1, 2)
    assert [q["To"] for m, _, q in twilio_api.requests if m == "GET"] == [LINE, WA_LINE]
    assert twilio_api.posted() == [
        (WA_CONTACT, WA_LINE, text("consent.contact_initiated.to_contact")),
        (CELL, LINE, text("consent.contact_initiated.to_employee")),
    ]
    assert state(app, WA_CONTACT) is State.PENDING


def test_media_of_a_lost_mms_is_relayed(app, runner, employee, twilio_api):
    set_mode(runner, "off")
    sid = twilio_api.message(CONTACT, LINE, "the leak", media=["image/jpeg"])

    assert only(run(app, twilio_api)).sent == 1

    url = f"https://api.twilio.com{API}/Messages/{sid}/Media/ME{0:032x}"
    assert twilio_api.sent[0]["MediaUrl"] == [url]
    assert json.loads(inbound(app)[sid].media_json) == [{"url": url, "content_type": "image/jpeg"}]


# -- failures -------------------------------------------------------------------------


def test_a_refused_send_is_recorded_and_the_rest_goes_on(app, runner, employee, twilio_api):
    set_mode(runner, "off")
    twilio_api.refuse[CONTACT] = (400, 21211)
    twilio_api.message(CELL, LINE, f"{CONTACT} first", at=T0)
    twilio_api.message(CONTACT, LINE, "reply", at=T0 + timedelta(minutes=1))
    twilio_api.message(CELL, LINE, f"{OTHER} second", at=T0 + timedelta(minutes=2))

    result = cli(runner)

    assert result.exit_code == 1
    assert "3 listed, 3 missing, 3 recovered, 2 sent, 1 failed" in result.output
    assert "refused with 21211" in result.output
    assert [to for to, _, _ in twilio_api.posted()] == [CONTACT, CELL, OTHER]
    failed = [m for m in outbound(app) if m.recipient == CONTACT]
    assert [(m.status, m.error_code) for m in failed] == [("failed", "21211")]
    verified = runner.invoke(args=["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    # Recorded as failed: the next run does not send it again.
    twilio_api.sent.clear()
    assert cli(runner).exit_code == 0 and not twilio_api.sent


def test_a_send_refused_with_21610_records_the_opt_out(app, runner, employee, twilio_api):
    twilio_api.refuse[CONTACT] = (400, 21610)
    twilio_api.message(CONTACT, LINE, "Hi")

    assert cli(runner).exit_code == 1

    assert state(app) is State.OPTED_OUT


def test_a_send_that_may_pass_stays_queued_for_the_next_run(app, runner, employee, twilio_api):
    twilio_api.refuse[CELL] = (503, 20503)
    twilio_api.message(CONTACT, LINE, "Hi")

    first = cli(runner)

    assert first.exit_code == 1 and "left queued" in first.output
    assert [m.status for m in outbound(app)] == ["queued", "queued"]
    del twilio_api.refuse[CELL]
    twilio_api.sent.clear()

    second = cli(runner)

    assert second.exit_code == 0, second.output
    assert "1 listed, 0 missing, 0 recovered, 1 sent, 0 failed" in second.output
    assert twilio_api.posted() == [(CELL, LINE, text("consent.contact_initiated.to_employee"))]


def test_a_failed_listing_processes_nothing_on_that_line(app, runner, employee, twilio_api):
    twilio_api.broken_listing.add(WA_LINE)
    twilio_api.message(CONTACT, LINE, "Hi")

    result = cli(runner)

    assert result.exit_code == 1 and "listing the messages failed" in result.output
    assert not twilio_api.sent and not inbound(app)


def test_a_failed_media_read_stops_the_line_there(app, runner, employee, twilio_api):
    set_mode(runner, "off")
    mms = twilio_api.message(CONTACT, LINE, "photo", at=T0, media=["image/png"])
    twilio_api.message(CONTACT, LINE, "after the photo", at=T0 + timedelta(minutes=1))
    twilio_api.broken_media.add(mms)

    result = cli(runner)

    assert result.exit_code == 1 and f"reading the media of {mms} failed" in result.output
    # The later text waits too: processing it first would break the order.
    assert not twilio_api.sent and not inbound(app)
    twilio_api.broken_media.clear()
    assert cli(runner).exit_code == 0
    assert [body for _, _, body in twilio_api.posted()] == [
        f"{CONTACT}: photo",
        f"{CONTACT}: after the photo",
    ]


def test_a_webhook_that_arrives_during_the_run_wins(app, twilio, employee, twilio_api):
    """Its TwiML answer was delivered by Twilio: the run must not send it again."""
    late = twilio_api.message(CONTACT, LINE, "photo", media=["image/png"])
    url = f"https://api.twilio.com{API}/Messages/{late}/Media/ME{0:032x}"
    extra = {"MediaUrl0": url, "MediaContentType0": "image/png"}
    twilio_api.on_media = lambda sid: twilio.sms(CONTACT, "photo", sid=sid, **extra)

    line = only(run(app, twilio_api))

    assert (line.missing, line.recovered, line.sent, line.failed) == (1, 0, 0, 0)
    assert not twilio_api.sent
    assert not inbound(app)[late].recovered


# -- the command line -----------------------------------------------------------------


@pytest.mark.parametrize("since", ["2024-13-01", "yesterday", "01/05/2024"])
def test_bad_since(runner, twilio_api, since):
    result = cli(runner, since)
    assert result.exit_code == 2 and "use YYYY-MM-DD" in result.output
    assert not twilio_api.requests


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_missing_credentials(app, runner, employee, twilio_api, missing):
    app.config[missing] = None
    result = cli(runner)
    assert result.exit_code == 1
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required" in result.output
    assert not twilio_api.requests


def test_without_the_seam_the_real_client_has_a_timeout(app):
    app.config["TWILIO_ACCOUNT_SID"] = ACCOUNT
    with app.app_context():
        api = reconcile.client()
    assert isinstance(api.http_client, TwilioHttpClient)
    assert api.http_client.timeout == reconcile.TIMEOUT


def test_no_lines(runner, twilio_api):
    result = cli(runner)
    assert result.exit_code == 0 and "no active lines" in result.output
    assert not twilio_api.requests
