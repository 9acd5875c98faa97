"""Configuration: the one place that reads the environment (SPEC §8). Fails fast."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import phonenumbers

from bot import notes
from bot.consent import Mode


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the app refuses to start."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _key(env: Mapping[str, str], name: str, parse) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        parse(raw)
    except notes.NoteError as exc:
        raise ConfigError(f"{name}: {exc} (`flask --app app audit keygen` prints a pair)") from None
    return raw


def database_url(raw: str | None, instance_path: str) -> str:
    """The SQLAlchemy URL: Heroku's ``postgres://`` accepted, psycopg 3 as driver."""
    if not raw:
        return "sqlite:///" + str(Path(instance_path) / "consentline.sqlite3")
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def load(env: Mapping[str, str], instance_path: str) -> dict[str, Any]:
    """Read every setting of SPEC §8 from ``env`` into Flask config keys."""
    debug = _bool(env, "FLASK_DEBUG", False)
    mode = (env.get("OPT_IN_MODE") or Mode.CONSENT).strip().lower()
    if mode not in Mode.__members__.values():
        raise ConfigError(f"OPT_IN_MODE must be consent, disclaimer or off, not {mode!r}")
    base_url = (env.get("PUBLIC_BASE_URL") or "").strip().rstrip("/")
    if base_url and not base_url.startswith(("https://", "http://")):
        raise ConfigError(f"PUBLIC_BASE_URL must start with https://, not {base_url!r}")
    region = (env.get("DEFAULT_REGION") or "US").strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"DEFAULT_REGION {region!r} is not a known region code")
    hosts = [h.strip() for h in (env.get("TRUSTED_HOSTS") or "").split(",") if h.strip()]
    return {
        "SQLALCHEMY_DATABASE_URI": database_url(env.get("DATABASE_URL"), instance_path),
        "SECRET_KEY": env.get("SECRET_KEY") or None,
        "TWILIO_AUTH_TOKEN": env.get("TWILIO_AUTH_TOKEN") or None,
        "TWILIO_ACCOUNT_SID": env.get("TWILIO_ACCOUNT_SID") or None,
        "TWILIO_VALIDATE_SIGNATURE": _bool(env, "TWILIO_VALIDATE_SIGNATURE", True),
        "PUBLIC_BASE_URL": base_url or None,
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0),
        "TRUSTED_HOSTS": hosts or None,
        "COMPANY_NAME": (env.get("COMPANY_NAME") or "").strip(),
        "OPT_IN_MODE": Mode(mode),
        "DEFAULT_REGION": region,
        "TWILIO_STOP_FILTERING": _bool(env, "TWILIO_STOP_FILTERING", True),
        "SIMULATOR_ENABLED": _bool(env, "SIMULATOR_ENABLED", False),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 256 * 1024, minimum=1024),
        # How long a webhook waits for a busy database before answering 503.
        "DATABASE_BUSY_TIMEOUT": _int(env, "DATABASE_BUSY_TIMEOUT", 10, minimum=1),
        # The evidence log's checkpoints and witnesses (SPEC §10, docs/evidence.md).
        "EVIDENCE_SIGNING_KEY": _key(env, "EVIDENCE_SIGNING_KEY", notes.parse_signer),
        "EVIDENCE_PUBLIC_KEY": _key(env, "EVIDENCE_PUBLIC_KEY", notes.parse_verifier),
        "EVIDENCE_WITNESS_DIR": (env.get("EVIDENCE_WITNESS_DIR") or "").strip() or None,
        "EVIDENCE_WITNESS_EMAIL": (env.get("EVIDENCE_WITNESS_EMAIL") or "").strip() or None,
        "SMTP_URL": (env.get("SMTP_URL") or "").strip() or None,
        "DEBUG": debug,
        # OWASP's scrypt cost (N=2^17, r=8, p=1); see bot.auth.
        "PASSWORD_HASH_METHOD": "scrypt:131072:8:1",
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
    }


def check(config: Mapping[str, Any]) -> None:
    """Refuse to run with settings that would make the service unsafe."""
    if config.get("TESTING") or config.get("DEBUG"):
        return
    if not config.get("SECRET_KEY"):
        raise ConfigError("SECRET_KEY is required (set it in the environment or .env)")
    if config["TWILIO_VALIDATE_SIGNATURE"] and not config.get("TWILIO_AUTH_TOKEN"):
        raise ConfigError(
            "TWILIO_AUTH_TOKEN is required to validate Twilio's signatures "
            "(TWILIO_VALIDATE_SIGNATURE=false only for local experiments)"
        )
