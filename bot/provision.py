"""``twilio setup`` (SPEC §12): each active line's number, Messaging Service and webhooks.

For every active line, through Twilio's REST API: the number must be in the
account; it gets a Messaging Service of its own, named after the employee, whose
inbound webhook, status callback and fallback URL point at ``PUBLIC_BASE_URL``;
and the number is put in that service (moved out of another one if need be).
Without ``apply`` nothing is changed and the plan is returned; with it, the
changes are made. A second run finds nothing to change. What the API cannot set
(Advanced Opt-Out's keyword lists and texts) is returned as console steps.

Twilio's 429 and 5xx answers are retried with exponential back-off.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import current_app
from twilio.base.exceptions import TwilioException, TwilioRestException

from bot import employees as staff
from bot import phones, reconcile, texts
from bot import settings as org_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
TRIES = 5


class SetupError(RuntimeError):
    """Set-up cannot run, or Twilio refused it: said in plain words."""


@dataclass
class LineSetup:
    line: str
    employee: str
    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    service: str | None = None  # the Messaging Service's name


@dataclass
class Setup:
    applied: bool
    lines: list[LineSetup] = field(default_factory=list)
    console_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(line.errors for line in self.lines)

    @property
    def changes(self) -> int:
        return sum(len(line.changes) for line in self.lines)


def urls() -> dict[str, str]:
    """What a line's Messaging Service should call, from PUBLIC_BASE_URL."""
    base = current_app.config.get("PUBLIC_BASE_URL")
    if not base:
        raise SetupError("PUBLIC_BASE_URL is not set: it is the https address Twilio calls")
    if not base.startswith("https://"):
        raise SetupError(f"PUBLIC_BASE_URL must be https (Twilio signs https), not {base}")
    return {
        "inbound_request_url": f"{base}/twilio/sms",
        # Twilio tries the fallback once when the first try fails or times out: the
        # same idempotent webhook, which another worker or dyno may answer.
        "fallback_url": f"{base}/twilio/sms",
        "status_callback": f"{base}/twilio/status",
    }


def service_name(employee: str, line: str) -> str:
    return f"ConsentLine {employee} {line}"[:64]


