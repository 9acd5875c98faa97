"""TwiML answers: one ``<Message>`` per outgoing text, each with a status callback."""

from collections.abc import Iterable
from urllib.parse import quote

from twilio.twiml.messaging_response import Body, Media, Message, MessagingResponse

from bot import phones
from bot.consent import Channel
from bot.models import Message as Text

EMPTY = str(MessagingResponse())


def status_callback(base: str, ref: str) -> str:
    return f"{base}?ref={quote(ref)}"


def render(outgoing: Iterable[Text], reply_to: str, channel: Channel, status_base: str) -> str:
    """The answer to a webhook from ``reply_to`` received on ``channel``.

    A reply to the sender has no ``to``; a text to anyone else has one, and a
    ``from`` when it leaves on another channel than the webhook came in on.
    """
    response = MessagingResponse()
    for text in outgoing:
        attrs: dict[str, str] = {"status_callback": status_callback(status_base, text.ref)}
        if text.recipient != reply_to:
            attrs["to"] = text.recipient
            if phones.channel_of(text.recipient) is not channel:
                attrs["from_"] = text.sender
        media = text.media
        if media:
            message = Message(**attrs)
            if text.body:
                message.append(Body(text.body))
            for item in media:
                message.append(Media(item["url"]))
        else:
            message = Message(text.body, **attrs)
        response.append(message)
    return str(response)
