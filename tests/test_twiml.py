"""bot.twiml: every text to send becomes one <Message> that parses back as it was given."""

import json
import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.twiml.messaging_response import MessagingResponse

from bot import phones, twiml

STATUS = "https://bot.example.com/twilio/status"


# Any text the relay can send: sendable() has removed what XML 1.0 cannot carry.
_CHARS = st.characters(
    blacklist_categories=["Cs"],
    blacklist_characters="\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f\x10\x11\x12"
    "\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\ufffe\uffff",
)
_TEXT = st.one_of(
    st.text(_CHARS, max_size=40), st.sampled_from(["", "a & b <c> \"d\" 'e'", "\r\n\t", "é😀"])
)
_ADDRESS = st.sampled_from(
    ["+15550001111", "+15550002222", "whatsapp:+15550001111", "whatsapp:+15550003333", 'a"<&>\n']
)
_ROW = st.fixed_dictionaries(
    {
        "ref": st.one_of(st.text(_CHARS, max_size=12), st.just("0193abc0a1b2c3d4e5f6a7b8c9")),
        "recipient": _ADDRESS,
        "sender": _ADDRESS,
        "body": _TEXT,
        "media_json": st.one_of(
            st.just("[]"),
            st.just(""),
            st.lists(
                st.builds(lambda u, t: {"url": u, "content_type": t}, _TEXT, _TEXT), max_size=3
            ).map(json.dumps),
        ),
    }
)


@settings(max_examples=400, deadline=None)
@given(
    outgoing=st.lists(_ROW, max_size=4),
    reply_to=_ADDRESS,
    received_at=st.sampled_from(["+15550002222", "whatsapp:+15550002222"]),
    base=st.sampled_from([STATUS, "http://localhost/twilio/status", 'https://x/"&<>']),
)
def test_every_text_parses_back_as_it_was_given(outgoing, reply_to, received_at, base):
    def xml(text: str) -> str:  # a parser reads a line end in character data as "\n"
        return text.replace("\r\n", "\n").replace("\r", "\n")

    root = ET.fromstring(twiml.render(outgoing, reply_to, received_at, base).encode())
    channel = phones.channel_of(received_at)
    assert root.tag == "Response" and len(root) == len(outgoing)
    for text, message in zip(outgoing, root, strict=True):
        assert message.tag == "Message"
        assert message.get("statusCallback") == twiml.status_callback(base, text["ref"])
        to_sender = text["recipient"] == reply_to
        assert message.get("to") == (None if to_sender else text["recipient"])
        crosses = not to_sender and phones.channel_of(text["recipient"]) is not channel
        assert message.get("from") == (text["sender"] if crosses else None)
        media = json.loads(text["media_json"] or "[]")
        if media:
            body = message.find("Body")
            assert (body.text if body is not None else "") == xml(text["body"])
            urls = [xml(m["url"]) for m in media]
            assert [m.text or "" for m in message.findall("Media")] == urls
        else:
            assert (message.text or "") == xml(text["body"]) and len(message) == 0


def test_the_answers_parse_as_twiml_with_every_attribute():
    outgoing = [
        {
            "ref": "r1",
            "recipient": "+15550001111",
            "sender": "+15550002222",
            "body": "Reply YES & <go>",
            "media_json": "[]",
        },
        {
            "ref": "r 2",
            "recipient": "whatsapp:+15550003333",
            "sender": "whatsapp:+15550002222",
            "body": "",
            "media_json": json.dumps([{"url": "https://m.example/a?x=1&y=2", "content_type": ""}]),
        },
        {
            "ref": "r3",
            "recipient": "+15550004444",
            "sender": "+15550002222",
            "body": "",
            "media_json": "[]",
        },
    ]
    root = ET.fromstring(twiml.render(outgoing, "+15550001111", "+15550002222", STATUS).encode())
    assert root.tag == "Response"
    first, second, third = list(root)
    assert first.attrib == {"statusCallback": STATUS + "?ref=r1"}
    assert first.text == "Reply YES & <go>"
    assert second.attrib == {
        "statusCallback": STATUS + "?ref=r%202",
        "to": "whatsapp:+15550003333",
        "from": "whatsapp:+15550002222",
    }
    assert [(c.tag, c.text) for c in second] == [("Media", "https://m.example/a?x=1&y=2")]
    assert third.attrib["to"] == "+15550004444" and third.text is None and len(third) == 0


def test_no_text_to_send_is_the_empty_response():
    assert twiml.render([], "+15550001111", "+15550002222", STATUS) == str(MessagingResponse())
