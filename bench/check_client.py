"""The load generator's client counts what it got, and every failure as a failure.

    .venv/bin/python -m bench.check_client    # in make bench and bench-smoke; 1 on a mismatch

Small servers in this process, each on a loopback port, answer the lean client
(``bench.load``, ``client="lean"``) in one way each: whole answers (200 and 503,
one with a chunked body, one whose body ends with the connection, one after a
``100 Continue``), an answer cut short, bytes that are not HTTP, a switch of
protocols, a connection closed without a word, one that never answers (the
request's timeout), and a port nobody listens on. Each server also checks the
request it got: the request line, ``Host``, ``Content-Length`` and the body, byte
for byte. The check fails unless each webhook is recorded with the status it got,
or with -1 and the error's name, every request arrived as sent, and no socket is
left open.
"""

import asyncio
import contextlib
import os
import socket
import sys

import uvloop

from bench.load import Signed, drive

GOOD = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 11\r\n\r\n<Response/>"
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<Response/>"
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n" + GOOD
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"
GARBAGE = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
UPGRADE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

# What each server answers, and what the client must record for each webhook.
CASES = {
    "whole": (GOOD, [200], {}),
    "busy": (BUSY, [503], {}),
    "chunked": (CHUNKED, [200], {}),
    "until close": (UNTIL_CLOSE, [200], {}),
    "interim": (INTERIM, [200], {}),
    "cut short": (CUT, [-1], {"ConnectionResetError": 1}),
    "not http": (GARBAGE, [-1], {"HttpParserError": 1}),
    "upgrade": (UPGRADE, [-1], {"HttpParserUpgrade": 1}),
    "closed": (b"", [-1], {"ConnectionResetError": 1}),
    "silent": (None, [-1], {"TimeoutError": 1}),
}

BODY = b"Body=Hi+there%21&From=%2B15550001111"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
WEBHOOK = Signed("contact_first", "SM0", BODY, FORM)


def _sockets() -> int:
    """Sockets this process has open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed while listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def _serve(answer: bytes | None, problems: list[str], name: str):
    async def handle(reader, writer):
        try:
            await exchange(reader, writer)
        except Exception as exc:  # a request not as sent, a client that does not let go
            problems.append(f"{name}: the server failed: {exc!r}")
        finally:
            writer.close()

    async def exchange(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        port = writer.get_extra_info("sockname")[1]
        length = int(fields.get("content-length", "-1"))
        body = await asyncio.wait_for(reader.readexactly(max(length, 0)), 2)
        expected = {
            "request line": (lines[0], "POST /twilio/sms HTTP/1.1"),
            "Host": (fields.get("host"), f"127.0.0.1:{port}"),
            "Content-Type": (fields.get("content-type"), WEBHOOK.headers["Content-Type"]),
            "Connection": (fields.get("connection"), "close"),
            "body": (body, BODY),
        }
        for what, (got, want) in expected.items():
            if got != want:
                problems.append(f"{name}: the server got {what} {got!r}, not {want!r}")
        if answer is None:  # never answers: the client must close once its timeout ran out
            await asyncio.wait_for(reader.read(), 2)
        writer.write(answer or b"")
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _check() -> list[str]:
    problems: list[str] = []
    before = _sockets()
    for name, (answer, statuses, errors) in CASES.items():
        server, port = await _serve(answer, problems, name)
        async with server:
            url = f"http://127.0.0.1:{port}/twilio/sms"
            run = await drive(url, [[WEBHOOK]], 1, 1, 10, timeout=0.5)
        got = (run.statuses, dict(run.errors))
        if got != (statuses, errors) or len(run.latencies) != 1:
            problems.append(f"{name}: recorded {got}, expected {(statuses, errors)}")
    with socket.socket() as unused:  # a port nobody listens on once this closes
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    run = await drive(f"http://127.0.0.1:{port}/twilio/sms", [[WEBHOOK]], 1, 1, 10)
    if run.statuses != [-1] or dict(run.errors) != {"ConnectionRefusedError": 1}:
        problems.append(f"refused: recorded {run.statuses}, {dict(run.errors)}")
    await asyncio.sleep(0.1)  # transports close on the loop's next turns
    if _sockets() != before:
        problems.append(f"{_sockets() - before} socket(s) left open")
    return problems


def main() -> None:
    problems = uvloop.run(_check())
    for problem in problems:
        print(f"bench.check_client: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"bench.check_client: {len(CASES) + 1} cases recorded as expected, requests as sent")


if __name__ == "__main__":
    main()
