"""SPEC §7 forgeries: a request Twilio did not sign for this very URL is never accepted.

Goes beyond test_signatures.py: the twilio library's published test vector,
ports, query strings, parameters changed after signing, forwarded headers with
and without trusted proxies, the algorithm header, and random requests and
single-character mutations of a genuine one (hypothesis). Every refusal must be
a 403 that leaves nothing but a line on the ``bot.security`` log.
"""

import base64
import hashlib
import hmac
import itertools
import logging
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from bot.extensions import db
from bot.models import Attestation, Conversation, LoginAttempt, Message
from support import CELL, CONTACT, LINE, TOKEN, Twilio, parse_twiml

# The twilio library's published test vector (values only).
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

LOCAL = "http://localhost"
PUBLIC = "https://bot.example.com"
WRITTEN = (Message, Conversation, Attestation, LoginAttempt)
sids = itertools.count(1)


def hand_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's construction, written out: HMAC-SHA1 over URL + sorted name/value pairs."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def sign(url: str, params, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def new_params(**changes: str) -> dict[str, str]:
    """A genuine inbound text from CONTACT to Alice's line, with a fresh MessageSid."""
    params = {
        "MessageSid": f"SM{next(sids):032d}",
        "AccountSid": "AC" + "0" * 32,
        "From": CONTACT,
        "To": LINE,
        "Body": "Hi",
        "NumMedia": "0",
    }
    params.update(changes)
    return params


def post(client, path: str, params, signature: str | None, headers: dict | None = None):
    sent = dict(headers or {})
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    return client.post(path, data=MultiDict(params), headers=sent)


def counts(app) -> dict[str, int]:
    with app.app_context():
        return {
            model.__tablename__: db.session.execute(
                select(func.count()).select_from(model)
            ).scalar_one()
            for model in WRITTEN
        }


NOTHING = {model.__tablename__: 0 for model in WRITTEN}


def security_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.security" and r.levelno == logging.WARNING]


def assert_refused(app, response, caplog, before: dict[str, int] | None = None):
    """403, no row anywhere changed in number, and a warning of its own on the security log."""
    assert response.status_code == 403, response.data
    assert counts(app) == (NOTHING if before is None else before)
    [warning] = security_warnings(caplog)
    caplog.clear()  # the next refusal must log its own warning
    return warning


def assert_accepted(app, response) -> list:
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/xml"
    assert counts(app)["messages"] > 0
    return parse_twiml(response.data)


@pytest.fixture(autouse=True)
def _security_log(caplog):
    caplog.set_level(logging.WARNING, logger="bot.security")


# -- the published vector ------------------------------------------------------


def test_the_library_agrees_with_the_published_vector():
    validator = RequestValidator(VECTOR_TOKEN)
    assert hand_signature(VECTOR_TOKEN, VECTOR_URL, VECTOR_PARAMS) == VECTOR_SIGNATURE
    assert validator.compute_signature(VECTOR_URL, VECTOR_PARAMS) == VECTOR_SIGNATURE
    assert validator.validate(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)
    # Twilio may have signed the URL with the default port spelled out.
    port = VECTOR_URL.replace("mycompany.com", "mycompany.com:443")
    assert validator.validate(port, VECTOR_PARAMS, VECTOR_SIGNATURE)
    assert not validator.validate(VECTOR_URL, {**VECTOR_PARAMS, "Digits": "1235"}, VECTOR_SIGNATURE)
    assert not validator.validate(
        VECTOR_URL.replace("foo=1", "foo=2"), VECTOR_PARAMS, VECTOR_SIGNATURE
    )
    assert not RequestValidator("12346").validate(VECTOR_URL, VECTOR_PARAMS, VECTOR_SIGNATURE)


@pytest.mark.parametrize(
    "env_overrides",
    [{"TWILIO_AUTH_TOKEN": VECTOR_TOKEN, "PUBLIC_BASE_URL": "https://mycompany.com"}],
)
@pytest.mark.parametrize("path", ["/twilio/sms?foo=1&bar=2", "/twilio/status?foo=1&bar=2"])
def test_the_app_validates_the_vectors_construction_for_its_own_url(app, client, caplog, path):
    # The vector's own signature was made for /myapp.php: not for any path of ours.
    assert_refused(app, post(client, path, VECTOR_PARAMS, VECTOR_SIGNATURE), caplog)
    signature = hand_signature(VECTOR_TOKEN, "https://mycompany.com" + path, VECTOR_PARAMS)
    assert signature == sign("https://mycompany.com" + path, VECTOR_PARAMS, VECTOR_TOKEN)
    response = post(client, path, VECTOR_PARAMS, signature)
    if path.startswith("/twilio/sms"):
        # Signed, so past the 403; but a voice call's parameters carry no MessageSid.
        assert response.status_code == 400, response.data
        assert counts(app)["messages"] == 0
    else:
        assert response.status_code == 200, response.data
        assert parse_twiml(response.data) == []  # a status for no message of ours


