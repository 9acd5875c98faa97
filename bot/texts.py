"""The texts the bot sends: SPEC §3 defaults, placeholders and rendering (pure)."""

import re
from collections.abc import Mapping

DEFAULTS: dict[str, str] = {
    "consent.employee_initiated.to_contact": (
        "[Auto Message] {employee_name} is trying to reach you. As per company policy, "
        "you must provide your consent to continue messaging. To Opt in, reply YES. "
        "To opt out, reply STOP."
    ),
    "consent.employee_initiated.to_employee": (
        "[Automated Message]: Your contact has been sent a request to Opt-in. Once they "
        "accept, you will be able to message with your contact."
    ),
    "consent.employee_initiated.opted_in.to_employee": (
        "[Auto Message]: Your Contact has opted in. You may continue to send/receive messages."
    ),
    "consent.employee_initiated.opted_in.to_contact": (
        "[Auto Message]: Opt in confirmed. If you wish to opt out at any time, reply STOP"
    ),
    "consent.contact_initiated.to_contact": (
        "[Auto Message] You are trying to reach {employee_name}. As per company policy, "
        "you must provide your consent in order for your message to be delivered. "
        "To opt in, reply YES. To opt out, reply STOP."
    ),
    "consent.contact_initiated.to_employee": (
        "[Auto Message] A contact has attempted to send you a message. As per company "
        "policy, they have been sent a request to opt in. Once confirmed, you will be "
        "able to send/receive messages."
    ),
    "consent.contact_initiated.opted_in.to_employee": (
        "[Auto Message] Your Contact has opted in. You may continue to send/receive messages."
    ),
    "consent.contact_initiated.opted_in.to_contact": (
        "[Auto Message] Opt in confirmed. To opt out at any time, reply STOP."
    ),
    "opt_out.to_employee": (
        "[Auto Message]: Your contact has opted out. No further messages can be sent to "
        "this contact until they have provided their consent again."
    ),
    "opt_out.to_contact": (
        "[Auto Message]: Opt out confirmed. If you change your mind, please reply with a "
        "new message."
    ),
    "disclaimer.employee_initiated.to_contact": (
        "[Auto Message] You are receiving messages from {employee_name} on behalf of "
        "{company_name}. To opt out, reply STOP."
    ),
    "disclaimer.contact_initiated.to_contact": (
        "[Auto Message] You are messaging with {employee_name}. To opt out, reply STOP."
    ),
    "pending.to_employee": (
        "[Auto Message]: Your contact has not opted in yet. Your message will be delivered "
        "once they accept."
    ),
    "help.to_contact": (
        "[Auto Message] {company_name}: you are messaging with {employee_name}. "
        "Reply STOP to opt out, YES to opt in."
    ),
    "opted_out.contact_wrote.to_employee": (
        "[Auto Message]: A contact who opted out has sent you a message. It will be "
        "delivered if they opt in again by replying START."
    ),
    "relay.to_employee": "{contact}: {body}",
}

PLACEHOLDERS = ("employee_name", "company_name", "contact", "body")
# The replies' own: the contact's number as people read it, and what was wrong.
_PLACEHOLDER = re.compile(r"\{(" + "|".join((*PLACEHOLDERS, "number", "error")) + r")\}")

# Appended to the employee's copy of a contact text that reads like a revocation.
HINT_MARK = " (possible opt-out request)"

# Replies to the employee about addressing (``consent.Reply``); not configurable.
REPLIES: dict[str, str] = {
    "reply.usage": (
        "[Auto Message] To text a contact, start with their number: "
        "+15551234567 Hello (or whatsapp:+15551234567 Hello). "
        "Without a number, your text goes to the contact you last spoke with. "
        "Send just a number to switch to that contact."
    ),
    "reply.switched": "[Auto Message] Now texting {number}. Your next texts go to this contact.",
    "reply.bad_number": (
        "[Auto Message] {error} Nothing was sent. Send #help for how to address a contact."
    ),
    "reply.not_a_contact": "[Auto Message] That number belongs to this line. Nothing was sent.",
    "reply.empty": "[Auto Message] That text was empty. Nothing was sent.",
}

MAX_PART = 1600


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill the known placeholders; any other braces are left as written."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def placeholders(template: str) -> set[str]:
    """The known placeholders a text uses."""
    return set(_PLACEHOLDER.findall(template))


def split(text: str, prefix: str = "", limit: int = MAX_PART) -> list[str]:
    """Cut ``prefix + text`` into parts of at most ``limit`` characters, in order.

    The prefix (a relay's ``Name: ``) is repeated on each part when it leaves room.
    """
    if len(prefix) + len(text) <= limit:
        return [prefix + text]
    if len(prefix) > limit // 2:
        whole = prefix + text
        return [whole[i : i + limit] for i in range(0, len(whole), limit)]
    room = limit - len(prefix)
    return [prefix + text[i : i + room] for i in range(0, len(text), room)]


def relay_parts(template: str, values: Mapping[str, str], mark: str = "") -> list[str]:
    """A contact's text relayed to the employee (``relay.to_employee``), in parts.

    When the template ends with the body, its start (``Name: ``) is repeated on
    each part; ``mark`` follows the body (a revocation hint's).
    """
    if template.endswith("{body}"):
        prefix = render(template[: -len("{body}")], values)
        return split(values["body"] + mark, prefix)
    return split(render(template, values) + mark)
