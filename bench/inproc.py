"""CPU per webhook, in one process: the app on SQLite and Postgres against the bare endpoint.

No HTTP, no gunicorn, no load generator: each webhook of the same realistic mix as
``bench.load`` (pre-signed) is handed straight to the WSGI app, one after another,
and the process's CPU time is divided by the count. Rounds alternate between the
targets, so the ratios compare like with like on a noisy machine. This isolates
what the app itself costs per webhook, which is what the throughput ratio of
``bench.run`` comes down to on a CPU-bound machine; Postgres's own CPU (another
process) is reported separately, from /proc.

    python -m bench.inproc                      # 3 rounds x 2,000 webhooks per target
    python -m bench.inproc --profile sqlite     # + cProfile of one SQLite round, top 40
    python -m bench.inproc --no-postgres --requests 500

Bounded: a fixed count per round and a time cap per round.
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    PUBLIC_BASE,
    ROOT,
    SMS_PATH,
    TOKEN,
    app_env,
    cpu_seconds,
    create_pg_db,
    drop_pg_db,
    migrate,
    postgres_pids,
    seed_employees,
)
from bench.load import workload


def _environ(signed) -> dict:
    body = signed.body
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": SMS_PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "CONTENT_TYPE": signed.headers["Content-Type"],
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8000",
    }
    for name, value in signed.headers.items():
        if name != "Content-Type":
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call(app, environ) -> int:
    status = []

    def start_response(code, headers, exc_info=None):
        status.append(int(code.split()[0]))

    chunks = app(environ, start_response)
    try:
        for _ in chunks:
            pass
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    return status[0]


def _app_for(database_url: str):
    """The real app (bot.create_app) on a database migrated and seeded as bench.run does."""
    from bot import create_app

    migrate(database_url)
    seed_employees(database_url)
    return create_app(env=app_env(database_url))


def _bare():
    os.environ["TWILIO_AUTH_TOKEN"] = TOKEN
    os.environ["PUBLIC_BASE_URL"] = PUBLIC_BASE
    import bench.bare

    return bench.bare.app


def _round(app, requests: int, contact_base: int, time_cap: float, profile=None):
    """Send one round; return (webhooks, CPU seconds, wall seconds, non-200s)."""
    scripts = workload(requests, seed=contact_base, contact_base=contact_base)
    # Interleave contacts as the load does (round-robin over scripts in play).
    order, live = [], [list(s) for s in scripts]
    while live and len(order) < requests:
        for steps in live[:8]:
            order.append(steps.pop(0))
        live = [s for s in live if s]
    order = order[:requests]
    environs = [_environ(s) for s in order]
    bad = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    for environ in environs:
        if _call(app, environ) != 200:
            bad += 1
        if time.perf_counter() - wall0 > time_cap:
            break
    if profile:
        profile.disable()
    return len(environs), time.process_time() - cpu0, time.perf_counter() - wall0, bad


def by_package(stats: pstats.Stats, webhooks: int) -> dict[str, tuple[float, float]]:
    """Function calls and own time a webhook, by the package each function is in:
    an installed distribution's top-level name, ``bot``, ``bench``, ``stdlib`` or
    ``builtins`` (functions written in C)."""
    found: dict[str, list[float]] = {}
    for (path, _line, _name), (_prim, calls, own, _cum, _callers) in stats.stats.items():
        if "site-packages/" in path:
            package = path.split("site-packages/", 1)[1].split("/", 1)[0]
        elif path == "~":
            package = "builtins"
        elif Path(path).parent.name in ("bot", "bench") and Path(path).parent.parent == ROOT:
            package = Path(path).parent.name
        elif path.startswith(sys.base_prefix):
            package = "stdlib"
        else:
            package = "other"
        total = found.setdefault(package, [0.0, 0.0])
        total[0] += calls / webhooks
        total[1] += own / webhooks
    return {k: (v[0], v[1]) for k, v in sorted(found.items(), key=lambda i: -i[1][1])}


def _pg_cpu(database: str) -> float:
    return cpu_seconds(postgres_pids(database))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--time-cap", type=float, default=120.0)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", choices=("sqlite", "postgres", "bare"))
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--profile-out", help="also write the cProfile stats to this file")
    args = parser.parse_args(argv)

    os.environ["FLASK_RUN_FROM_CLI"] = ""
    tmp = Path(tempfile.mkdtemp(prefix="bench_inproc_"))
    targets = {"bare": _bare()}
    targets["sqlite"] = _app_for("sqlite:///" + str(tmp / "app.sqlite3"))
    pg_name = None
    if not args.no_postgres:
        pg_name = f"bench_inproc_{os.getpid()}"
        targets["postgres"] = _app_for(create_pg_db(pg_name))
    try:
        totals = {name: [0, 0.0, 0.0] for name in targets}
        pg_cpu = 0.0
        base = 1_000_000
        for app in targets.values():  # warm-up, untimed
            _round(app, 200, base, args.time_cap)
            base += 1000
        for r in range(args.rounds):
            for name, app in targets.items():
                before = _pg_cpu(pg_name) if name == "postgres" else 0.0
                n, cpu, wall, bad = _round(app, args.requests, base, args.time_cap)
                if name == "postgres":
                    pg_cpu += _pg_cpu(pg_name) - before
                base += 10_000
                if bad:
                    raise SystemExit(f"{name}: {bad} webhooks did not answer 200")
                totals[name][0] += n
                totals[name][1] += cpu
                totals[name][2] += wall
                print(
                    f"round {r + 1} {name:9} {n} webhooks  {cpu / n * 1e6:7.0f} µs CPU"
                    f"  {wall / n * 1e6:7.0f} µs wall each",
                    flush=True,
                )
        bare_cpu = totals["bare"][1] / totals["bare"][0]
        print()
        for name, (n, cpu, _wall) in totals.items():
            extra = ""
            if name == "postgres" and n:
                extra = f"  + Postgres server {pg_cpu / n * 1e6:.0f} µs"
            print(
                f"{name:9} {cpu / n * 1e6:7.0f} µs CPU per webhook"
                f" (x{cpu / n / bare_cpu:.2f} the bare endpoint){extra}"
            )
        if args.profile:
            profile = cProfile.Profile()
            _round(targets[args.profile], args.requests, base, args.time_cap, profile)
            if args.profile_out:
                profile.dump_stats(args.profile_out)
            stats = pstats.Stats(profile).sort_stats("cumulative")
            stats.print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
            print(f"by package, a webhook ({args.profile}; times with cProfile's own cost):")
            for package, (calls, seconds) in by_package(stats, args.requests).items():
                print(f"  {calls:7.1f} calls {seconds * 1e6:8.1f} µs  {package}")
    finally:
        for app in targets.values():
            if hasattr(app, "extensions") and "sqlalchemy" in app.extensions:
                with app.app_context():
                    app.extensions["sqlalchemy"].engine.dispose()
        if pg_name:
            drop_pg_db(pg_name)


if __name__ == "__main__":
    main()
