"""Organisation settings: company name, default mode and text overrides (SPEC §8–§9).

Settings saved here (CLI or portal) win over the environment's defaults and are
read afresh for every message, so a change applies from the next one on.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flask import current_app
from sqlalchemy import delete, select

from bot import texts
from bot.consent import Mode
from bot.extensions import db
from bot.models import Setting

TEXT_PREFIX = "text."
KEYS = ("company_name", "default_mode", *(TEXT_PREFIX + key for key in texts.DEFAULTS))


class SettingError(ValueError):
    """An unknown key or a value the setting cannot take."""


@dataclass(frozen=True)
class Settings:
    company_name: str
    default_mode: Mode
    texts: Mapping[str, str]  # read-only: one Settings may serve many webhooks
    saved: frozenset[str]

    def text(self, key: str) -> str:
        """A text's words: the organisation's (SPEC §3), or a reply's (``texts.REPLIES``)."""
        return self.texts[key] if key in self.texts else texts.REPLIES[key]


_SAVED = select(Setting.key, Setting.value)


def current() -> Settings:
    """The settings in force now: saved values over the environment's defaults."""
    return from_saved(dict(db.session.execute(_SAVED).all()))


def from_saved(saved: dict[str, str]) -> Settings:
    """The settings that ``saved`` (key → value, as stored) puts in force."""
    config = current_app.config
    merged = dict(texts.DEFAULTS)
    for key, value in saved.items():
        if key.startswith(TEXT_PREFIX) and key[len(TEXT_PREFIX) :] in merged:
            merged[key[len(TEXT_PREFIX) :]] = value
    mode = saved.get("default_mode")
    return Settings(
        company_name=saved.get("company_name", config["COMPANY_NAME"]),
        default_mode=Mode(mode) if mode in Mode.__members__.values() else config["OPT_IN_MODE"],
        texts=MappingProxyType(merged),
        saved=frozenset(saved),
    )


def _check(key: str, value: str) -> str:
    if key not in KEYS:
        raise SettingError(f"unknown setting {key!r}; one of: {', '.join(KEYS)}")
    if key == "default_mode":
        value = value.strip().lower()
        if value not in Mode.__members__.values():
            raise SettingError("default_mode must be consent, disclaimer or off")
    elif key.startswith(TEXT_PREFIX) and not value.strip():
        raise SettingError(f"{key} cannot be empty; use reset to go back to the default")
    return value


def put(key: str, value: str) -> None:
    """Save a setting (the caller commits)."""
    value = _check(key, value)
    row = db.session.get(Setting, key)
    if row is None:
        db.session.add(Setting(key=key, value=value))
    else:
        row.value = value


def reset(key: str) -> None:
    """Forget a saved setting, so the default applies again (the caller commits)."""
    if key not in KEYS:
        raise SettingError(f"unknown setting {key!r}; one of: {', '.join(KEYS)}")
    db.session.execute(delete(Setting).where(Setting.key == key))


def warnings(key: str, value: str) -> list[str]:
    """What an override of a §3 text loses compared with its default."""
    if not key.startswith(TEXT_PREFIX):
        return []
    name = key[len(TEXT_PREFIX) :]
    lost = texts.placeholders(texts.DEFAULTS[name]) - texts.placeholders(value)
    notes = [f"the text no longer uses {{{p}}}" for p in sorted(lost)]
    if "STOP" in texts.DEFAULTS[name] and "STOP" not in value.upper():
        notes.append("the text no longer tells the contact how to opt out (STOP)")
    return notes
