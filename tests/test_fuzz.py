"""SPEC §7 fuzzing: malformed inbound webhooks that Twilio genuinely signed (hypothesis).

Every request here carries a correct signature, so it reaches the relay. Whatever
the form holds (fields missing or repeated, huge, control characters, NUL,
bogus media, odd addresses), the answer is never a 5xx:

- 200: TwiML that parses, and the text is on record (a new inbound ``messages``
  row holding that very answer, with its attestation): nothing answered is lost;
- 400: only when there is no usable sender or line, logged, and nothing written;
- 413: exactly when the body is over ``MAX_CONTENT_LENGTH``, and nothing written.
"""

import collections
import logging
import uuid
from urllib.parse import parse_qsl, quote_plus, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from bot.extensions import db
from bot.models import Attestation, Conversation, Direction, Message, RecordKind
from support import CELL, CONTACT, LINE, TOKEN, parse_twiml

URL = "http://localhost/twilio/sms"
FORM = "application/x-www-form-urlencoded"
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TRIED: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_cases_tried(request):
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        detail = ", ".join(f"{name} {n}" for name, n in sorted(TRIED.items()))
        print(f"\ntest_fuzz: {sum(TRIED.values())} webhooks posted ({detail})")


@pytest.fixture(autouse=True)
def _webhook_log(caplog):
    caplog.set_level(logging.WARNING, logger="bot.webhooks")


# -- posting and the properties every answer must have ---------------------------


def encode(pairs: list[tuple[str, str]]) -> bytes:
    return urlencode(pairs, quote_via=quote_plus).encode()


def sign(pairs) -> str:
    return RequestValidator(TOKEN).compute_signature(URL, MultiDict(pairs))


def state(app) -> tuple[int, int, int, int]:
    """The last inbound message id and the number of rows in each table written to."""
    with app.app_context():
        last = db.session.execute(
            select(func.max(Message.id)).where(Message.direction == Direction.INBOUND)
        ).scalar()
        rows = (
            db.session.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Message, Conversation, Attestation)
        )
        return (last or 0, *rows)


def deliver(app, client, caplog, pairs, counter: str, *, body=None, signature=None, token=None):
    """Post a form (signed for ``pairs`` unless told otherwise) and check every property."""
    TRIED[counter] += 1
    body = encode(pairs) if body is None else body
    headers = {"X-Twilio-Signature": sign(pairs) if signature is None else signature}
    if token is not None:
        headers["I-Twilio-Idempotency-Token"] = token
    caplog.clear()
    before = state(app)
    response = client.post("/twilio/sms", data=body, content_type=FORM, headers=headers)
    status = response.status_code
    assert status in {200, 400, 403, 413}, (status, response.data[:500])
    too_big = len(body) > app.config["MAX_CONTENT_LENGTH"]
    assert (status == 413) == too_big, (status, len(body))
    if status != 200:
        assert state(app) == before, "a refused webhook must write nothing"
        if status == 400:
            assert any("unusable inbound webhook" in r.getMessage() for r in caplog.records)
        return response
    assert response.mimetype == "text/xml"
    sent = parse_twiml(response.data)
    with app.app_context():
        new = (
            db.session.execute(
                select(Message).where(
                    Message.direction == Direction.INBOUND, Message.id > before[0]
                )
            )
            .scalars()
            .all()
        )
        assert len(new) == 1, "a 200 must leave exactly one inbound text on record"
        [message] = new
        assert message.answer == response.get_data(as_text=True)
        first = dict(reversed(pairs))  # what the app reads: the first value of each name
        assert message.body == first.get("Body", "").replace("\x00", "")
        sid = first.get("MessageSid", "")
        if sid.startswith("SM") and sid.isalnum() and len(sid) <= 64:
            assert message.twilio_sid == sid
        recorded = db.session.execute(
            select(func.count())
            .select_from(Attestation)
            .where(Attestation.message_ref == message.ref, Attestation.kind == RecordKind.MESSAGE)
        ).scalar_one()
        assert recorded == 1
        # Every text the TwiML sends is on record as queued, under its own ref.
        refs = {s.ref for s in sent}
        queued = db.session.execute(
            select(func.count()).select_from(Message).where(Message.ref.in_(refs))
        ).scalar_one()
        assert queued == len(sent)
    return response


# -- strategies ----------------------------------------------------------------

