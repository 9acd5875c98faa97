"""The load generator's client counts what it got, and every failure as a failure.

    .venv/bin/python -m bench.check_client      # in make bench-smoke; exits 1 on a mismatch

Small servers in this process, each on a loopback port, answer the lean client
(``bench.load``, ``client="lean"``) in one way each: a whole answer (200 and 503,
one with a chunked body), an answer cut short, bytes that are not HTTP, a connection
closed without a word, one that never answers (the request's timeout), and a port
nobody listens on. The check fails unless each webhook is recorded with the status it
got, or with -1 and the error's name.
"""

import asyncio
import socket
import sys

import uvloop

from bench.load import Signed, drive

GOOD = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 11\r\n\r\n<Response/>"
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"
GARBAGE = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"

# What each server answers, and what the client must record for each webhook.
CASES = {
    "whole": (GOOD, [200], {}),
    "busy": (BUSY, [503], {}),
    "chunked": (CHUNKED, [200], {}),
    "cut short": (CUT, [-1], {"ConnectionResetError": 1}),
    "not http": (GARBAGE, [-1], {"HttpParserError": 1}),
    "closed": (b"", [-1], {"ConnectionResetError": 1}),
    "silent": (None, [-1], {"TimeoutError": 1}),
}


def _webhook() -> Signed:
    return Signed("contact_first", "SM0", b"Body=Hi", {"Content-Type": "text/plain"})


async def _serve(answer: bytes | None) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:  # never answers: waits for the client to give up
            await reader.read()
        writer.write(answer or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _check() -> list[str]:
    problems = []
    for name, (answer, statuses, errors) in CASES.items():
        server, port = await _serve(answer)
        async with server:
            url = f"http://127.0.0.1:{port}/twilio/sms"
            run = await drive(url, [[_webhook()]], 1, 1, 10, timeout=0.5)
        got = (run.statuses, dict(run.errors))
        if got != (statuses, errors) or len(run.latencies) != 1:
            problems.append(f"{name}: recorded {got}, expected {(statuses, errors)}")
    with socket.socket() as unused:  # a port nobody listens on once this closes
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    run = await drive(f"http://127.0.0.1:{port}/twilio/sms", [[_webhook()]], 1, 1, 10)
    if run.statuses != [-1] or dict(run.errors) != {"ConnectionRefusedError": 1}:
        problems.append(f"refused: recorded {run.statuses}, {dict(run.errors)}")
    return problems


def main() -> None:
    problems = uvloop.run(_check())
    for problem in problems:
        print(f"bench.check_client: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"bench.check_client: {len(CASES) + 1} cases recorded as expected")


if __name__ == "__main__":
    main()
