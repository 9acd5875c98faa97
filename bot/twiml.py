"""TwiML answers: one ``<Message>`` per outgoing text, each with a status callback.

``render`` writes the document itself rather than through twilio's
``MessagingResponse``: the library builds an ElementTree and runs its serialiser,
which under load cost about 140 µs of a webhook's CPU (about 28 µs in a warm
loop; the rest is the cache misses of all the code it runs). The output is the
library's, byte for byte: the same declaration, attributes in the same (sorted)
order, the same escaping (ElementTree's) and the same empty-element form;
``tests/test_twiml.py`` holds it to ``MessagingResponse`` over generated texts.
"""

import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from twilio.twiml.messaging_response import MessagingResponse

from bot import phones
from bot.consent import Channel

EMPTY = str(MessagingResponse())
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def status_callback(base: str, ref: str) -> str:
    return f"{base}?ref={quote(ref)}"


# ElementTree's escaping of character data, and of attribute values (which
# keeps newlines and tabs as references).
_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTRIBUTE = _TEXT | str.maketrans({'"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#09;"})


def _text(value: str) -> str:
    return value.translate(_TEXT)


def _attribute(value: str) -> str:
    return value.translate(_ATTRIBUTE)


def _element(tag: str, opening: str, content: str) -> str:
    return f"{opening}>{content}</{tag}>" if content else f"{opening} />"


def render(outgoing: Iterable[Mapping], reply_to: str, channel: Channel, status_base: str) -> str:
    """The answer to a webhook from ``reply_to`` received on ``channel``.

    ``outgoing`` holds the ``messages`` rows of the texts to send, in order.

    A reply to the sender has no ``to``; a text to anyone else has one, and a
    ``from`` when it leaves on another channel than the webhook came in on.
    """
    messages = []
    for text in outgoing:
        recipient, body = text["recipient"], text["body"]
        callback = _attribute(status_callback(status_base, text["ref"]))
        opening = "<Message"
        if recipient != reply_to:
            if phones.channel_of(recipient) is not channel:
                opening += f' from="{_attribute(text["sender"])}"'
            opening += f' statusCallback="{callback}" to="{_attribute(recipient)}"'
        else:
            opening += f' statusCallback="{callback}"'
        media = json.loads(text["media_json"] or "[]")
        if media:
            parts = [_element("Body", "<Body", _text(body))] if body else []
            parts += [_element("Media", "<Media", _text(item["url"] or "")) for item in media]
            content = "".join(parts)
        else:
            content = _text(body)
        messages.append(_element("Message", opening, content))
    if not messages:
        return EMPTY
    document = f"{_DECLARATION}<Response>{''.join(messages)}</Response>"
    # As ElementTree writes UTF-8: a character it cannot encode becomes a reference.
    return document.encode("utf-8", "xmlcharrefreplace").decode("utf-8")
