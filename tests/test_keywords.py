"""Keyword and revocation-hint classification of a contact's text (SPEC §4)."""

import pytest

from bot.keywords import Classification, Kind, classify, normalise

OPT_OUT = ["STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE"]
OPT_OUT += ["OPTOUT", "OPT OUT", "OPT-OUT"]
OPT_IN = ["YES", "Y", "START", "UNSTOP", "OPTIN", "OPT IN", "OPT-IN"]
HELP = ["HELP", "INFO"]

KEYWORDS = [(word, Kind.OPT_OUT) for word in OPT_OUT]
KEYWORDS += [(word, Kind.OPT_IN) for word in OPT_IN]
KEYWORDS += [(word, Kind.HELP) for word in HELP]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("stop", "STOP"),
        ("  Stop \n", "STOP"),
        ("\tyes\t", "YES"),
        ("Stop!!!", "STOP"),
        ("yes.", "YES"),
        ("Help?", "HELP"),
        ("stop？", "STOP"),  # full-width question mark
        ("yes！", "YES"),  # full-width exclamation mark
        ("Stop…", "STOP"),
        ("opt out!", "OPT OUT"),
        ("Opt-Out.", "OPT-OUT"),
        ("stop ?!", "STOP"),
        ("STOP please", "STOP PLEASE"),
    ],
)
def test_normalise(body, expected):
    assert normalise(body) == expected


@pytest.mark.parametrize(("word", "kind"), KEYWORDS)
@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(str, id="as-listed"),
        pytest.param(str.lower, id="lower"),
        pytest.param(str.title, id="title"),
        pytest.param(lambda w: f"  {w.lower()}!!! ", id="spaces-and-bangs"),
        pytest.param(lambda w: f"{w}？", id="unicode-punctuation"),
    ],
)
def test_every_keyword_of_each_class(word, kind, spelling):
    assert classify(spelling(word)).kind is kind


@pytest.mark.parametrize(
    "body",
    [
        "STOP please",
        "please stop",
        "stop it",
        "Yes please",
        "yes, 9am works",
        "start at 9?",
        "help me with the sink",
        "the end",
        "OPT OUTS",
        "YESS",
        "",
        "   ",
        "!!!",
    ],
)
def test_a_keyword_must_be_the_whole_body(body):
    assert classify(body).kind is Kind.TEXT


@pytest.mark.parametrize(
    ("body", "opt_out_type", "kind"),
    [
        ("please stop by at 3", "STOP", Kind.OPT_OUT),
        ("hello", "STOP", Kind.OPT_OUT),
        ("STOP", "START", Kind.OPT_IN),
        ("sure thing", "START", Kind.OPT_IN),
        ("STOP", "HELP", Kind.HELP),
        ("YES", "HELP", Kind.HELP),
        ("hello", "help", Kind.HELP),
    ],
)
def test_twilio_opt_out_type_wins(body, opt_out_type, kind):
    assert classify(body, opt_out_type).kind is kind


def test_opt_out_type_start_lifts_the_block_whatever_the_body():
    assert classify("sure thing", "START") == Classification(
        Kind.OPT_IN, lifts_block=True, by_twilio=True, carrier=True
    )
    assert classify("Y", "START").lifts_block is True


@pytest.mark.parametrize("opt_out_type", [None, ""])
def test_without_opt_out_type_the_body_decides(opt_out_type):
    assert classify("STOP", opt_out_type).kind is Kind.OPT_OUT
    assert classify("hello", opt_out_type).kind is Kind.TEXT


@pytest.mark.parametrize(
    ("body", "lifts"),
    [
        ("START", True),
        ("unstop", True),
        ("Yes!", True),
        ("Y", False),
        ("OPTIN", False),
        ("opt in", False),
        ("OPT-IN", False),
        ("STOP", False),
        ("HELP", False),
        ("hello", False),
    ],
)
def test_only_start_unstop_and_yes_lift_twilios_block(body, lifts):
    assert classify(body).lifts_block is lifts


# Texts that read like a revocation without being a keyword (SPEC §4).
REVOCATIONS = [
    "please stop texting me",
    "Please stop texting me!",
    "STOP TEXTING ME!!!",
    "unsubscribe me",
    "I want to unsubscribe",
    "remove me from your list",
    "don't text me again",
    "Do not contact me again",
    "Never contact me again",
    "stop messaging me",
    "Stop sending me messages",
    "no more messages please",
    "Take me off your list",
    "Take my number off your list",
    "Please opt me out",
    "I want to opt out of these texts",
    "Leave me alone",
    # Found missing; see the review notes:
    "Don’t text me again",  # typographic apostrophe, as phones type it
    "Please stop sending me these messages",
    "Stop sending me text messages",
    "Please remove my number",
    "Stop calling and texting me",
    "STOP please",
]

ORDINARY = [
    "I'll stop by at 3",
    "Stop by anytime after 5",
    "bus stop on 5th",
    "can't stop laughing",
    "the end of the month",
    "Can you stop at the hardware store?",
    "We need to stop the leak under the sink",
    "Should I stop the water main?",
    "Please cancel my 3pm appointment",
    "Quit my job last week, so I'm free",
    "Can you remove the old boiler?",
    "Don't forget the invoice",
    "Text me when you're here",
    "Yes, start whenever you like",
    # Found flagged; see the review notes:
    "My daughter won't stop texting me about the party",
]


@pytest.mark.parametrize("body", REVOCATIONS)
def test_revocation_hint(body):
    assert classify(body) == Classification(Kind.TEXT, hint=True)


@pytest.mark.parametrize("body", ORDINARY)
def test_ordinary_texts_are_not_revocation_hints(body):
    assert classify(body) == Classification(Kind.TEXT)


@pytest.mark.parametrize("body", ["STOP", "unsubscribe", "Opt out!"])
def test_a_keyword_is_not_a_hint(body):
    assert classify(body).kind is Kind.OPT_OUT
    assert classify(body).hint is False


@pytest.mark.parametrize(
    ("body", "carrier"),
    [
        ("STOP", True),
        ("stopall", True),
        ("Unsubscribe", True),
        ("quit", True),
        ("OPTOUT", True),
        ("STOP ALL", False),
        ("opt out", False),
        ("OPT-OUT", False),
    ],
)
def test_carrier_marks_the_opt_out_words_twilio_itself_blocks_on(body, carrier):
    assert classify(body).carrier is carrier
    assert classify(body, "STOP").carrier is True  # whatever Twilio classified, it acted on


@pytest.mark.parametrize(
    "body",
    ["Please stop", "STOP sending", "Please remove my number", "don't text me anymore"],
)
def test_more_revocation_hints(body):
    assert classify(body).hint is True


@pytest.mark.parametrize(
    "body",
    ["Can you remove me from the schedule on Tuesday?", "Don't text me the code, email it"],
)
def test_more_ordinary_texts(body):
    assert classify(body).hint is False
