"""TwiML answers, built with the twilio library's ``MessagingResponse`` (SPEC §7)."""

import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from twilio.twiml.messaging_response import Message, MessagingResponse

from bot import phones

EMPTY = str(MessagingResponse())


def status_callback(base: str, ref: str) -> str:
    """Where Twilio reports the delivery of the text ``ref``."""
    return f"{base}?ref={quote(ref)}"


def render(outgoing: Iterable[Mapping], reply_to: str, received_at: str, status_base: str) -> str:
    """The answer to a webhook from ``reply_to`` received at the address ``received_at``.

    ``outgoing`` holds the ``messages`` rows of the texts to send, in order. A
    reply to the sender has no ``to``; a text to anyone else has one, and a
    ``from`` when it leaves on another channel than the webhook came in on.
    Every text carries a status callback (``action`` would end the answer).
    """
    response = MessagingResponse()
    for text in outgoing:
        recipient = text["recipient"]
        attributes = {"status_callback": status_callback(status_base, text["ref"])}
        if recipient != reply_to:
            attributes["to"] = recipient
            if phones.channel_of(recipient) is not phones.channel_of(received_at):
                attributes["from_"] = text["sender"]
        media = json.loads(text["media_json"] or "[]")
        if not media:
            response.message(text["body"], **attributes)
            continue
        message = Message(**attributes)
        if text["body"]:
            message.body(text["body"])
        for item in media:
            message.media(item["url"] or "")
        response.append(message)
    return str(response)
