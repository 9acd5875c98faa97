"""An asyncio load generator for ``/twilio/sms``: a realistic mix, pre-signed, bounded.

The workload is a set of *scripts*, one per contact, each a plausible conversation
on one of several lines (``bench.common.LINES``):

- ``contact_first``   a new contact's first text (held; consent request + notice)
- ``employee_first``  an employee's ``+1… Hi`` to a new contact (held; request + notice)
- ``yes``             the contact's YES (opted in; confirmations; held texts released)
- ``relay_contact``   the contact's text after opt-in, relayed to the employee
- ``relay_employee``  the employee's ``+1… body`` to that opted-in contact, relayed
- ``employee_text``   the employee's text without a number (to the line's current contact)
- ``help``            HELP (``OptOutType=HELP``, as with Advanced Opt-Out)
- ``stop``            STOP (``OptOutType=STOP``)
- ``duplicate``       about 1% of webhooks are sent again later, byte for byte (same
                      MessageSid, signature and idempotency token), as Twilio retries

Every request carries the full parameter set Twilio sends (``ToCountry``, ``SmsSid``,
``NumSegments``, ``ApiVersion``…), so signature validation costs what it costs in
production. All requests are built, form-encoded and signed with twilio's
``RequestValidator`` *before* the timed phase, and written out as the bytes of an
HTTP/1.1 request: sending one is a connect, one write, the answer parsed, a close.

Sending: ``concurrency`` coroutines, each keeping a few scripts in play and sending
their steps round-robin, so one contact's webhooks always go one after another (a
YES never overtakes the first text) while different contacts interleave. Bounded by
a request count and a time cap.

Client: asyncio's transports on uvloop's event loop (libuv) with httptools' parser
(llhttp, Node's) for the answers: about a sixth of aiohttp's CPU a request, so the
generator takes little of the cores it shares with the servers under test
(``bench/README.md``, ``python -m bench.client_choice``). ``client="aiohttp"`` keeps
the aiohttp client, to show what the generator's own cost does to the ratios.

``python -m bench.load --ceiling`` measures the generator's own ceiling against a
trivial asyncio HTTP server in another process.
"""

import argparse
import asyncio
import itertools
import json
import math
import random
import resource
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httptools
import uvloop
from twilio.request_validator import RequestValidator

from bench.common import CLIENTS, LINES, SIGNED_SMS_URL, TOKEN, contact_number, free_port, python

KINDS = (
    "contact_first",
    "employee_first",
    "yes",
    "relay_contact",
    "relay_employee",
    "employee_text",
    "help",
    "stop",
    "duplicate",
)
ACCOUNT = "AC" + "5" * 32
SERVICE = "MG" + "7" * 32
DUPLICATE_RATE = 0.01

FIRST_TEXTS = (
    "Hi, I need a quote for a leaking kitchen tap",
    "Hello! Are you free this week to look at our boiler?",
    "Saw your flyer, do you do bathroom refits?",
    "Hi there, the pipe under the sink burst again, can someone come today?",
)
CONTACT_TEXTS = (
    "Great, Tuesday morning works for me",
    "How much would that be roughly?",
    "Thanks! See you then.",
    "Could you come a bit earlier, around 8?",
    "The code for the gate is 4412",
    "Yes please",
)
EMPLOYEE_TEXTS = (
    "Tuesday at 10 works, see you then",
    "The quote is $240 including parts",
    "On my way, about 15 minutes out",
    "Thanks, all done. Invoice to follow",
    "Can you send a photo of the leak?",
)


@dataclass(frozen=True, slots=True)
class Signed:
    """One ready-to-send webhook."""

    kind: str
    sid: str
    body: bytes
    headers: dict[str, str]


def twilio_params(sid: str, sender: str, to: str, body: str, **extra: str) -> dict[str, str]:
    """The form Twilio posts for an inbound SMS (every field, in Twilio's spelling)."""
    return {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "94103",
        "SmsSid": sid,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "SAN FRANCISCO",
        "Body": body,
        "FromCountry": "US",
        "To": to,
        "MessagingServiceSid": SERVICE,
        "ToZip": "94105",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": sender,
        "ApiVersion": "2010-04-01",
        **extra,
    }