# -- ports, paths, query strings ----------------------------------------------


@pytest.mark.parametrize(
    "env_overrides",
    [{"PUBLIC_BASE_URL": PUBLIC}, {"PUBLIC_BASE_URL": PUBLIC + ":443"}],
    ids=["public-without-port", "public-with-port"],
)
@pytest.mark.parametrize("signed_base", [PUBLIC, PUBLIC + ":443"], ids=["no-port", "port"])
def test_twilio_may_sign_the_url_with_or_without_the_default_port(
    app, client, employee, signed_base
):
    params = new_params()
    response = post(client, "/twilio/sms", params, sign(signed_base + "/twilio/sms", params))
    assert_accepted(app, response)


@pytest.mark.parametrize(
    "env_overrides", [{}, {"PUBLIC_BASE_URL": PUBLIC}], ids=["local", "public"]
)
@pytest.mark.parametrize(
    "signed_url",
    [
        PUBLIC + ":8443/twilio/sms",
        PUBLIC + ":80/twilio/sms",
        "http://bot.example.com/twilio/sms",
        "https://bot.example.org/twilio/sms",
        PUBLIC + "/twilio/sms/",
        PUBLIC + "/twilio/sms?",
        PUBLIC + "/twilio/status",
        PUBLIC + "/twilio/sms?x=1",
        LOCAL + ":8080/twilio/sms",
        "https://localhost/twilio/sms",
        LOCAL + "/twilio/sms/",
        LOCAL + "/twilio/status",
        LOCAL + "/twilio/sms#rc=5",
        LOCAL + "/Twilio/sms",
    ],
)
def test_a_signature_for_another_url_is_refused(app, client, employee, caplog, signed_url):
    params = new_params()
    assert_refused(app, post(client, "/twilio/sms", params, sign(signed_url, params)), caplog)


def test_a_signature_for_the_other_webhook_is_refused(app, client, employee, caplog):
    twilio = Twilio(client)
    [request, _] = twilio.sms(CONTACT, "Hi")
    before = counts(app)
    status = {"MessageSid": "SMout", "MessageStatus": "failed", "ErrorCode": "21610"}
    path = "/twilio/status?ref=" + request.ref
    response = post(client, path, status, sign(LOCAL + "/twilio/sms", status))
    assert_refused(app, response, caplog, before)
    params = new_params()
    response = post(client, "/twilio/sms", params, sign(LOCAL + path, params))
    assert_refused(app, response, caplog, before)
    response = post(client, "/twilio/sms", params, sign(LOCAL + "/twilio/status", params))
    assert_refused(app, response, caplog, before)


@pytest.mark.parametrize(
    "env_overrides", [{}, {"PUBLIC_BASE_URL": PUBLIC}], ids=["local", "public"]
)
def test_the_status_callbacks_query_is_part_of_the_signed_url(app, client, employee, caplog):
    base = app.config["PUBLIC_BASE_URL"] or LOCAL
    twilio = Twilio(client, base=base)
    [request, other] = twilio.sms(CONTACT, "Hi")
    assert request.status_callback == f"{base}/twilio/status?ref={request.ref}"
    path = "/twilio/status?ref=" + request.ref
    status = {"MessageSid": "SMout", "MessageStatus": "failed", "ErrorCode": "21610"}
    before = counts(app)
    for forged in (
        base + "/twilio/status",  # the query left out
        base + "/twilio/status?ref=" + other.ref,  # another message's callback
        base + path + "&ref=" + other.ref,
        base + "/twilio/status?REF=" + request.ref,
    ):
        assert_refused(app, post(client, path, status, sign(forged, status)), caplog, before)
    # A query added to the signed one, or another message's ref, changes the URL too.
    genuine = sign(base + path, status)
    for posted in (path + "&ref=" + other.ref, "/twilio/status?ref=" + other.ref, path + "&x"):
        assert_refused(app, post(client, posted, status, genuine), caplog, before)
    with app.app_context():
        found = db.session.execute(select(Message.status).where(Message.ref == request.ref))
        assert found.scalar_one() == "queued"
    # The genuine callback goes through, and is an opt-out (error 21610).
    assert post(client, path, status, genuine).status_code == 200
    with app.app_context():
        found = db.session.execute(select(Message.status).where(Message.ref == request.ref))
        assert found.scalar_one() == "failed"


