"""The texts the bot sends (SPEC §3): defaults, placeholders, rendering and splitting."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.texts import DEFAULTS, MAX_PART, PLACEHOLDERS, placeholders, render, split

# Copied from SPEC.md §3, character for character: the one place duplication is the point.
SPEC_DEFAULTS = {
    "consent.employee_initiated.to_contact": "[Auto Message] {employee_name} is trying to reach you. As per company policy, you must provide your consent to continue messaging. To Opt in, reply YES. To opt out, reply STOP.",  # noqa: E501
    "consent.employee_initiated.to_employee": "[Automated Message]: Your contact has been sent a request to Opt-in. Once they accept, you will be able to message with your contact.",  # noqa: E501
    "consent.employee_initiated.opted_in.to_employee": "[Auto Message]: Your Contact has opted in. You may continue to send/receive messages.",  # noqa: E501
    "consent.employee_initiated.opted_in.to_contact": "[Auto Message]: Opt in confirmed. If you wish to opt out at any time, reply STOP",  # noqa: E501
    "consent.contact_initiated.to_contact": "[Auto Message] You are trying to reach {employee_name}. As per company policy, you must provide your consent in order for your message to be delivered. To opt in, reply YES. To opt out, reply STOP.",  # noqa: E501
    "consent.contact_initiated.to_employee": "[Auto Message] A contact has attempted to send you a message. As per company policy, they have been sent a request to opt in. Once confirmed, you will be able to send/receive messages.",  # noqa: E501
    "consent.contact_initiated.opted_in.to_employee": "[Auto Message] Your Contact has opted in. You may continue to send/receive messages.",  # noqa: E501
    "consent.contact_initiated.opted_in.to_contact": "[Auto Message] Opt in confirmed. To opt out at any time, reply STOP.",  # noqa: E501
    "opt_out.to_employee": "[Auto Message]: Your contact has opted out. No further messages can be sent to this contact until they have provided their consent again.",  # noqa: E501
    "opt_out.to_contact": "[Auto Message]: Opt out confirmed. If you change your mind, please reply with a new message.",  # noqa: E501
    "disclaimer.employee_initiated.to_contact": "[Auto Message] You are receiving messages from {employee_name} on behalf of {company_name}. To opt out, reply STOP.",  # noqa: E501
    "disclaimer.contact_initiated.to_contact": "[Auto Message] You are messaging with {employee_name}. To opt out, reply STOP.",  # noqa: E501
    "pending.to_employee": "[Auto Message]: Your contact has not opted in yet. Your message will be delivered once they accept.",  # noqa: E501
    "help.to_contact": "[Auto Message] {company_name}: you are messaging with {employee_name}. Reply STOP to opt out, YES to opt in.",  # noqa: E501
    "opted_out.contact_wrote.to_employee": "[Auto Message]: A contact who opted out has sent you a message. It will be delivered if they opt in again by replying START.",  # noqa: E501
    "relay.to_employee": "{contact}: {body}",
}

VALUES = {
    "employee_name": "Alice",
    "company_name": "Acme Plumbing",
    "contact": "Bob",
    "body": "Can you come at 9?",
}


def test_defaults_have_exactly_the_keys_of_the_spec():
    assert set(DEFAULTS) == set(SPEC_DEFAULTS)


@pytest.mark.parametrize("key", list(SPEC_DEFAULTS))
def test_default_text_is_the_spec_text(key):
    assert DEFAULTS[key] == SPEC_DEFAULTS[key]


def test_the_placeholders_are_those_of_the_spec():
    assert set(PLACEHOLDERS) == {"employee_name", "company_name", "contact", "body"}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("help.to_contact", {"company_name", "employee_name"}),
        ("disclaimer.employee_initiated.to_contact", {"employee_name", "company_name"}),
        ("consent.contact_initiated.to_contact", {"employee_name"}),
        ("opt_out.to_contact", set()),
        ("relay.to_employee", {"contact", "body"}),
    ],
)
def test_placeholders_of_a_default(key, expected):
    assert placeholders(DEFAULTS[key]) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{oops} {0} {} { employee_name } {employee_name!r}", set()),
        ("{contact}{contact}: {body} {oops}", {"contact", "body"}),
        ("", set()),
    ],
)
def test_placeholders_are_only_the_known_ones(template, expected):
    assert placeholders(template) == expected


def test_render_fills_every_known_placeholder():
    assert render(DEFAULTS["help.to_contact"], VALUES) == (
        "[Auto Message] Acme Plumbing: you are messaging with Alice. "
        "Reply STOP to opt out, YES to opt in."
    )
    assert render(DEFAULTS["relay.to_employee"], VALUES) == "Bob: Can you come at 9?"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{oops} {employee_name}", "{oops} Alice"),
        ("{0} {1} {} {employee_name}", "{0} {1} {} Alice"),
        ("{ employee_name } {EMPLOYEE_NAME}", "{ employee_name } {EMPLOYEE_NAME}"),
        ("{employee_name!r} {company_name:>20}", "{employee_name!r} {company_name:>20}"),
        ("{ unbalanced } } {", "{ unbalanced } } {"),
    ],
)
def test_render_leaves_other_braces_alone(template, expected):
    assert render(template, VALUES) == expected


def test_render_leaves_a_placeholder_without_a_value_as_written():
    assert render("{contact}: {body}", {"body": "hi"}) == "{contact}: hi"


def test_render_does_not_fill_placeholders_inside_values():
    # A contact's body is data: "{employee_name}" in it stays as the contact wrote it.
    values = {**VALUES, "body": "ask {employee_name} about {0} and {company_name}"}
    assert render("{contact}: {body}", values) == (
        "Bob: ask {employee_name} about {0} and {company_name}"
    )


# -- split (SPEC §7: at most 1600 characters per part, in order, no part numbers) ----------


def test_the_limit_is_1600():
    assert MAX_PART == 1600


@pytest.mark.parametrize("length", [0, 1, 1599, 1600])
def test_short_text_is_one_part(length):
    text = "x" * length
    assert split(text) == [text]


@pytest.mark.parametrize("length", [1601, 3200, 3201, 5000])
def test_long_text_is_cut_in_order_without_part_numbers(length):
    text = "".join(str(i % 10) for i in range(length))
    parts = split(text)
    assert len(parts) == -(-length // MAX_PART)
    assert all(len(part) <= MAX_PART for part in parts)
    assert "".join(parts) == text


def test_prefix_fits_on_one_part():
    assert split("Can you come at 9?", "Bob: ") == ["Bob: Can you come at 9?"]
    text = "y" * (MAX_PART - len("Bob: "))
    assert split(text, "Bob: ") == ["Bob: " + text]


def test_prefix_is_repeated_on_each_part():
    prefix = "+1 415-555-0123: "
    text = "".join(chr(ord("a") + i % 26) for i in range(4000))
    parts = split(text, prefix)
    assert len(parts) == 3
    assert all(part.startswith(prefix) for part in parts)
    assert all(len(part) <= MAX_PART for part in parts)
    assert "".join(part[len(prefix) :] for part in parts) == text


def test_a_prefix_too_long_to_repeat_is_sent_once():
    prefix = "p" * 1000
    text = "t" * 3000
    parts = split(text, prefix)
    assert all(len(part) <= MAX_PART for part in parts)
    assert "".join(parts) == prefix + text


def test_split_with_a_small_limit():
    assert split("abcdef", "> ", limit=4) == ["> ab", "> cd", "> ef"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=5000), st.text(max_size=60))
def test_split_keeps_every_character_in_order(text, prefix):
    parts = split(text, prefix)
    assert parts
    assert all(len(part) <= MAX_PART for part in parts)
    assert all(part.startswith(prefix) for part in parts)
    assert "".join(part[len(prefix) :] for part in parts) == text