class Signer:
    def __init__(self, token: str = TOKEN, url: str = SIGNED_SMS_URL, seed: int = 0):
        self.validator = RequestValidator(token)
        self.url = url
        self.rng = random.Random(seed)

    def sid(self) -> str:
        return "SM" + f"{self.rng.getrandbits(128):032x}"

    def sign(self, kind: str, sender: str, to: str, body: str, **extra: str) -> Signed:
        sid = self.sid()
        params = twilio_params(sid, sender, to, body, **extra)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": self.validator.compute_signature(self.url, params),
            "I-Twilio-Idempotency-Token": f"{self.rng.getrandbits(128):032x}",
            "User-Agent": "TwilioProxy/1.1",
        }
        return Signed(kind, sid, urlencode(params).encode(), headers)


def script(rng: random.Random, signer: Signer, n: int, contact: str) -> list[Signed]:
    """The webhooks of one contact: a plausible conversation."""
    line = LINES[n % len(LINES)]
    steps: list[Signed] = []

    def from_contact(kind: str, body: str, **extra: str) -> None:
        steps.append(signer.sign(kind, contact, line.line, body, **extra))

    def from_employee(kind: str, body: str) -> None:
        steps.append(signer.sign(kind, line.cell, line.line, body))

    if rng.random() < 0.8:
        from_contact("contact_first", rng.choice(FIRST_TEXTS))
    else:
        from_employee("employee_first", f"{contact} Hi, this is {line.name.split()[0]}")
    answer = rng.random()
    if answer < 0.85:
        from_contact("yes", rng.choice(("YES", "Yes", "yes", "Y")))
        for _ in range(rng.randint(1, 5)):
            turn = rng.random()
            if turn < 0.45:
                from_contact("relay_contact", rng.choice(CONTACT_TEXTS))
            elif turn < 0.8:
                from_employee("relay_employee", f"{contact} {rng.choice(EMPLOYEE_TEXTS)}")
            elif turn < 0.92:
                from_employee("employee_text", rng.choice(EMPLOYEE_TEXTS))
            else:
                from_contact("help", "HELP", OptOutType="HELP")
        if rng.random() < 0.08:
            from_contact("stop", "STOP", OptOutType="STOP")
    elif answer < 0.93:
        from_contact("stop", "STOP", OptOutType="STOP")
    elif answer < 0.97:
        from_contact("help", "HELP", OptOutType="HELP")
    # else: no answer yet
    # Twilio retries: the same request again, later in the same conversation.
    with_retries: list[Signed] = []
    pending: list[Signed] = []
    for step in steps:
        with_retries.append(step)
        with_retries.extend(pending)
        pending = []
        if rng.random() < DUPLICATE_RATE:
            pending.append(Signed("duplicate", step.sid, step.body, step.headers))
    return with_retries + pending


def workload(requests: int, seed: int, contact_base: int, signer: Signer | None = None):
    """Scripts holding at least ``requests`` webhooks; contacts ``contact_base`` on."""
    rng = random.Random(seed)
    signer = signer or Signer(seed=seed)
    scripts, total = [], 0
    for n in itertools.count():
        if total >= requests:
            break
        steps = script(rng, signer, n, contact_number(contact_base + n))
        scripts.append(steps)
        total += len(steps)
    return scripts


# -- driving -------------------------------------------------------------------


@dataclass
class Run:
    """What one timed phase recorded: per request (kind, MessageSid, status, start, latency)."""

    kinds: list[str] = field(default_factory=list)
    sids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    wall: float = 0.0
    cpu: float = 0.0
    capped: bool = False


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Exchange(asyncio.Protocol):
    """One webhook on one connection: the request written as it was prepared, the
    answer parsed by httptools (status line, headers, a body of Content-Length,
    chunked, or up to the close), then the connection closed, as gunicorn's sync
    workers close theirs. An interim answer (1xx) is passed over, as clients do."""

    def __init__(self, request: bytes, done: asyncio.Future):
        self.request = request
        self.done = done
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers_done = False
        self.framed = False  # a Content-Length or Transfer-Encoding: the end is known

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._end(exc)

    # httptools' callbacks
    def on_header(self, name: bytes, _value: bytes):
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self):
        self.headers_done = True

    def on_message_complete(self):
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the answer is still to come
            self.headers_done = self.framed = False
            return
        self._end(status)

    def connection_lost(self, exc):
        if self.done.done():
            return
        if exc is None and self.headers_done and not self.framed:
            # A body that ends with the connection (HTTP/1.0 style): whole at EOF.
            self.done.set_result(self.parser.get_status_code())
            return
        self.done.set_exception(exc or ConnectionResetError("closed before a full answer"))

    def _end(self, outcome):
        if not self.done.done():
            if isinstance(outcome, BaseException):
                self.done.set_exception(outcome)
            else:
                self.done.set_result(outcome)
        self.transport.close()