HUGE = 100_000
numbers = st.integers(200, 9999).map(lambda n: f"+1415555{n:04d}")
# Addresses a webhook can really carry, or that any reasonable relay must route.
GOOD_SENDERS = [
    CONTACT,
    CELL,
    "whatsapp:" + CONTACT,
    "whatsapp:" + CELL,
    "WhatsApp:" + CONTACT,
    "12345",  # a short code
    "ACME",  # an alphanumeric sender
    "  " + CONTACT + " ",
    "+1 (415) 555-0123",
    "+",
    "++1",
    "0",
    "not a number",
    "whatsapp:",
    "+99999999999999999999",
    LINE,
    CONTACT + "\x00",
    "\x01" + CONTACT,
]
GOOD_LINES = [
    LINE,
    LINE,
    "whatsapp:" + LINE,
    " " + LINE,
    LINE + "\x00",
    "+14155550199",  # a number that is no line
    CELL,
    "12345",
    "ACME",
    "whatsapp:",
    "+1 (415) 555-0100",
]
good_senders = st.one_of(
    st.sampled_from(GOOD_SENDERS), numbers, numbers.map("whatsapp:".__add__), st.just(CELL)
)
good_lines = st.sampled_from(GOOD_LINES)
junk = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),
    st.sampled_from(["", " ", "\x00", "\x00" * 300, "+1" + "5" * 10_000, "x" * 10_000]),
)
KEYWORDS = ["STOP", "stop ", "Stop.", "YES", "Y", "HELP", "START", "UNSTOP", "#help", "  ", ""]
ADDRESSING = [
    CONTACT + " hi",
    "whatsapp:" + CONTACT + " hi",
    "(415) 555-0123: hi",
    "415 555 0124, hi",
    "+1555 hi",
    CONTACT,
    "+999999999999 hi",
    LINE + " hi",
    CELL + " hi",
    "whatsapp: hi",
]
bodies = st.one_of(
    st.text(max_size=200),
    st.sampled_from(KEYWORDS + ADDRESSING),
    st.tuples(st.sampled_from([*ADDRESSING, "+1", "1 ", "("]), st.text(max_size=60)).map("".join),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
    st.sampled_from(["a" * HUGE, "1 " * (HUGE // 2), "\x00" * 1000, "\ufffe\uffff\x0b" * 10]),
)
sids = st.one_of(
    st.just("SM"),  # replaced by a fresh SM… sid
    st.sampled_from(["", " ", "\x00", "SM" + "x" * 100, "MM", "SMé", "SM\x00", "SM\x01"]),
)
num_media = st.sampled_from(["-1", "abc", "99999", "1", "0", "", "1.5", "٣", "1" * 50])
media_urls = st.one_of(
    st.sampled_from(
        [
            "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM0/Media/ME0",
            "",
            " ",
            "javascript:alert(1)",
            "not a url",
            "https://x.example/" + "a" * 5000,
            "https://x.example/\x00\x01",
        ]
    ),
    st.text(max_size=30),
)
opt_out_types = st.one_of(
    st.sampled_from(["STOP", "START", "HELP", "stop", " Help ", "", "GARBAGE", "STOP\x00"]),
    st.text(max_size=20),
)
field_names = st.sampled_from(["From", "To", "Body", "MessageSid", "OptOutType", "MediaUrl0"])
values = st.one_of(st.text(max_size=30), st.sampled_from([CONTACT, LINE, CELL, "STOP", ""]))


@st.composite
def webhooks(draw) -> tuple[list[tuple[str, str]], bool]:
    """A form as a list of pairs, and whether its From and To are ones a relay must route."""
    good_from = draw(st.integers(0, 5)) > 0
    good_to = draw(st.integers(0, 5)) > 0
    sid = draw(sids)
    fields = {
        "MessageSid": "SM" + uuid.uuid4().hex if sid == "SM" else sid + uuid.uuid4().hex[:8],
        # Unique per example, so a form without a usable MessageSid is never a replay.
        "AccountSid": "AC" + uuid.uuid4().hex,
        "From": draw(good_senders if good_from else junk),
        "To": draw(good_lines if good_to else junk),
        "Body": draw(bodies),
    }
    if sid in ("", " ", "\x00", "SM" + "x" * 100):
        fields["MessageSid"] = sid  # no usable id at all
    if draw(st.booleans()):
        fields["NumMedia"] = draw(num_media)
    for n in range(draw(st.integers(0, 21))):
        fields[f"MediaUrl{n}"] = draw(media_urls)
        if draw(st.booleans()):
            fields[f"MediaContentType{n}"] = draw(st.sampled_from(["image/jpeg", "", "x" * 300]))
    if draw(st.booleans()):
        fields["OptOutType"] = draw(opt_out_types)
    if draw(st.booleans()):
        fields["ProfileName"] = draw(st.text(max_size=20))
        fields["WaId"] = draw(st.text(max_size=20))
    missing = set(
        draw(
            st.sampled_from(
                [(), (), (), (), (), ("From",), ("To",), ("MessageSid",), ("Body",), ("From", "To")]
            )
        )
    )
    pairs = [(k, v) for k, v in fields.items() if k not in missing]
    repeats = [
        # Another text's MessageSid would make this a replay of it: keep each one unique.
        (k, v + uuid.uuid4().hex if k == "MessageSid" else v)
        for k, v in draw(st.lists(st.tuples(field_names, values), max_size=2))
    ]
    first = draw(st.booleans())
    pairs = repeats + pairs if first else pairs + repeats
    overridden = {k for k, _ in repeats} if first else set()
    routable = (
        good_from
        and good_to
        and sid == "SM"  # Twilio's ids only: SM/MM and 32 hex digits
        and not ({"From", "To", "MessageSid"} & (missing | overridden))
        and fields["From"].strip("\x00\x01 ") != ""
    )
    return pairs, routable


# -- the properties, on random forms -------------------------------------------------


# Header values are Latin-1 text without line breaks.
idempotency_tokens = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")),
    st.just("x" * 1000),
)


@FUZZ
@given(webhook=webhooks(), token=idempotency_tokens)
def test_a_signed_webhook_never_fails_and_never_loses_a_text(
    app, client, employee, caplog, webhook, token
):
    pairs, routable = webhook
    response = deliver(app, client, caplog, pairs, "random-forms", token=token)
    event(f"status {response.status_code}")
    if routable and response.status_code != 413:
        assert response.status_code == 200, (pairs, response.data[:300])


def valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


BAD_UTF8 = [b"\xff", b"\xfe\xfe", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88", b"\xe2\x82"]


@FUZZ
@given(
    pairs=st.lists(st.tuples(st.sampled_from(["From", "To", "Body", "X"]), values), max_size=6),
    bad=st.lists(st.sampled_from(BAD_UTF8), min_size=1, max_size=3)
    .map(b"".join)
    .filter(lambda b: not valid_utf8(b)),  # b"\xc3" + b"\x80" is "À"
    at=st.integers(0, 10_000),
    how=st.sampled_from(["intended", "url-only", "replaced", "percent-escaped"]),
)
def test_invalid_utf8_is_refused_or_rejected_never_a_failure(
    app, client, employee, caplog, pairs, bad, at, how
):
    # Twilio never sends invalid UTF-8; whatever is signed, such a body is never a 5xx.
    pairs = [("MessageSid", "SM" + uuid.uuid4().hex), ("From", CONTACT), ("To", LINE), *pairs]
    encoded = encode(pairs)
    if how == "percent-escaped":
        # Escaped, bytes that cannot start a character survive as the text of their
        # escapes (%C3%80 would decode to "À"): a form Twilio could sign.
        escaped = "".join(f"%{b:02X}" for b in bad if not 0xC0 <= b < 0xF8) or "%FF"
        body = encoded + b"&Note=" + escaped.encode()
        response = deliver(
            app, client, caplog, [*pairs, ("Note", escaped)], "invalid-utf8", body=body
        )
        assert response.status_code == 200
    else:
        cut = at % (len(encoded) + 1)
        body = encoded[:cut] + bad + encoded[cut:]
        if how == "url-only":
            signature = sign([])
        elif how == "replaced":
            # What a lenient decoder would make of it, U+FFFD for each bad byte.
            lenient = body.decode("utf-8", errors="replace")
            signature = sign(parse_qsl(lenient, keep_blank_values=True))
        else:
            signature = sign(pairs)
        response = deliver(
            app, client, caplog, pairs, "invalid-utf8", body=body, signature=signature
        )
        # Werkzeug drops a form it cannot decode: no signature over it holds, nor a sender.
        assert response.status_code in {400, 403}
    event(f"{how}: status {response.status_code}")


# -- the named cases, each tried on purpose ------------------------------------------


def form(**fields: str) -> list[tuple[str, str]]:
    pairs = {
        "MessageSid": "SM" + uuid.uuid4().hex,
        "AccountSid": "AC" + uuid.uuid4().hex,
        "From": CONTACT,
        "To": LINE,
        "Body": "Hi",
        "NumMedia": "0",
    }
    pairs.update(fields)
    return [(k, v) for k, v in pairs.items() if v is not None]


CASES = {
    "no-from": (form(From=None), 400),
    "no-to": (form(To=None), 400),
    "no-sid": (form(MessageSid=None), 400),
    "no-body": (form(Body=None), 200),
    "blank-from": (form(From=" \x00 "), 400),
    "control-only-to": (form(To="\x01\x02"), 400),
    "from-10k": (form(From="+1" + "5" * 10_000), 400),
    "to-10k": (form(To="+1" + "4" * 10_000), 400),
    "from-255": (form(From="+" + "1" * 254), 200),
    "body-100k": (form(Body="a" * HUGE), 200),
    "body-100k-from-employee": (form(From=CELL, Body=f"{CONTACT} " + "a" * HUGE), 200),
    "digits-100k-from-employee": (form(From=CELL, Body="1 " * (HUGE // 2)), 200),
    "body-100k-non-ascii": (form(Body="é" * HUGE), 413),
    "body-nul": (form(Body="Hi\x00there\x00"), 200),
    "body-controls": (form(Body="".join(map(chr, range(32))) + "\ufffe\uffff"), 200),
    "from-nul": (form(From="+1415555\x000123"), 200),
    "sid-65": (form(MessageSid="SM" + "a" * 63), 400),
    "sid-64": (form(MessageSid=("SM" + uuid.uuid4().hex * 2)[:64]), 400),
    "sid-not-hex": (form(MessageSid="SM" + "g" * 32), 400),
    "sid-mms": (form(MessageSid="MM" + uuid.uuid4().hex), 200),
    "num-media-negative": (form(NumMedia="-1"), 200),
    "num-media-abc": (form(NumMedia="abc"), 200),
    "num-media-99999": (form(NumMedia="99999"), 200),
    "num-media-1-without-url": (form(NumMedia="1"), 200),
    "media-0-to-20": (
        form(NumMedia="21", **{f"MediaUrl{n}": f"https://x.example/{n}" for n in range(21)}),
        200,
    ),
    "media-url-100k": (form(NumMedia="1", MediaUrl0="https://x.example/" + "a" * HUGE), 200),
    "whatsapp-contact": (form(From="whatsapp:" + CONTACT, To="whatsapp:" + LINE), 200),
    "whatsapp-employee": (form(From="whatsapp:" + CELL, Body=CONTACT + " hi"), 200),
    "short-code": (form(From="12345"), 200),
    "alphanumeric": (form(From="ACME"), 200),
    "unparseable": (form(From="+1 (415) CALL-NOW"), 200),
    "employee-addresses-short-code": (form(From=CELL, Body="12345 hi"), 200),
    "unknown-line": (form(To="+14155550199"), 200),
    "line-is-a-short-code": (form(To="12345"), 200),
    "opt-out-type-garbage": (form(OptOutType="GARBAGE\x00", Body="STOP"), 200),
    "opt-out-type-stop-lowercase": (form(OptOutType=" stop "), 200),
    "repeated-fields": ([*form(), ("From", "+14155550124"), ("Body", "STOP")], 200),
    "repeated-body-5000": (form() + [("Body", str(n)) for n in range(5000)], 200),
}


@pytest.mark.parametrize(("pairs", "expected"), CASES.values(), ids=CASES.keys())
def test_named_malformed_webhooks(app, client, employee, caplog, pairs, expected):
    response = deliver(app, client, caplog, pairs, "named")
    assert response.status_code == expected, response.data[:300]


def test_a_form_without_a_twilio_message_sid_is_refused_every_time(app, client, employee, caplog):
    # Without Twilio's id a signed form could be a genuine one re-cut (the signature
    # has no separators): refusing it is what keeps a replay from counting twice.
    pairs = [*form(MessageSid=None), ("Body", "STOP"), ("MediaUrl0", "https://x.example/1")]
    before = state(app)
    for _ in range(2):
        response = deliver(app, client, caplog, pairs, "named")
        assert response.status_code == 400
    assert state(app) == before
    assert any("MessageSid is missing or malformed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("extra", [-1, 0, 1, 4096])
def test_max_content_length_is_the_limit(app, client, employee, caplog, extra):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 256 * 1024  # the default
    padding = limit + extra - len(encode(form(Body="")))
    pairs = form(Body="a" * padding)
    assert len(encode(pairs)) == limit + extra
    response = deliver(app, client, caplog, pairs, "content-length")
    assert response.status_code == (413 if extra > 0 else 200)


@pytest.mark.parametrize("env_overrides", [{"TWILIO_VALIDATE_SIGNATURE": "false"}])
@pytest.mark.parametrize(
    "body",
    [b"From=\xff&To=%2B14155550100", b"\xff", b"From=%2B14155550123&To=%2B14155550100&Body=\xc3"],
)
def test_invalid_utf8_without_signature_validation_is_a_400(app, client, employee, caplog, body):
    response = deliver(app, client, caplog, [], "invalid-utf8", body=body, signature="")
    assert response.status_code == 400
