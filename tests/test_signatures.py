"""SPEC §7 signatures: only requests Twilio signed for this URL change anything."""

import logging

import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bot.extensions import db
from bot.models import Attestation, Conversation, Message
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


# -- the signing algorithm Twilio names in X-Twilio-Webhooks-Signature-Settings ------


@pytest.mark.parametrize(
    "algorithm, header, accepted",
    [
        ("HMAC_SHA256", "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256", True),
        ("HMAC_SHA1", "key=webhooks_sharedkey_1", True),
        ("HMAC_SHA1", "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256", False),
        ("HMAC_SHA256", "algorithm=MD5", False),
    ],
)
def test_the_signature_settings_header_names_the_algorithm(
    app, client, employee, algorithm, header, accepted
):
    url = "http://localhost/twilio/sms"
    signature = RequestValidator(TOKEN).compute_signature(url, PARAMS, algorithm)
    headers = {"X-Twilio-Signature": signature, "X-Twilio-Webhooks-Signature-Settings": header}
    response = client.post("/twilio/sms", data=PARAMS, headers=headers)
    assert response.status_code == (200 if accepted else 403)
    assert nothing_written(app) is not accepted