def wire(url: str) -> Callable[[Signed], bytes]:
    """What writes a step out as the bytes of its HTTP/1.1 request to ``url`` (the
    request line and Host read from the URL once; built before the timed phase)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    start = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"

    def request(step: Signed) -> bytes:
        fields = "".join(f"{name}: {value}\r\n" for name, value in step.headers.items())
        end = f"Content-Length: {len(step.body)}\r\nConnection: close\r\n\r\n"
        return (start + fields + end).encode("latin-1") + step.body

    return request


async def _lean_sender(url: str, timeout: float):
    """Send one prepared request on a connection of its own; its HTTP status."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    loop = asyncio.get_running_loop()

    async def send(request: bytes) -> int:
        done = loop.create_future()
        transport = None
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Exchange(request, done), host, port
                )
                return await done
        finally:
            if transport is not None:
                transport.close()

    return send, None


async def _aiohttp_sender(url: str, concurrency: int, timeout: float):
    """The same with aiohttp (``--client aiohttp``: how much the generator's own cost
    moves the ratios; ``bench.client_choice`` compares the clients alone)."""
    import aiohttp
    import yarl

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
    )
    target = yarl.URL(url)

    async def send(step: Signed) -> int:
        async with session.post(target, data=step.body, headers=step.headers) as response:
            await response.read()
            return response.status

    return send, session.close


# What a failed request raises, whichever the client: counted by name, status -1.
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)


async def drive(
    url: str,
    scripts: list[list[Signed]],
    concurrency: int,
    max_requests: int,
    time_cap: float,
    active_per_worker: int = 4,
    timeout: float = 30.0,
    client: str = "lean",
) -> Run:
    """Send the scripts' webhooks, ``concurrency`` at a time; what each one got."""
    run = Run()
    failures = _FAILURES
    if client == "lean":
        # Every request as bytes before the clock starts: sending is a connect,
        # one write, the answer parsed, a close.
        request = wire(url)
        scripts = [[(step, request(step)) for step in steps] for steps in scripts]
        send, close = await _lean_sender(url, timeout)
    elif client == "aiohttp":
        import aiohttp

        scripts = [[(step, step) for step in steps] for steps in scripts]
        send, close = await _aiohttp_sender(url, concurrency, timeout)
        failures += (aiohttp.ClientError,)
    else:
        raise ValueError(f"client {client!r}: one of {CLIENTS}")
    source = iter(scripts)
    budget = max_requests
    perf = time.perf_counter
    started = perf()
    deadline = started + time_cap
    cpu0 = _cpu()

    async def worker() -> None:
        nonlocal budget
        active: deque = deque()
        while budget > 0:
            if perf() > deadline:
                run.capped = True
                return
            while len(active) < active_per_worker:
                nxt = next(source, None)
                if nxt is None:
                    break
                active.append(iter(nxt))
            if not active:
                return
            steps = active.popleft()
            nxt = next(steps, None)
            if nxt is None:
                continue
            step, request = nxt
            budget -= 1
            t0 = perf()
            try:
                status = await send(request)
            except failures as exc:
                status = -1
                run.errors[type(exc).__name__] += 1
            run.latencies.append(perf() - t0)
            run.starts.append(t0 - started)
            run.kinds.append(step.kind)
            run.sids.append(step.sid)
            run.statuses.append(status)
            active.append(steps)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), time_cap + timeout + 5
        )
    finally:
        run.wall = perf() - started
        run.cpu = _cpu() - cpu0
        if close is not None:
            await close()
    return run


