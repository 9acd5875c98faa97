"""Why the lean client: the candidate clients against the same trivial server, same requests.

    .venv/bin/python -m bench.client_choice [--requests 3000] [--concurrency 8]

httpx is not a dependency of the bench; to include it without touching the venv::

    .venv/bin/pip install --target /tmp/bench-httpx httpx
    PYTHONPATH=/tmp/bench-httpx .venv/bin/python -m bench.client_choice

The clients: the generator's own (``bench.load``, asyncio's transports on uvloop
with httptools' parser), aiohttp (on asyncio's loop, as the generator used it
before) and httpx (if installed). Each client sends the same pre-signed webhooks
(``bench.load.workload``) with the same concurrency and no keep-alive (gunicorn's
sync workers close every connection). The figure that matters is the generator's CPU
per request: the less it spends, the less it takes from the two cores the servers
under test share with it, and the less the bare endpoint's rounds measure the
generator instead of the endpoint.
"""

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import time

import uvloop

from bench.common import free_port, python
from bench.load import drive, latency_summary, workload


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive_httpx(url, scripts, concurrency):
    import httpx

    steps = [s for script in scripts for s in script]
    queue = iter(steps)
    latencies, statuses = [], []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            for step in queue:
                t0 = time.perf_counter()
                response = await client.post(url, content=step.body, headers=step.headers)
                latencies.append(time.perf_counter() - t0)
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses


def measure(name, coro_factory, n, run=asyncio.run):
    cpu0, t0 = _cpu(), time.perf_counter()
    latencies = run(coro_factory())
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "client": name,
        "requests": n,
        "throughput_rps": round(n / wall, 1),
        "cpu_us_per_request": round(cpu / n * 1e6, 1),
        **latency_summary(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([python(), "-m", "bench.load", "--serve-trivial", str(port)])
    url = f"http://127.0.0.1:{port}/twilio/sms"
    results = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        n, c = args.requests, args.concurrency
        for attempt in range(2):  # alternate, twice each
            scripts = workload(n, seed=attempt, contact_base=8_000_000)
            total = min(n, sum(map(len, scripts)))

            async def with_lean(scripts=scripts):
                return (await drive(url, scripts, c, n, 120)).latencies

            results.append(measure("lean (uvloop + httptools)", with_lean, total, uvloop.run))

            async def with_aiohttp(scripts=scripts):
                return (await drive(url, scripts, c, n, 120, client="aiohttp")).latencies

            results.append(measure("aiohttp", with_aiohttp, total))
            try:
                import httpx  # noqa: F401
            except ImportError:
                continue

            async def with_httpx(scripts=scripts):
                return (await drive_httpx(url, scripts, c))[0]

            results.append(measure("httpx", with_httpx, sum(map(len, scripts))))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