@pytest.mark.parametrize(
    "env_overrides", [{}, {"PUBLIC_BASE_URL": PUBLIC}], ids=["local", "public"]
)
def test_the_inbound_webhooks_query_is_part_of_the_signed_url(app, client, employee, caplog):
    base = app.config["PUBLIC_BASE_URL"] or LOCAL
    params = new_params()
    bare = sign(base + "/twilio/sms", params)
    assert_refused(app, post(client, "/twilio/sms?line=1", params, bare), caplog)
    queried = sign(base + "/twilio/sms?line=1", params)
    assert_refused(app, post(client, "/twilio/sms", params, queried), caplog)
    assert_refused(app, post(client, "/twilio/sms?line=2", params, queried), caplog)
    assert_accepted(app, post(client, "/twilio/sms?line=1", params, queried))


@pytest.mark.parametrize(
    "env_overrides", [{}, {"PUBLIC_BASE_URL": PUBLIC}], ids=["local", "public"]
)
@pytest.mark.parametrize("query", ["token=a%2Fb", "line=caf%C3%A9", "x=%7e", "x=%41"])
def test_a_percent_encoded_query_is_validated_as_twilio_signed_it(app, client, employee, query):
    # Twilio signs the URL exactly as it requests it, percent-escapes included;
    # the same escapes decoded make another URL, whose signature is refused.
    base = app.config["PUBLIC_BASE_URL"] or LOCAL
    path = "/twilio/sms?" + query
    params = new_params()
    assert_accepted(app, post(client, path, params, sign(base + path, params)))


# -- parameters changed after signing ----------------------------------------


def _extra(params):
    return {**params, "FromCity": "SAN FRANCISCO"}


def _second_value(params):
    return [*params.items(), ("Body", "STOP")]


def _second_value_first(params):
    return [("Body", "YES"), *params.items()]


def _removed(params):
    return {k: v for k, v in params.items() if k != "NumMedia"}


def _renamed(params):
    return {("body" if k == "Body" else k): v for k, v in params.items()}


