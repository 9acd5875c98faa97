"""TwiML answers: one ``<Message>`` per outgoing text, each with a status callback."""

import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from twilio.twiml.messaging_response import Body, Media, Message, MessagingResponse

from bot import phones
from bot.consent import Channel

EMPTY = str(MessagingResponse())


def status_callback(base: str, ref: str) -> str:
    return f"{base}?ref={quote(ref)}"


def render(outgoing: Iterable[Mapping], reply_to: str, channel: Channel, status_base: str) -> str:
    """The answer to a webhook from ``reply_to`` received on ``channel``.

    ``outgoing`` holds the ``messages`` rows of the texts to send, in order.

    A reply to the sender has no ``to``; a text to anyone else has one, and a
    ``from`` when it leaves on another channel than the webhook came in on.
    """
    response = MessagingResponse()
    for text in outgoing:
        attrs: dict[str, str] = {"status_callback": status_callback(status_base, text["ref"])}
        recipient, body = text["recipient"], text["body"]
        if recipient != reply_to:
            attrs["to"] = recipient
            if phones.channel_of(recipient) is not channel:
                attrs["from_"] = text["sender"]
        media = json.loads(text["media_json"] or "[]")
        if media:
            message = Message(**attrs)
            if body:
                message.append(Body(body))
            for item in media:
                message.append(Media(item["url"]))
        else:
            message = Message(body, **attrs)
        response.append(message)
    return str(response)
