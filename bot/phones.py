"""Phone numbers and addresses: E.164, ``whatsapp:`` and what people type (phonenumbers)."""

import re
from dataclasses import dataclass

import phonenumbers

from bot.consent import Channel

WHATSAPP = "whatsapp:"
# The longest a typed number gets: "+1 (415) 555-0100" with room for any country.
MAX_TYPED = 32


class InvalidNumber(ValueError):
    """A number a person typed is not a valid phone number."""


def to_e164(text: str, region: str) -> str:
    """Parse a typed number (national format uses ``region``) into E.164."""
    raw = (text or "").strip()
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"{raw!r} is not a phone number.") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumber(f"{raw!r} is not a valid phone number.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def channel_of(address: str) -> Channel:
    return Channel.WHATSAPP if address.lower().startswith(WHATSAPP) else Channel.SMS


def bare(address: str) -> str:
    """The number of an address, without a channel prefix."""
    if address.lower().startswith(WHATSAPP):
        return address[len(WHATSAPP) :]
    return address


def on_channel(number: str, channel: Channel) -> str:
    """The address of ``number`` on ``channel``."""
    return WHATSAPP + number if channel is Channel.WHATSAPP else number


def readable(address: str) -> str:
    """A number as people read it (``+1 415-555-0100``); anything else unchanged."""
    number = bare(address)
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return address
    text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return WHATSAPP + text if number != address else text


# A run of characters that can only be a number someone typed at the start of a text.
_LEADING = re.compile(
    r"\s*(?P<wa>whatsapp:)?\s*(?P<num>[+(]?\d[\d\s().\-]*\d\)?)(?P<sep>\s*[:,])?", re.IGNORECASE
)


@dataclass(frozen=True)
class Addressed:
    """An employee's text split into the contact it names (if any) and the body."""

    address: str | None
    body: str


def _longest_number(candidate: str, region: str) -> tuple[str, int] | None:
    """The longest start of ``candidate``, cut at a space, that is a valid number."""
    candidate = candidate[:MAX_TYPED]  # no number is longer; keeps this linear
    cuts = [len(candidate)] + [i for i in range(len(candidate) - 1, 0, -1) if candidate[i] == " "]
    for cut in cuts:
        try:
            return to_e164(candidate[:cut], region), cut
        except InvalidNumber:
            continue
    return None


def leading_address(text: str, region: str) -> Addressed:
    """Split ``+15551234567 Hi`` into address and body (SPEC §6).

    A leading run of digits is an address when it (or its longest start that
    ends at a space, as in ``+14155550123 10am``) is a valid number. When it is
    clearly meant as one (``+``, ``(``, ``whatsapp:``, a colon after it, or
    nothing else in the text) but is not valid, ``InvalidNumber`` is raised so
    the employee's text is never sent to someone else by mistake.
    """
    match = _LEADING.match(text or "")
    digits = sum(c.isdigit() for c in match["num"]) if match else 0
    if digits < 7:
        # "+1555 hi" is a mistyped number; "+1 for that" is a text.
        if match is not None and (match["wa"] or (match["num"][0] == "+" and digits >= 4)):
            raise InvalidNumber(f"{match['num']!r} is not a valid phone number.")
        return Addressed(None, text)
    found = _longest_number(match["num"], region)
    if found is None:
        colon = (match["sep"] or "").strip() == ":"
        alone = not text[match.end() :].strip()
        if match["wa"] or colon or match["num"][0] in "+(" or alone:
            raise InvalidNumber(f"{match['num']!r} is not a valid phone number.")
        return Addressed(None, text)
    number, cut = found
    body = text[match.start("num") + cut :].lstrip()
    if body[:1] in (":", ","):
        body = body[1:]
    return Addressed(WHATSAPP + number if match["wa"] else number, body.strip())