TAMPERINGS = {
    "extra-param-added": _extra,
    "opt-out-type-added": lambda p: {**p, "OptOutType": "STOP"},
    "empty-extra-param": lambda p: {**p, "X": ""},
    "second-value-added": _second_value,
    "second-value-added-first": _second_value_first,
    "param-removed": _removed,
    "param-renamed": _renamed,
    "body-changed": lambda p: {**p, "Body": "STOP"},
    "body-to-yes": lambda p: {**p, "Body": "YES"},
    "body-emptied": lambda p: {**p, "Body": ""},
    "body-trailing-space": lambda p: {**p, "Body": "Hi "},
    "body-nul": lambda p: {**p, "Body": "Hi\x00"},
    "from-changed": lambda p: {**p, "From": "+14155550124"},
    "from-to-employee": lambda p: {**p, "From": CELL},
    "to-changed": lambda p: {**p, "To": "+14155550199"},
    "sid-changed": lambda p: {**p, "MessageSid": p["MessageSid"][:-1] + "X"},
    "media-added": lambda p: {**p, "NumMedia": "1", "MediaUrl0": "https://evil.example/x"},
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_parameters_changed_after_signing_are_refused(app, client, employee, caplog, tamper):
    params = new_params()
    signature = sign(LOCAL + "/twilio/sms", params)
    assert_refused(app, post(client, "/twilio/sms", tamper(params), signature), caplog)
    assert_accepted(app, post(client, "/twilio/sms", params, signature))


def test_extra_parameters_included_in_the_signature_are_accepted(app, client, employee):
    params = new_params(FromCity="SAN FRANCISCO", ToCountry="US", SomeFutureParam="é\x01")
    params["Extra"] = ""
    assert_accepted(app, post(client, "/twilio/sms", params, sign(LOCAL + "/twilio/sms", params)))


# -- replays of a genuine request, re-cut -----------------------------------------
#
# The signature covers URL + name1 + value1 + name2 + value2 … with no separators,
# so one genuine request can be re-cut into other names and values that sort the
# same way and sign the same. Twilio's scheme allows it; what must not follow is
# a new text: a replay of a signed request changes nothing (SPEC §7 idempotency).


def recut_without_sids(params: dict[str, str]) -> dict[str, str]:
    """ "Yes Call me" → Body "Yes " and a parameter "Call me"; every SID name swallows an "S"."""
    forged = {k: v for k, v in params.items() if k not in ("MessageSid", "SmsMessageSid", "SmsSid")}
    forged["Body"], rest = params["Body"][:4], params["Body"][4:]
    forged[rest] = ""
    for name in ("MessageSid", "SmsMessageSid", "SmsSid"):
        forged[name + "S"] = params[name][1:]
    return forged


def recut_longer_sid(params: dict[str, str]) -> dict[str, str]:
    """As above, but MessageSid swallows the parameter after it: a new, well-formed id."""
    forged = {k: v for k, v in params.items() if k not in ("NumMedia",)}
    forged["Body"], rest = params["Body"][:4], params["Body"][4:]
    forged[rest] = ""
    forged["MessageSid"] = params["MessageSid"] + "NumMedia" + params["NumMedia"]
    return forged


@pytest.mark.parametrize("recut", [recut_without_sids, recut_longer_sid])
def test_a_genuine_request_re_cut_and_replayed_changes_nothing(
    app, client, employee, caplog, recut
):
    sid = "SM" + "5" * 32
    params = new_params(Body="Yes Call me", MessageSid=sid, SmsMessageSid=sid, SmsSid=sid)
    signature = sign(LOCAL + "/twilio/sms", params)
    first = post(client, "/twilio/sms", params, signature)
    assert_accepted(app, first)
    forged = recut(params)
    assert forged != params
    assert sign(LOCAL + "/twilio/sms", forged) == signature  # the scheme cannot tell
    before = counts(app)
    response = post(client, "/twilio/sms", forged, signature)
    assert response.status_code in {200, 400, 403}
    if response.status_code == 200:
        assert response.data == first.data  # answered as the replay it is
    assert counts(app) == before
    with app.app_context():
        conv = db.session.execute(
            select(Conversation).where(Conversation.contact == CONTACT)
        ).scalar_one()
        assert conv.state == "pending"  # the contact never said YES


# -- the signature header itself ----------------------------------------------


@pytest.mark.parametrize(
    ("settings_header", "make"),
    [
        pytest.param(None, lambda s: "", id="empty"),
        pytest.param(None, lambda s: s.lower(), id="lower-cased"),
        pytest.param(None, lambda s: s.rstrip("="), id="padding-stripped"),
        pytest.param(None, lambda s: s + "=", id="padding-added"),
        pytest.param(None, lambda s: s[:-2] + "==", id="truncated"),
        pytest.param(None, lambda s: base64.b64decode(s).hex(), id="hex"),
        pytest.param(None, lambda s: s + "," + s, id="listed-twice"),
        pytest.param("algorithm=HMAC_SHA256", lambda s: s, id="sha1-claimed-sha256"),
        pytest.param("algorithm=none", lambda s: "", id="algorithm-none"),
        pytest.param("algorithm=MD5", lambda s: s, id="algorithm-unknown"),
        pytest.param("key=x,algorithm=", lambda s: "", id="algorithm-empty"),
    ],
)
def test_a_mangled_signature_header_is_refused(
    app, client, employee, caplog, settings_header, make
):
    params = new_params()
    genuine = sign(LOCAL + "/twilio/sms", params)
    headers = {"X-Twilio-Webhooks-Signature-Settings": settings_header} if settings_header else {}
    response = post(client, "/twilio/sms", params, make(genuine), headers)
    assert_refused(app, response, caplog)


@pytest.mark.parametrize("env_overrides", [{"TWILIO_AUTH_TOKEN": ""}])
def test_without_a_token_even_an_empty_key_signature_is_refused(app, client, employee, caplog):
    params = new_params()
    for token in ("", TOKEN):
        response = post(client, "/twilio/sms", params, sign(LOCAL + "/twilio/sms", params, token))
        assert_refused(app, response, caplog)


# -- proxies -------------------------------------------------------------------

FORGED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "bot.example.com",
    "X-Forwarded-Port": "443",
    "X-Forwarded-For": "203.0.113.9",
}


