"""bot.webhooks.read_form reads a webhook's form exactly as werkzeug's ``request.form``."""

from urllib.parse import quote

from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder

from bot.webhooks import URLENCODED, first_values, read_form

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = 64 * 1024


def both(body: bytes, content_type: str | None) -> tuple[dict, dict]:
    """(read_form's answer, werkzeug's ``request.form.lists()``) for one request."""
    answers = []
    for read in (read_form, lambda req: dict(req.form.lists())):
        headers = {"Content-Type": content_type} if content_type is not None else {}
        environ = EnvironBuilder(method="POST", data=body, headers=headers).get_environ()
        if content_type is None:
            environ.pop("CONTENT_TYPE", None)
        with app.request_context(environ):
            answers.append(read(request))
    return answers[0], answers[1]


# Pieces a Twilio body is made of, and the awkward ones around them: escapes that
# are not UTF-8 (%ff, a cut-off %e2%82), bare and broken %, +, =, empty pairs.
_PIECES = st.sampled_from(
    ["From", "Body", "To", "MediaUrl0", "=", "&", "&&", "+", "%", "%2", "%zz", "%20", "%2B",
     "%26", "%3D", "%ff", "%e2%82", "%e2%82%ac", "%C3%A9", "%00", "é", "😀", " ", "a", "1", ";"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    raw=st.one_of(
        st.lists(_PIECES, max_size=30).map("".join).map(str.encode),
        st.binary(max_size=200),
        st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=8).map(
            lambda pairs: "&".join(
                f"{quote(k, safe='')}={quote(v, safe='').replace('%20', '+')}" for k, v in pairs
            ).encode()
        ),
    ),
    content_type=st.sampled_from(
        [
            URLENCODED,
            URLENCODED + "; charset=utf-8",
            "Application/X-WWW-Form-Urlencoded",
            "text/plain",
            None,
        ]
    ),
)
def test_the_form_is_werkzeugs(raw, content_type):
    ours, werkzeugs = both(raw, content_type)
    assert ours == werkzeugs
    assert list(ours) == list(werkzeugs)  # the same order of names


def test_a_twilio_body_and_repeated_names():
    body = (
        b"MessageSid=SM0123&From=%2B15551230000&To=whatsapp%3A%2B15559870000"
        b"&Body=Caf%C3%A9+%26+more%3D1&MediaUrl0=https%3A%2F%2Fapi.example%2Fm%3Fa%3D1%26b%3D2"
        b"&Body=second&Flag&&Empty="
    )
    ours, werkzeugs = both(body, URLENCODED)
    assert ours == werkzeugs
    assert ours["From"] == ["+15551230000"]
    assert ours["To"] == ["whatsapp:+15559870000"]
    assert ours["Body"] == ["Café & more=1", "second"]
    assert ours["MediaUrl0"] == ["https://api.example/m?a=1&b=2"]
    assert ours["Flag"] == [""] and ours["Empty"] == [""]
    assert first_values(ours)["Body"] == "Café & more=1"


def test_a_body_that_is_not_utf8_is_an_empty_form_as_in_werkzeug():
    ours, werkzeugs = both(b"Body=caf\xe9", URLENCODED)
    assert ours == werkzeugs == {}


def test_an_escape_that_is_not_utf8_stays_escaped_as_in_werkzeug():
    ours, werkzeugs = both(b"Body=%ff%41", URLENCODED)
    assert ours == werkzeugs == {"Body": ["%FFA"]}


def test_a_multipart_body_goes_to_werkzeug():
    environ = EnvironBuilder(
        method="POST", data={"Body": "hi", "From": "+1555"}, content_type="multipart/form-data"
    ).get_environ()
    assert environ["CONTENT_TYPE"].startswith("multipart/form-data")
    with app.request_context(environ):
        assert read_form(request) == {"Body": ["hi"], "From": ["+1555"]}


def test_the_body_stays_readable_after_it():
    ours, _ = both(b"Body=hi", URLENCODED)
    environ = EnvironBuilder(method="POST", data=b"Body=hi", content_type=URLENCODED).get_environ()
    with app.request_context(environ):
        assert read_form(request) == ours
        assert request.get_data() == b"Body=hi"
        assert request.form.to_dict() == {"Body": "hi"}


def test_werkzeug_and_it_refuse_the_same_oversized_body():
    body = b"Body=" + b"a" * (64 * 1024)
    for read in (read_form, lambda req: req.form):
        environ = EnvironBuilder(method="POST", data=body, content_type=URLENCODED).get_environ()
        with app.request_context(environ):
            try:
                read(request)
            except RequestEntityTooLarge:
                continue
            raise AssertionError(f"{read} read a body over MAX_CONTENT_LENGTH")