def retried(call: Callable[[], T], what: str) -> T:
    """``call()``, again after a pause while Twilio answers 429 or 5xx."""
    pause = current_app.config.get("TWILIO_BACKOFF", 0.5)
    for attempt in range(1, TRIES + 1):
        try:
            return call()
        except (TwilioException, OSError) as exc:  # requests' errors are OSErrors
            status = _status(exc)
            passing = status is None or status == 429 or status >= 500
            if not passing or attempt == TRIES:
                raise SetupError(_plain(status, exc, what)) from None
            log.warning("Twilio answered %s to %s; trying again", status, what)
            time.sleep(pause * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _status(exc: Exception) -> int | None:
    """The HTTP status of a refusal: a resource's, or a listing page's (whose exception
    carries the response)."""
    if isinstance(exc, TwilioRestException):
        return exc.status
    if not isinstance(exc, TwilioException):
        return None  # the network: no answer at all
    response = exc.args[1] if len(exc.args) > 1 else None
    return getattr(response, "status_code", None)


def _plain(status: int | None, exc: Exception, what: str) -> str:
    if status in (401, 403):
        return "Twilio refused the credentials: check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
    if status == 429:
        return f"Twilio kept answering 'too many requests' to {what}: run it again in a minute"
    if status is None:
        return f"Twilio could not be reached to {what}: {exc}"
    return f"Twilio refused to {what}: {exc}"


def run(apply: bool = False, http_client: Any = None) -> Setup:
    """Plan (or, with ``apply``, make) every active line's set-up."""
    wanted = urls()
    api = reconcile.client(http_client)
    report = Setup(applied=apply)
    services = retried(lambda: list(api.messaging.v1.services.stream()), "list Messaging Services")
    members: dict[str, set[str]] = {}  # a service's numbers, listed once a run
    for employee in (e for e in staff.listing() if e.active):
        line = LineSetup(employee.line, employee.name)
        report.lines.append(line)
        try:
            _one_line(api, line, services, members, wanted, apply)
        except SetupError as exc:
            line.errors.append(str(exc))
    report.console_steps = console_steps([line for line in report.lines if line.service])
    return report


def _numbers(api, members: dict[str, set[str]], service) -> set[str]:
    """The numbers (PN sids) in ``service``, fetched the first time they are asked for."""
    if service.sid not in members:
        held = retried(
            lambda: list(api.messaging.v1.services(service.sid).phone_numbers.stream()),
            f"list the numbers of {service.friendly_name}",
        )
        members[service.sid] = {number.sid for number in held}
    return members[service.sid]


def _one_line(api, line: LineSetup, services: list, members, wanted: dict, apply: bool) -> None:
    number = phones.bare(line.line)
    found = retried(
        lambda: api.incoming_phone_numbers.list(phone_number=number), f"look up {number}"
    )
    if not found:
        raise SetupError(f"{number} is not a number of this Twilio account")
    number_sid = found[0].sid
    name = service_name(line.employee, number)
    line.service = name
    service = next((s for s in services if s.friendly_name == name), None)
    settings = wanted | {"inbound_method": "POST", "fallback_method": "POST"}
    settings["use_inbound_webhook_on_number"] = False
    if service is None:
        line.changes.append(
            f"create Messaging Service {name!r} calling {wanted['inbound_request_url']}"
        )
        if apply:
            service = retried(
                lambda: api.messaging.v1.services.create(friendly_name=name, **settings),
                f"create the Messaging Service {name}",
            )
            services.append(service)
            members[service.sid] = set()
    else:
        differ = {k: v for k, v in settings.items() if getattr(service, k, None) != v}
        if differ:
            line.changes.append(f"set {', '.join(sorted(differ))} of {name!r}")
            if apply:
                retried(
                    lambda: api.messaging.v1.services(service.sid).update(**differ),
                    f"update the Messaging Service {name}",
                )
    # A number belongs to one service at most: out of any other, into its own.
    for other in services:
        if other is service or number_sid not in _numbers(api, members, other):
            continue
        line.changes.append(f"take {number} out of Messaging Service {other.friendly_name!r}")
        if apply:
            retried(
                lambda other=other: (
                    api.messaging.v1.services(other.sid).phone_numbers(number_sid).delete()
                ),
                f"take {number} out of {other.friendly_name}",
            )
            members[other.sid].discard(number_sid)
    if service is not None and number_sid in _numbers(api, members, service):
        return
    line.changes.append(f"put {number} in Messaging Service {name!r}")
    if apply:
        retried(
            lambda: api.messaging.v1.services(service.sid).phone_numbers.create(
                phone_number_sid=number_sid
            ),
            f"put {number} in {name}",
        )
        members[service.sid].add(number_sid)


def console_steps(lines: list[LineSetup]) -> list[str]:
    """Advanced Opt-Out, which Twilio's API cannot set: the console steps, texts included."""
    if not lines:
        return []
    current = org_settings.current()
    template = current.text("opt_out.to_contact")
    steps = [
        "In the Twilio console, Messaging > Services, for each service below: "
        "Opt-Out Management, turn on Advanced Opt-Out (it cannot be turned off again).",
    ]
    for line in lines:
        values = {"company_name": current.company_name, "employee_name": line.employee}
        steps.append(
            f"{line.service!r}: opt-out confirmation, paste exactly: "
            + texts.render(template, values)
        )
    return [
        *steps,
        "Opt-in keywords: remove YES (START and UNSTOP stay), so a contact's YES reaches "
        "ConsentLine as an answer and Twilio sends no re-subscribe text of its own.",
        "Help: set the help text to ConsentLine's help.to_contact, or the contact sees both.",
        "Save. Run `flask --app app twilio setup` again: it should find nothing to change.",
    ]