@pytest.mark.parametrize("env_overrides", [{"TRUSTED_PROXIES": "0"}])
@pytest.mark.parametrize(
    "signed_url",
    [PUBLIC + "/twilio/sms", PUBLIC + ":443/twilio/sms", "http://bot.example.com/twilio/sms"],
)
def test_forwarded_headers_of_no_trusted_proxy_are_ignored(
    app, client, employee, caplog, signed_url
):
    params = new_params()
    response = post(client, "/twilio/sms", params, sign(signed_url, params), FORGED)
    warning = assert_refused(app, response, caplog)
    # Logged with the address the request really came from, not the claimed one.
    assert warning.remote_addr == "127.0.0.1"
    # The same request signed for the URL the app really serves goes through,
    # and the claimed host does not leak into the status callbacks either.
    response = post(client, "/twilio/sms", params, sign(LOCAL + "/twilio/sms", params), FORGED)
    for sent in assert_accepted(app, response):
        assert sent.status_callback.startswith(LOCAL + "/twilio/status?ref=")


ONE_PROXY = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "bot.example.com",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-For": "203.0.113.9",
}


@pytest.mark.parametrize("env_overrides", [{"TRUSTED_PROXIES": "1"}])
def test_one_trusted_proxy_signs_for_the_forwarded_url(app, client, employee, caplog):
    params = new_params()
    for forged in (
        LOCAL + "/twilio/sms",
        "http://bot.example.com:8443/twilio/sms",
        PUBLIC + ":9443/twilio/sms",
        "https://203.0.113.9:8443/twilio/sms",
    ):
        response = post(client, "/twilio/sms", params, sign(forged, params), ONE_PROXY)
        assert assert_refused(app, response, caplog).remote_addr == "203.0.113.9"
    # The twilio library accepts the URL with its port or without any port.
    for signed_url in (PUBLIC + ":8443/twilio/sms", PUBLIC + "/twilio/sms"):
        params = new_params()
        signature = sign(signed_url, params)
        response = post(client, "/twilio/sms", params, signature, ONE_PROXY)
        for sent in assert_accepted(app, response):
            assert sent.status_callback.startswith(PUBLIC + ":8443/twilio/status?ref=")


TWO_HOPS = {
    "X-Forwarded-Proto": "http, https",
    "X-Forwarded-Host": "evil.example, bot.example.com",
    "X-Forwarded-Port": "80, 443",
    "X-Forwarded-For": "198.51.100.66, 203.0.113.9",
}


@pytest.mark.parametrize("env_overrides", [{"TRUSTED_PROXIES": "1"}])
@pytest.mark.parametrize(
    "signed_url",
    [
        "http://evil.example/twilio/sms",
        "https://evil.example/twilio/sms",
        "http://evil.example:443/twilio/sms",
        "http://bot.example.com/twilio/sms",
        "http://bot.example.com:80/twilio/sms",
        LOCAL + "/twilio/sms",
    ],
)
def test_with_one_trusted_proxy_only_the_last_hop_counts(app, client, employee, caplog, signed_url):
    params = new_params()
    response = post(client, "/twilio/sms", params, sign(signed_url, params), TWO_HOPS)
    assert assert_refused(app, response, caplog).remote_addr == "203.0.113.9"
    response = post(client, "/twilio/sms", params, sign(PUBLIC + "/twilio/sms", params), TWO_HOPS)
    for sent in assert_accepted(app, response):
        assert sent.status_callback.startswith(PUBLIC + "/twilio/status?ref=")


