"""SPEC §7 signatures: only requests Twilio signed for this URL change anything."""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from bot.extensions import db
from bot.models import Attestation, Conversation, Message
from bot.webhooks import signature_matches
from support import CONTACT, LINE, TOKEN, Twilio

PARAMS = {"MessageSid": "SM" + "1" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}


def nothing_written(app) -> bool:
    with app.app_context():
        return all(
            db.session.execute(select(func.count()).select_from(model)).scalar() == 0
            for model in (Message, Conversation, Attestation)
        )


def sign(url: str, params: dict, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}, id="wrong"),
        pytest.param(
            {"X-Twilio-Signature": sign("http://localhost/twilio/sms", PARAMS, "other-token")},
            id="other-token",
        ),
        pytest.param(
            {"X-Twilio-Signature": sign("https://elsewhere.example/twilio/sms", PARAMS)},
            id="other-url",
        ),
        pytest.param(
            {"X-Twilio-Signature": sign("http://localhost/twilio/sms", {**PARAMS, "Body": "Hey"})},
            id="other-body",
        ),
    ],
)
def test_bad_signature_is_refused_and_changes_nothing(app, client, employee, headers, caplog):
    with caplog.at_level(logging.WARNING, logger="bot.security"):
        response = client.post("/twilio/sms", data=PARAMS, headers=headers)
    assert response.status_code == 403
    assert nothing_written(app)
    assert any("Twilio signature" in r.message for r in caplog.records)


def test_status_callback_needs_a_signature_too(app, client, employee):
    twilio = Twilio(client)
    [request, _] = twilio.sms(CONTACT, "Hi")
    response = client.post(
        "/twilio/status?ref=" + request.ref, data={"MessageSid": "SMx", "MessageStatus": "failed"}
    )
    assert response.status_code == 403
    with app.app_context():
        status = db.session.execute(select(Message.status).where(Message.ref == request.ref))
        assert status.scalar_one() == "queued"


@pytest.mark.parametrize("host", ["localhost:99999", "localhost:abc"])
def test_a_host_header_no_url_can_have_is_refused(app, client, employee, host):
    url = f"http://{host}/twilio/sms"
    response = client.post(
        "/twilio/sms",
        data=PARAMS,
        headers={"Host": host, "X-Twilio-Signature": sign(url, PARAMS)},
    )
    assert response.status_code == 403
    assert nothing_written(app)


def test_unknown_extra_parameters_are_signed_and_accepted(client, employee):
    twilio = Twilio(client)
    sent = twilio.sms(CONTACT, "Hi", FromCity="SAN FRANCISCO", SomeFutureParam="x")
    assert len(sent) == 2


@pytest.mark.parametrize("env_overrides", [{"PUBLIC_BASE_URL": "https://bot.example.com/"}])
def test_public_base_url_is_the_signed_url(client, employee):
    # The app sees http://localhost; Twilio signed the public https URL.
    public = Twilio(client, base="https://bot.example.com")
    assert len(public.sms(CONTACT, "Hi")) == 2
    local = Twilio(client)
    assert local.post("/twilio/sms", {**PARAMS, "MessageSid": "SM2"}).status_code == 403
    # Status callbacks point at the public URL too.
    [reply] = public.sms(CONTACT, "HELP")
    assert reply.status_callback.startswith("https://bot.example.com/twilio/status?ref=")


@pytest.mark.parametrize("env_overrides", [{"TRUSTED_PROXIES": "1"}])
def test_one_trusted_proxy_rebuilds_the_public_url(client, employee):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example.com"}
    twilio = Twilio(client, base="https://bot.example.com")
    response = twilio.post("/twilio/sms", PARAMS, headers=forwarded)
    assert response.status_code == 200
    assert b'statusCallback="https://bot.example.com/twilio/status?ref=' in response.data


