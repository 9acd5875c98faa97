"""Phone numbers and addresses: E.164, ``whatsapp:`` and what people type (SPEC §1, §6)."""

import pytest

from bot.consent import Channel
from bot.phones import (
    Addressed,
    InvalidNumber,
    bare,
    channel_of,
    leading_address,
    on_channel,
    readable,
    to_e164,
)

NUMBER = "+14155550123"
WA = "whatsapp:+14155550123"


@pytest.mark.parametrize(
    ("typed", "region", "expected"),
    [
        ("(415) 555-0123", "US", NUMBER),
        ("415-555-0123", "US", NUMBER),
        ("415.555.0123", "US", NUMBER),
        ("415 555 0123", "US", NUMBER),
        ("4155550123", "US", NUMBER),
        ("1 415 555 0123", "US", NUMBER),
        ("+1 (415) 555-0123", "US", NUMBER),
        ("  +14155550123  ", "US", NUMBER),
        ("020 7946 0018", "GB", "+442079460018"),
        ("030 901820", "DE", "+4930901820"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        # An international number ignores the region.
        ("+44 20 7946 0018", "US", "+442079460018"),
        ("+1 415 555 0123", "GB", NUMBER),
    ],
)
def test_to_e164(typed, region, expected):
    assert to_e164(typed, region) == expected


@pytest.mark.parametrize(
    ("typed", "region"),
    [
        ("+15551234567", "US"),  # well formed, but no valid US number
        ("(555) 123-4567", "US"),
        ("555-0123", "US"),  # no area code
        ("020 7946 0018", "US"),  # a UK number read as American
        ("12", "US"),
        ("hello", "US"),
        ("", "US"),
        ("   ", "US"),
    ],
)
def test_to_e164_rejects_what_is_not_a_valid_number(typed, region):
    with pytest.raises(InvalidNumber) as caught:
        to_e164(typed, region)
    message = str(caught.value)
    assert "phone number" in message
    assert repr(typed.strip()) in message  # names what the person typed


def test_invalid_number_is_a_value_error():
    assert issubclass(InvalidNumber, ValueError)


@pytest.mark.parametrize(
    ("address", "channel", "number"),
    [
        (NUMBER, Channel.SMS, NUMBER),
        (WA, Channel.WHATSAPP, NUMBER),
        ("WhatsApp:+14155550123", Channel.WHATSAPP, NUMBER),
        ("12345", Channel.SMS, "12345"),  # a short code, kept as Twilio gives it
    ],
)
def test_channel_of_and_bare(address, channel, number):
    assert channel_of(address) is channel
    assert bare(address) == number


@pytest.mark.parametrize(("channel", "expected"), [(Channel.SMS, NUMBER), (Channel.WHATSAPP, WA)])
def test_on_channel(channel, expected):
    address = on_channel(NUMBER, channel)
    assert address == expected
    assert channel_of(address) is channel
    assert bare(address) == NUMBER


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (NUMBER, "+1 415-555-0123"),
        (WA, "whatsapp:+1 415-555-0123"),
        ("+442079460018", "+44 20 7946 0018"),
        ("12345", "12345"),
        ("not a number", "not a number"),
    ],
)
def test_readable(address, expected):
    assert readable(address) == expected


# -- an employee addressing a contact (SPEC §6) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550123 Hi", Addressed(NUMBER, "Hi")),
        ("(415) 555-0123: Hi", Addressed(NUMBER, "Hi")),
        ("whatsapp:+14155550123 Hi", Addressed(WA, "Hi")),
        ("+1 (415) 555-0123 See you at 9", Addressed(NUMBER, "See you at 9")),
        ("4155550123: hi", Addressed(NUMBER, "hi")),
        ("+14155550123:Hi", Addressed(NUMBER, "Hi")),
        ("  +14155550123   Hi there  ", Addressed(NUMBER, "Hi there")),
        ("+14155550123\nHi there", Addressed(NUMBER, "Hi there")),
        # A bare number switches the current contact: no body.
        ("+14155550123", Addressed(NUMBER, "")),
        ("(415) 555-0123", Addressed(NUMBER, "")),
        ("whatsapp:+14155550123", Addressed(WA, "")),
        # Phones capitalise the first word of a text.
        ("WhatsApp:+14155550123 Hi", Addressed(WA, "Hi")),
    ],
)
def test_leading_address(text, expected):
    assert leading_address(text, "US") == expected


@pytest.mark.parametrize(
    "text",
    [
        "Hi, see you at 9",
        "2024-11-22 meeting moved",
        "3 o'clock works",
        "3 o'clock",
        "12 apples",
        "+1 for that",
        "10:30 is fine",
        "",
    ],
)
def test_a_text_without_a_leading_number_is_all_body(text):
    assert leading_address(text, "US") == Addressed(None, text)


@pytest.mark.parametrize(
    "text",
    [
        "+1555 hi",
        "+15551234567 Hi",
        "(555) 123-4567: Hi",
        "whatsapp:+15551234567 Hi",
        "whatsapp:+1555 hi",
        "5551234567",
    ],
)
def test_a_number_meant_as_an_address_but_invalid_is_an_error(text):
    # Never sent to the current contact by mistake: the employee is told instead.
    with pytest.raises(InvalidNumber) as caught:
        leading_address(text, "US")
    assert "not a valid phone number" in str(caught.value)
