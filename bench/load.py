"""The load: a realistic mix of signed webhooks, sent closed loop or open loop.

A *script* is one contact's conversation with a line, in order: a first text
(from the contact, or the employee addressing them), mostly YES, then texts both
ways, now and then HELP or STOP, and 1 % of webhooks sent twice (Twilio's
retries). Scripts run concurrently; the steps of one script never overlap.
Every request is built and signed before the clock starts.
"""

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

from bench.common import LINES, PUBLIC_BASE, TOKEN, contact_number

DUPLICATE_RATE = 0.01
FIRST = ("Hi, is this the plumber?", "Hello, I got your number from a neighbour", "Hi Ana")
CONTACT = ("Tuesday morning works", "How much would that be?", "Thanks! See you then.")
EMPLOYEE = ("Tuesday at 10 works", "The quote is $240 with parts", "On my way, 15 minutes out")


@dataclass(frozen=True, slots=True)
class Webhook:
    kind: str
    request: bytes  # the whole HTTP request, signed


class Signer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.validator = RequestValidator(TOKEN)

    def webhook(self, kind: str, sender: str, to: str, body: str, **extra: str) -> Webhook:
        sid = f"SM{self.rng.getrandbits(128):032x}"
        params = {
            "ToCountry": "US",
            "SmsMessageSid": sid,
            "NumMedia": "0",
            "SmsSid": sid,
            "SmsStatus": "received",
            "Body": body,
            "To": to,
            "NumSegments": "1",
            "MessageSid": sid,
            "AccountSid": "AC" + "b" * 32,
            "From": sender,
            "FromCountry": "US",
            "ApiVersion": "2010-04-01",
            **extra,
        }
        form = urlencode(params).encode()
        signature = self.validator.compute_signature(PUBLIC_BASE + "/twilio/sms", params)
        head = (
            "POST /twilio/sms HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(form)}\r\n\r\n"
        )
        return Webhook(kind, head.encode() + form)


def script(rng: random.Random, signer: Signer, n: int) -> list[Webhook]:
    """The webhooks of the n-th contact's conversation."""
    contact = contact_number(n)
    name, cell, line = LINES[n % len(LINES)]
    steps = []

    def from_contact(kind, body, **extra):
        steps.append(signer.webhook(kind, contact, line, body, **extra))

    def from_employee(kind, body):
        steps.append(signer.webhook(kind, cell, line, body))

    if rng.random() < 0.8:
        from_contact("contact first", rng.choice(FIRST))
    else:
        from_employee("employee first", f"{contact} Hi, this is {name.split()[0]}")
    answer = rng.random()
    if answer < 0.85:
        from_contact("yes", rng.choice(("YES", "Yes", "yes", "Y")))
        for _ in range(rng.randint(1, 5)):
            turn = rng.random()
            if turn < 0.45:
                from_contact("relay contact", rng.choice(CONTACT))
            elif turn < 0.92:
                from_employee("relay employee", f"{contact} {rng.choice(EMPLOYEE)}")
            else:
                from_contact("help", "HELP", OptOutType="HELP")
        if rng.random() < 0.08:
            from_contact("stop", "STOP", OptOutType="STOP")
    elif answer < 0.93:
        from_contact("stop", "STOP", OptOutType="STOP")
    elif answer < 0.97:
        from_contact("help", "HELP", OptOutType="HELP")
    with_retries = []
    for step in steps:
        with_retries.append(step)
        if rng.random() < DUPLICATE_RATE:
            with_retries.append(Webhook("duplicate", step.request))
    return with_retries


def workload(requests: int, seed: int, first_contact: int = 0) -> list[list[Webhook]]:
    """New contacts' scripts (from ``first_contact`` on), ``requests`` webhooks or a few more."""
    rng, signer = random.Random(seed), Signer(seed)
    scripts, total = [], 0
    while total < requests:
        scripts.append(script(rng, signer, first_contact + len(scripts)))
        total += len(scripts[-1])
    return scripts


@dataclass
class Run:
    """What a timed phase recorded, one entry per webhook."""

    kinds: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict:
        ordered = sorted(self.latencies)

        def ms(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

        done = len(self.statuses)
        return {
            "requests": done,
            "not_200": sum(1 for s in self.statuses if s != 200),
            "per_second": round(done / self.wall, 1) if self.wall else 0.0,
            "p50_ms": ms(0.50) if done else None,
            "p95_ms": ms(0.95) if done else None,
            "p99_ms": ms(0.99) if done else None,
            "max_ms": round(ordered[-1] * 1000, 2) if done else None,
        }


async def _send(host: str, port: int, webhook: Webhook) -> int:
    """One request on a connection of its own (gunicorn's sync workers close each one);
    its HTTP status, or 0 when there was no answer."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(webhook.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            return status
        finally:
            writer.close()
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return 0


def closed_loop(base: str, scripts: list[list[Webhook]], concurrency: int, cap: float) -> Run:
    """``concurrency`` scripts at a time, each step sent when the one before is answered."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    run, queue = Run(), list(reversed(scripts))

    async def worker(deadline: float) -> None:
        while queue and time.monotonic() < deadline:
            for webhook in queue.pop():
                start = time.perf_counter()
                status = await _send(host, port, webhook)
                run.latencies.append(time.perf_counter() - start)
                run.statuses.append(status)
                run.kinds.append(webhook.kind)

    async def main() -> None:
        start = time.monotonic()
        await asyncio.gather(*(worker(start + cap) for _ in range(concurrency)))
        run.wall = time.monotonic() - start

    asyncio.run(main())
    return run


def interleaved(scripts: list[list[Webhook]], active: int) -> list[Webhook]:
    """The scripts' webhooks in one order: ``active`` scripts at a time, a step of each in
    turn, so that the steps of one script are far apart however fast they are sent."""
    order = []
    for start in range(0, len(scripts), active):
        batch = [list(s) for s in scripts[start : start + active]]
        while any(batch):
            order += [steps.pop(0) for steps in batch if steps]
    return order


def open_loop(base: str, webhooks: list[Webhook], rate: float) -> Run:
    """Each webhook sent at its own time (``rate`` a second) whether or not earlier ones
    were answered; its latency counts from that time, so a server that falls behind
    shows it."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    run = Run()

    async def one(webhook: Webhook, due: float) -> None:
        status = await _send(host, port, webhook)
        run.latencies.append(time.perf_counter() - due)
        run.statuses.append(status)
        run.kinds.append(webhook.kind)

    async def main() -> None:
        start, tasks = time.perf_counter(), []
        for i, webhook in enumerate(webhooks):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(webhook, due)))
        await asyncio.gather(*tasks)
        run.wall = time.perf_counter() - start

    asyncio.run(main())
    return run