@pytest.mark.parametrize(
    "env_overrides",
    [{"PUBLIC_BASE_URL": PUBLIC}, {"PUBLIC_BASE_URL": PUBLIC, "TRUSTED_PROXIES": "1"}],
    ids=["no-proxy", "one-proxy"],
)
def test_public_base_url_ignores_the_requests_own_url(app, client, employee, caplog):
    elsewhere = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "proxy.example",
        "X-Forwarded-For": "203.0.113.9",
    }
    params = new_params()
    for signed_url, headers in (
        (LOCAL + "/twilio/sms", {}),
        (LOCAL + ":80/twilio/sms", {}),
        ("https://proxy.example/twilio/sms", elsewhere),
        ("http://evil.example/twilio/sms", {"Host": "evil.example"}),
        ("https://evil.example/twilio/sms", {"Host": "evil.example", **elsewhere}),
    ):
        response = post(client, "/twilio/sms", params, sign(signed_url, params), headers)
        assert_refused(app, response, caplog)
    signature = sign(PUBLIC + "/twilio/sms", params)
    headers = {"Host": "evil.example", **elsewhere}
    for sent in assert_accepted(app, post(client, "/twilio/sms", params, signature, headers)):
        assert sent.status_callback.startswith(PUBLIC + "/twilio/status?ref=")


# -- random forgeries ------------------------------------------------------------

BASE64 = string.ascii_letters + string.digits + "+/="
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
keys = st.text(min_size=1, max_size=12)
values = st.text(max_size=40)


@st.composite
def forged_signatures(draw, params: dict[str, str]) -> str:
    """Anything but Twilio's signature of ``params`` for the app's URL."""
    return draw(
        st.one_of(
            st.text(alphabet=BASE64, max_size=40),
            st.binary(min_size=20, max_size=20).map(lambda b: base64.b64encode(b).decode()),
            st.text(min_size=1, max_size=12)
            .filter(lambda t: t != TOKEN)
            .map(lambda token: sign(LOCAL + "/twilio/sms", params, token)),
            st.dictionaries(keys, values, max_size=6)
            .filter(lambda other: other != params)
            .map(lambda other: sign(LOCAL + "/twilio/sms", other)),
            st.sampled_from(["", " ", "null", "0" * 28]),
        )
    )


@FUZZ
@given(data=st.data(), extra=st.dictionaries(keys, values, max_size=8))
def test_random_requests_with_forged_signatures_are_refused(
    app, client, employee, caplog, data, extra
):
    params = {**new_params(Body=data.draw(values)), **extra}
    signature = data.draw(forged_signatures(params))
    assume(signature != sign(LOCAL + "/twilio/sms", params))
    caplog.clear()
    assert_refused(app, post(client, "/twilio/sms", params, signature), caplog)


def mutate(text: str, data, alphabet: str | None = None) -> str:
    """``text`` with one character inserted, deleted or replaced."""
    how = data.draw(st.sampled_from(["insert", "delete", "replace"] if text else ["insert"]))
    at = data.draw(st.integers(0, len(text) - (0 if how == "insert" else 1)))
    if how == "delete":
        return text[:at] + text[at + 1 :]
    char = data.draw(st.sampled_from(alphabet) if alphabet else st.characters(codec="utf-8"))
    changed = text[:at] + char + text[at + (how == "replace") :]
    assume(changed != text)
    return changed


URL_SAFE = string.ascii_letters + string.digits + "-._~=&+%/:;,!$'()*@"


@FUZZ
@given(
    data=st.data(),
    target=st.sampled_from(["signature", "key", "value", "signed-url", "posted-query"]),
    body=st.text(max_size=30),
    query=st.text(alphabet=string.ascii_letters + string.digits + "=&", min_size=1, max_size=12),
)
def test_one_character_mutations_of_a_genuine_request_are_refused(
    app, client, employee, caplog, data, target, body, query
):
    params = new_params(Body=body)
    path = "/twilio/sms?" + query
    signed_url = LOCAL + path
    sent = dict(params)
    if target == "signature":
        signature = mutate(sign(signed_url, params), data, BASE64)
    else:
        signature = sign(signed_url, params)
    if target == "key":
        name = data.draw(st.sampled_from(sorted(params)))
        sent = {mutate(k, data) if k == name else k: v for k, v in params.items()}
    elif target == "value":
        name = data.draw(st.sampled_from(sorted(params)))
        sent[name] = mutate(params[name], data)
    elif target == "signed-url":
        signature = sign(mutate(signed_url, data), params)
    elif target == "posted-query":
        path = "/twilio/sms?" + mutate(query, data, URL_SAFE)
    caplog.clear()
    before = counts(app)
    assert_refused(app, post(client, path, sent, signature), caplog, before)
    # The genuine request, refused nothing by the forgery before it, goes through.
    genuine = post(client, "/twilio/sms?" + query, params, sign(signed_url, params))
    assert genuine.status_code == 200, genuine.data
