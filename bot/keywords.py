"""Keyword and revocation-hint classification of a contact's text (SPEC §4)."""

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    TEXT = "text"


OPT_OUT_WORDS = frozenset(
    {
        "STOP",
        "STOPALL",
        "STOP ALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
        "OPT OUT",
        "OPT-OUT",
    }
)
OPT_IN_WORDS = frozenset({"YES", "Y", "START", "UNSTOP", "OPTIN", "OPT IN", "OPT-IN"})
HELP_WORDS = frozenset({"HELP", "INFO"})

# What Twilio itself acts on without Advanced Opt-Out: its opt-out words block
# every later send, and these opt-in words lift that block again.
CARRIER_OPT_OUT_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
CARRIER_OPT_IN_WORDS = frozenset({"START", "UNSTOP", "YES"})

_OPT_OUT_TYPES = {"STOP": Kind.OPT_OUT, "START": Kind.OPT_IN, "HELP": Kind.HELP}

# Texts that read like a revocation without being a keyword. Each pattern needs
# the speaker to talk about being messaged, so "I'll stop by at 3" stays clear.
_HINTS = re.compile(
    r"""
    \b(stop|quit|cease)\s+(calling\s+and\s+)?(texting|messaging|contacting|spamming|bothering)
        (\s+and\s+\w+ing)?\s+(me|us)\b
    | \b(stop|quit)\s+(texting|messaging|spamming)\b\W*$
    | \bstop\s+sending\s+(me\s+)?(these\s+|your\s+|any\s+)?(text\s+)?(texts|messages|sms)\b
    | ^\W*stop\s+sending\W*$
    | \b(don't|dont|do\s+not|never)\s+(text|message|contact|sms)\s+me\s*
        (again|anymore|any\s+more|ever)\b
    | \b(don't|dont|do\s+not|never)\s+(text|message|contact|sms)\s+me\W*$
    | \bno\s+more\s+(texts|messages|sms)\b
    | \bunsubscribe\b
    | \bremove\s+(me|my\s+number)\s+from\s+(your|the|this)\s+(list|contacts|texts|messages|mailing)
    | \bremove\s+(me|my\s+number)\W*(please)?\W*$
    | \btake\s+(me|my\s+number)\s+off\s+(your|the|this)\s+(list|contacts|texts)\b
    | \bopt\s*-?\s*(me\s+)?out\b(?!\s+of\s+(the|an?|my)\s+(?!texts|messages))
    | \bleave\s+me\s+alone\b
    | ^\W*(please\s+)?stop(\s+(please|pls|plz|now|it|this|that|all|them))+\W*$
    | ^\W*please\s+stop\W*$
    """,
    re.IGNORECASE | re.VERBOSE,
)
# "won't stop texting me" is about someone else: a negation just before voids a match.
_NEGATED = re.compile(r"\b(won't|wont|can't|cant|doesn't|didn't|don't|not|never)\s+$", re.I)


def _reads_like_revocation(body: str) -> bool:
    text = body.replace("\u2019", "'").replace("\u2018", "'")
    return any(not _NEGATED.search(text[: match.start()]) for match in _HINTS.finditer(text))


@dataclass(frozen=True)
class Classification:
    """What a contact's text means to the consent gate."""

    kind: Kind
    # START, UNSTOP or YES (or OptOutType=START): lifts Twilio's STOP block.
    lifts_block: bool = False
    # Not a keyword, but reads like a request to stop (§4 revocation hint).
    hint: bool = False
    # Twilio classified it (Advanced Opt-Out sent OptOutType).
    by_twilio: bool = False
    # An opt-out that Twilio itself acts on (blocks the contact and confirms).
    carrier: bool = False


TEXT = Classification(Kind.TEXT)


def normalise(body: str) -> str:
    """Trim white space and trailing punctuation, collapse inner spaces, upper-case."""
    text = " ".join(body.split())
    end = len(text)
    while end and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[:end].rstrip().upper()


def classify(body: str, opt_out_type: str | None = None) -> Classification:
    """Classify a contact's text; Twilio's ``OptOutType`` wins over the body."""
    twilio_kind = _OPT_OUT_TYPES.get((opt_out_type or "").strip().upper())
    if twilio_kind is not None:
        return Classification(
            twilio_kind, lifts_block=twilio_kind is Kind.OPT_IN, by_twilio=True, carrier=True
        )
    word = normalise(body)
    if word in OPT_OUT_WORDS:
        return Classification(Kind.OPT_OUT, carrier=word in CARRIER_OPT_OUT_WORDS)
    if word in OPT_IN_WORDS:
        return Classification(Kind.OPT_IN, lifts_block=word in CARRIER_OPT_IN_WORDS)
    if word in HELP_WORDS:
        return Classification(Kind.HELP)
    return Classification(Kind.TEXT, hint=_reads_like_revocation(body))