def send_all(url, scripts, concurrency: int, max_requests: int, time_cap: float, client="lean"):
    """``drive`` on its event loop: the lean client on uvloop's (libuv's sockets, less
    of the generator's CPU), aiohttp on asyncio's own, as the generator ran it before."""
    sending = drive(url, scripts, concurrency, max_requests, time_cap, client=client)
    return uvloop.run(sending) if client == "lean" else asyncio.run(sending)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "p50_ms": ms(percentile(ordered, 50)),
        "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1]) if ordered else None,
        "mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
    }


def summarize(run: Run) -> dict:
    n = len(run.latencies)
    # Throughput over the span in which requests were in flight.
    span = max((s + lat for s, lat in zip(run.starts, run.latencies, strict=True)), default=0)
    span -= min(run.starts, default=0)
    statuses = Counter(run.statuses)
    per_kind = {}
    for kind in KINDS:
        lat = [x for k, x in zip(run.kinds, run.latencies, strict=True) if k == kind]
        if lat:
            per_kind[kind] = {"count": len(lat), **latency_summary(lat)}
    return {
        "requests": n,
        "seconds": round(span, 3),
        "throughput_rps": round(n / span, 1) if span else None,
        **latency_summary(run.latencies),
        "non_200": n - statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(run.errors),
        "time_capped": run.capped,
        "mix": {k: round(v["count"] / n, 4) for k, v in per_kind.items()} if n else {},
        "per_kind": per_kind,
        "generator_cpu_s": round(run.cpu, 3),
        "generator_cpu_us_per_request": round(run.cpu / n * 1e6, 1) if n else None,
        "generator_cores_busy": round(run.cpu / run.wall, 3) if run.wall else None,
    }


def run_load(url, scripts, concurrency: int, max_requests: int, time_cap: float, client="lean"):
    return summarize(send_all(url, scripts, concurrency, max_requests, time_cap, client=client))


# -- the generator's own ceiling ------------------------------------------------

TRIVIAL_ANSWER = b'<?xml version="1.0" encoding="UTF-8"?><Response />'


class _Trivial(asyncio.Protocol):
    """Answers each HTTP request with a fixed 200 and closes, as gunicorn's sync worker does."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(rest) < length:
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(TRIVIAL_ANSWER), TRIVIAL_ANSWER)
        )
        self.transport.close()


def serve_trivial(port: int, seconds: float) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(
            _Trivial, "127.0.0.1", port, backlog=1024
        )
        async with server:
            await asyncio.sleep(seconds)

    uvloop.run(main())


def ceiling(requests: int, concurrency: int, time_cap: float = 60, client: str = "lean") -> dict:
    """The generator against a trivial server (another process): its own ceiling."""
    import socket

    port = free_port()
    server = subprocess.Popen(
        [python(), "-m", "bench.load", "--serve-trivial", str(port), "--seconds", "300"]
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("trivial server did not start") from None
                time.sleep(0.05)
        scripts = workload(requests, seed=1, contact_base=9_000_000)
        result = run_load(
            f"http://127.0.0.1:{port}/twilio/sms", scripts, concurrency, requests, time_cap, client
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    keys = ("requests", "throughput_rps", "p50_ms", "p99_ms", "non_200")
    keys += ("generator_cpu_us_per_request", "generator_cores_busy")
    return {k: result[k] for k in keys}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="where to send, e.g. http://127.0.0.1:8000/twilio/sms")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-cap", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--contact-base", type=int, default=0)
    parser.add_argument("--client", choices=CLIENTS, default="lean")
    parser.add_argument("--ceiling", action="store_true", help="measure against a trivial server")
    parser.add_argument("--serve-trivial", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_trivial:
        serve_trivial(args.serve_trivial, min(args.seconds, 600))
        return
    if args.ceiling:
        result = ceiling(args.requests, args.concurrency, args.time_cap, args.client)
        print(json.dumps(result, indent=2))
        return
    if not args.url:
        parser.error("--url or --ceiling")
    sign_started = time.perf_counter()
    scripts = workload(args.requests, args.seed, args.contact_base)
    signing = time.perf_counter() - sign_started
    result = run_load(
        args.url, scripts, args.concurrency, args.requests, args.time_cap, args.client
    )
    result["presign_seconds"] = round(signing, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