def test_forwarded_headers_are_ignored_without_trusted_proxies(app, client, employee):
    # A forger who signs for a URL of their choosing gains nothing by claiming it.
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example.com"}
    twilio = Twilio(client, base="https://bot.example.com")
    assert twilio.post("/twilio/sms", PARAMS, headers=forwarded).status_code == 403
    assert nothing_written(app)


@pytest.mark.parametrize("env_overrides", [{"TWILIO_VALIDATE_SIGNATURE": "false"}])
def test_validation_can_be_switched_off_with_a_warning(database_url, client, employee, caplog):
    from support import make_app

    with caplog.at_level(logging.WARNING):
        make_app(database_url, TWILIO_VALIDATE_SIGNATURE="false")
    assert any("without a signature" in r.message for r in caplog.records)
    assert client.post("/twilio/sms", data=PARAMS).status_code == 200


# -- the app's check answers exactly what the library's validate() answers ---------

_URLS = st.sampled_from(
    [
        "https://bot.example.com/twilio/sms",
        "https://bot.example.com:443/twilio/sms",
        "https://bot.example.com:8443/twilio/sms",
        "http://localhost/twilio/status?ref=abc",
        "http://localhost:80/twilio/status?ref=a%20b",
        "https://bot.example.com/twilio/sms?",
        "https://bot.example.com/twilio/sms#rc=5",
        "https://BOT.example.com/twilio/sms?bodySHA256=abc",
        "https://bot.example.com//twilio/sms",
        "https://bot.example.com:99999/twilio/sms",
        "https://bot.example.com:abc/twilio/sms",
    ]
)
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    url=_URLS,
    signed_url=_URLS,
    pairs=st.lists(st.tuples(st.sampled_from(["Body", "From", "To", "X"]), _TEXT), max_size=6),
    tamper=st.sampled_from(["none", "token", "pairs", "header", "latin1", "empty"]),
    algorithm=st.sampled_from([None, "HMAC-SHA1", "HMAC-SHA256", "hmac-sha256", "MD5"]),
)
def test_the_check_agrees_with_the_librarys_validate(url, signed_url, pairs, tamper, algorithm):
    form = MultiDict(pairs)
    signer = RequestValidator("other" if tamper == "token" else TOKEN)
    try:
        signature = signer.compute_signature(signed_url, form, algorithm)
    except ValueError:  # an algorithm the library does not know
        signature = "bm90IGEgc2lnbmF0dXJl"
    if tamper == "pairs":
        form = MultiDict([*pairs, ("Body", "added")])
    elif tamper == "header":
        signature = signature[:-2] + ("A=" if signature[-2:] != "A=" else "B=")
    elif tamper == "latin1":
        signature = signature + "é"
    elif tamper == "empty":
        signature = ""
    try:
        expected = RequestValidator(TOKEN).validate(url, form, signature, algorithm)
    except ValueError:  # a port the library cannot read: refused, not an error
        expected = False
    assert signature_matches(TOKEN, url, dict(form.lists()), signature, algorithm) is expected


def test_the_check_accepts_in_one_hmac_and_refuses_as_validate_does(monkeypatch):
    url, form = "https://bot.example.com/twilio/sms", dict(MultiDict(PARAMS).lists())
    good = sign(url, PARAMS)
    signed_with_port = sign("https://bot.example.com:443/twilio/sms", PARAMS)
    computed = []
    original = RequestValidator.compute_signature

    def counting(self, uri, params, algorithm=None):
        computed.append(uri)
        return original(self, uri, params, algorithm)

    monkeypatch.setattr(RequestValidator, "compute_signature", counting)
    assert signature_matches(TOKEN, url, form, good, None) is True
    assert computed == [url]
    computed.clear()
    assert signature_matches(TOKEN, url, form, signed_with_port, None) is True
    assert computed == [url, url, "https://bot.example.com:443/twilio/sms"]
    computed.clear()
    assert signature_matches(TOKEN, url, form, "bm90IGEgc2lnbmF0dXJl", None) is False
    assert len(computed) == 3
