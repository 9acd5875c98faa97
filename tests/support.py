"""Test support: constants, app factory, TwiML parsing and a Twilio-like signer."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
from flask_migrate import upgrade
from twilio.request_validator import RequestValidator

from bot import create_app
from bot.extensions import db

TOKEN = "test-auth-token"
LINE = "+14155550100"
CELL = "+14155550111"
CONTACT = "+14155550123"
OTHER = "+14155550124"
BASE = "http://localhost"

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgres"] if TEST_DATABASE_URL else [])
TABLES = (
    "attestations",
    "messages",
    "conversations",
    "employees",
    "settings",
    "admin_sessions",
    "login_attempts",
    "admins",
    "evidence_tree_nodes",
    "evidence_witness_copies",
    "evidence_checkpoints",
    "evidence_verify_runs",
)
# The Merkle tree's one row, back to an empty tree (SHA-256 of nothing).
EMPTY_TREE = (
    "UPDATE evidence_tree SET size = 0,"
    " root = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'"
)


def base_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The environment a test app sees: nothing from the machine leaks in."""
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "COMPANY_NAME": "Acme Plumbing",
    }
    env.update(overrides)
    return env


def add_alice(runner) -> str:
    """Alice, whose line is LINE and cell CELL, added through the CLI as an admin would."""
    result = runner.invoke(
        args=["employees", "add", "--name", "Alice", "--cell", CELL, "--line", LINE]
    )
    assert result.exit_code == 0, result.output
    return "Alice"


def make_app(database_url: str, **overrides: str):
    return create_app({"TESTING": True}, env=base_env(database_url, **overrides))


def migrate(database_url: str) -> None:
    app = make_app(database_url)
    with app.app_context():
        upgrade()
        db.engine.dispose()


@dataclass
class Sent:
    """One ``<Message>`` of a TwiML answer."""

    body: str
    to: str | None
    from_: str | None
    media: list[str]
    status_callback: str

    @property
    def ref(self) -> str:
        return parse_qs(urlsplit(self.status_callback).query)["ref"][0]


def parse_twiml(xml: bytes | str) -> list[Sent]:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    sent = []
    for message in root:
        assert message.tag == "Message"
        body = message.find("Body")
        sent.append(
            Sent(
                body=(body.text if body is not None else message.text) or "",
                to=message.get("to"),
                from_=message.get("from"),
                media=[m.text for m in message.findall("Media")],
                status_callback=message.get("statusCallback"),
            )
        )
    return sent


class Twilio:
    """Sends webhooks to the app the way Twilio does: form-encoded and signed."""

    def __init__(self, client, token: str = TOKEN, base: str = BASE):
        self.client = client
        self.validator = RequestValidator(token)
        self.base = base

    def post(self, path: str, params: dict, headers: dict | None = None, url: str | None = None):
        signature = self.validator.compute_signature(url or self.base + path, params)
        return self.client.post(
            path, data=params, headers={"X-Twilio-Signature": signature, **(headers or {})}
        )

    def sms(self, sender: str, body: str = "", to: str = LINE, sid: str | None = None, **extra):
        """Deliver one inbound text; answer the parsed TwiML (asserting a 200)."""
        params = {
            "MessageSid": sid or "SM" + uuid.uuid4().hex,
            "AccountSid": "AC" + "0" * 32,
            "From": sender,
            "To": to,
            "Body": body,
            "NumMedia": str(sum(1 for k in extra if k.startswith("MediaUrl"))),
            **extra,
        }
        response = self.post("/twilio/sms", params)
        assert response.status_code == 200, response.data
        assert response.mimetype == "text/xml"
        return parse_twiml(response.data)

    def status(self, sent: Sent, status: str, sid: str = "SMout", error: str | None = None):
        params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
        if error:
            params["ErrorCode"] = error
        path = urlsplit(sent.status_callback)
        return self.post(f"{path.path}?{path.query}", params)


def bodies(sent: list[Sent], to: str | None = "any") -> list[str]:
    """The bodies of the messages addressed to ``to`` (None: the reply to the sender)."""
    return [s.body for s in sent if to == "any" or s.to == to]


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gunicorn(database_url: str, workers: int = 2, extra_args=(), **env_overrides: str):
    """The app under gunicorn (``wsgi:app``, as the Procfile runs it) on loopback."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PUBLIC_"))}
    env.update(base_env(database_url), SIMULATOR_ENABLED="false", TRUSTED_PROXIES="0")
    env.update(env_overrides)
    command = [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--log-level", "warning", *extra_args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
