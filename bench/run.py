"""The throughput bench: ConsentLine's webhook against the bare endpoint, side by side.

    .venv/bin/python -m bench.run            # the full run (a few minutes)
    .venv/bin/python -m bench.run --smoke    # under a minute, small counts (CI; not asserted)

Creates a fresh SQLite file and a fresh Postgres database ``bench_<pid>``, runs
``flask --app app db upgrade`` on each (from the project root, environment
``DATABASE_URL``/``SECRET_KEY``/``TWILIO_AUTH_TOKEN``…), adds the employees with
``flask --app app employees add``, and starts three gunicorns with the Procfile's
command (``gunicorn MODULE --bind 127.0.0.1:PORT``, ``WEB_CONCURRENCY`` workers each):
the bare endpoint (``bench.bare:app``), the app on SQLite and the app on Postgres
(``wsgi:app``). Each is warmed up, then rounds alternate

    bare, app-sqlite, bare, app-postgres, bare, app-sqlite, …

so each app round is measured right after a bare round under the same conditions.
Every round sends a fresh, pre-signed workload (``bench.load``). At the end it checks
``flask --app app audit verify`` on both databases, prints a table and writes
``bench/results/latest.json`` (``smoke.json`` for ``--smoke``). Databases are dropped.

``--floor`` adds ``bench.floor`` (the bare endpoint plus one durable write of the
text) on a database of its own beside each app, in the same alternation, and
reports ``app / floor`` too. The run exits 1 when a timed round answered anything
but 200 (every webhook of the mix is genuine), a floor kept other than one text
per MessageSid answered, or ``audit verify`` failed: its figures would mean nothing.
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench import common, floor
from bench.load import Run, ceiling, latency_summary, send_all, summarize, workload

GOAL = 0.5  # the app should reach at least half of the bare endpoint's throughput
PG_NAME = f"bench_{os.getpid()}"
PG_FLOOR_NAME = PG_NAME + "_floor"


def prepare(database_url: str) -> float:
    started = time.monotonic()
    common.migrate(database_url)
    common.seed_employees(database_url)
    return time.monotonic() - started


def one_round(
    server: common.Server,
    requests,
    concurrency,
    time_cap,
    seed,
    contact_base,
    pg_name=None,
    client="lean",
):
    """Sign a fresh workload (untimed), then send it; CPU of the servers is read from /proc
    (gunicorn's master and workers; the Postgres backends serving ``pg_name``, if any)."""
    scripts = workload(requests, seed=seed, contact_base=contact_base)
    pids = [server.proc.pid, *server.workers()]
    server0 = common.cpu_by_pid(pids)
    pg0 = common.cpu_by_pid(common.postgres_pids(pg_name)) if pg_name else {}
    run = send_all(server.sms_url, scripts, concurrency, requests, time_cap, client=client)
    server_cpu = common.cpu_spent(server0, common.cpu_by_pid(pids))
    pg_cpu = 0.0
    if pg_name:
        pg_cpu = common.cpu_spent(pg0, common.cpu_by_pid(common.postgres_pids(pg_name)))
    return run, server_cpu, pg_cpu


def round_line(index: int, count: int, name: str, s: dict) -> str:
    """How a round is printed as it ends."""
    return (
        f"round {index + 1:2d}/{count} {name:<13} {s['requests']:6d} req "
        f"{s['throughput_rps']:8.1f} req/s  p50 {s['p50_ms']:7.2f}  "
        f"p99 {s['p99_ms']:7.2f} ms  non-200 {s['non_200']}"
    )


def new_texts(run: Run) -> int:
    """The MessageSids of a round answered 200 (a repeat's original was sent before it)."""
    return len({sid for sid, s in zip(run.sids, run.statuses, strict=True) if s == 200})


def run_rounds(
    servers: dict,
    schedule: list[str],
    args,
    pg_names: dict[str, str],
    floors: dict[str, str] | None = None,
):
    """The timed rounds, in the schedule's order: each target's runs, and each round's
    summary with the CPU per request of its server and of the Postgres backends
    serving ``pg_names[target]`` (if it has one). A floor's round also counts the
    texts its database gained, which must be one per new text answered."""
    floors = floors or {}
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    rounds = []
    for i, name in enumerate(schedule):
        before = floor.kept(floors[name]) if name in floors else None
        run, server_cpu, pg_cpu = one_round(
            servers[name],
            args.requests,
            args.concurrency,
            args.time_cap,
            seed=100 + i,
            contact_base=100_000 * (i + 1),
            pg_name=pg_names.get(name),
            client=args.client,
        )
        runs[name].append(run)
        s = summarize(run)
        n = max(1, s["requests"])
        rounds.append(
            {
                "index": i,
                "target": name,
                "loadavg": os.getloadavg(),
                "server_cpu_us_per_request": round(server_cpu / n * 1e6, 1),
                "postgres_cpu_us_per_request": round(pg_cpu / n * 1e6, 1),
                **s,
            }
        )
        if before is not None:
            rounds[-1]["texts_kept"] = floor.kept(floors[name]) - before
            rounds[-1]["new_texts_answered"] = new_texts(run)
        print(round_line(i, len(schedule), name, s), flush=True)
    return runs, rounds


def per_request(rounds: list[dict], target: str, key: str) -> float:
    """A per-request figure of ``target``'s rounds (``server_cpu_us_per_request``…), pooled."""
    mine = [r for r in rounds if r["target"] == target]
    n = max(1, sum(r["requests"] for r in mine))
    return sum(r[key] * r["requests"] for r in mine) / n


def pooled(runs: list[Run]) -> dict:
    """All rounds of one target together: throughput = requests / time in flight."""
    latencies = [x for r in runs for x in r.latencies]
    summaries = [summarize(r) for r in runs]
    seconds = sum(s["seconds"] for s in summaries)
    return {
        "rounds": len(runs),
        "requests": len(latencies),
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(latencies) / seconds, 1) if seconds else None,
        **latency_summary(latencies),
        "non_200": sum(s["non_200"] for s in summaries),
        "statuses": dict(sum((Counter(s["statuses"]) for s in summaries), Counter())),
    }


def verify(database_url: str) -> dict:
    started = time.monotonic()
    try:
        out = common.flask(["audit", "verify"], database_url)
        ok = True
    except RuntimeError as exc:
        out, ok = str(exc), False
    return {"ok": ok, "output": out.strip()[-300:], "seconds": round(time.monotonic() - started, 2)}


def profile(server: common.Server, seconds: float, out: Path, args, contact_base: int) -> dict:
    """An extra, unmeasured round with py-spy sampling the server's workers."""
    spy = shutil.which("py-spy") or str(Path(common.python()).with_name("py-spy"))
    if not Path(spy).exists():
        return {"error": "py-spy not installed (pip install -r bench/requirements.txt)"}
    requests = int(seconds * 400)  # more than the app answers in that time
    scripts = workload(requests, seed=99, contact_base=contact_base)  # signed before sampling
    command = [spy, "record", "--subprocesses", "--nonblocking", "--format", "raw"]
    command += ["--rate", "200", "--duration", str(int(seconds)), "--output", str(out)]
    command += ["--pid", str(server.proc.pid)]
    spy_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach
    send_all(server.sms_url, scripts, args.concurrency, requests, seconds - 2, client=args.client)
    try:
        _, err = spy_proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy_proc.terminate()
        _, err = spy_proc.communicate(timeout=10)
    if not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    return summarize_profile(out)


# Where the workers' time goes: (label, a frame's "function (file"), inclusive shares of
# the samples py-spy took while a worker was not idle (CPU, and waits it counts as busy,
# such as SQLite's fsync at COMMIT and BEGIN IMMEDIATE waiting for the write lock).
PROFILE_FRAMES = (
    ("gunicorn: one request, all of it", ".handle_request (gunicorn/workers/"),
    ("gunicorn: closing the connection", "close_graceful (gunicorn/util.py"),
    ("werkzeug: parsing the form", "_load_form_data (werkzeug/"),
    ("webhook: Twilio signature check", "RequestValidator.validate (twilio/request_validator.py"),
    ("webhook: relay.handle_inbound (the work)", "handle_inbound (bot/relay.py"),
    ("  BEGIN (SQLite: the writer lock, then BEGIN IMMEDIATE)", "_begin (bot/__init__.py"),
    ("    waiting for the writer lock (WriterQueue)", "WriterQueue.acquire (bot/__init__.py"),
    ("  the line's employee and the settings (_line)", "_line (bot/relay.py"),
    ("  lock the conversation (_lock)", "_lock (bot/relay.py"),
    ("  consent.decide", "decide (bot/consent.py"),
    ("  evidence.entry (hash chain)", "entry (bot/evidence.py"),
    ("  held texts (_held)", "_held (bot/relay.py"),
    ("  TwiML render", "render (bot/twiml.py"),
    ("  phones.leading_address", "leading_address (bot/phones.py"),
    ("  write the turn: INSERTs and UPDATEs (_save)", "_save (bot/relay.py"),
    ("  commit", "Session.commit (sqlalchemy/orm/session.py"),
    ("    COMMIT itself", "DefaultDialect.do_commit (sqlalchemy/engine/default.py"),
    ("DB driver: execute (all statements)", "DefaultDialect.do_execute (sqlalchemy/engine/"),
    ("SQLAlchemy: statement cache keys", "HasCacheKey._generate_cache_key (sqlalchemy/sql/"),
)


def summarize_profile(path: Path) -> dict:
    total = 0
    hits: Counter = Counter()
    leaves: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, needle in PROFILE_FRAMES:
            if needle in stack:
                hits[label] += n
        leaves[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])] += n
    if not total:
        return {"samples": 0, "file": str(path)}
    return {
        "samples": total,
        "file": str(path.resolve().relative_to(common.ROOT)),
        "inclusive_pct": {
            label: round(hits[label] / total * 100, 1) for label, _ in PROFILE_FRAMES
        },
        "top_self_pct": {f: round(n / total * 100, 1) for f, n in leaves.most_common(10)},
    }


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_round_arguments(parser, "app rounds per backend")
    parser.add_argument("--warmup", type=int, default=300, help="webhooks per server, untimed")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench.floor (the bare endpoint plus one durable write) per backend",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="afterwards, sample each app's workers with py-spy for SECONDS",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help='extra gunicorn arguments for every server, e.g. "--worker-class sync --threads 1"',
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, under a minute")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.requests, args.warmup = 1, 150, 40
        args.concurrency, args.time_cap = 4, 15.0
        args.profile = 0
    server_args = tuple(shlex.split(args.server_args))
    out = args.out or common.RESULTS / ("smoke.json" if args.smoke else "latest.json")
    started = time.monotonic()
    report = {
        "command": common.command_line(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "config": {
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "concurrency": args.concurrency,
            "time_cap_s": args.time_cap,
            "warmup_requests": args.warmup,
            "workers": args.workers,
            "server_command": "gunicorn MODULE --bind 127.0.0.1:PORT "
            + " ".join(server_args)
            + f" (cwd {common.ROOT}, WEB_CONCURRENCY={args.workers})",
            "keep_alive": "off: a new connection per webhook",
            "client": args.client,
            "smoke": args.smoke,
        },
        "app_version": common.git_state(),
        "gunicorn": {
            module: common.gunicorn_config(
                module, common.app_env("sqlite:///:memory:", args.workers), server_args
            )
            for module in ("bench.bare:app", "wsgi:app")
        },
    }
    print(f"machine: {report['machine']['nproc']} cpus, python {report['machine']['python']}")
    print(f"app at {report['app_version']}")
    print(f"gunicorn settings (both servers): {report['gunicorn']['wsgi:app']}")
    report["generator_ceiling"] = ceiling(
        300 if args.smoke else 3000, args.concurrency, client=args.client
    )
    print(f"generator against a trivial server: {report['generator_ceiling']}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_"))
    backends = {"app-sqlite": f"sqlite:///{tmp / 'consentline.sqlite3'}"}
    if not args.no_postgres:
        backends["app-postgres"] = common.create_pg_db(PG_NAME)
    # The floors: bench.floor on a database of their own, beside each app.
    floors = {}
    if args.floor:
        floors["floor-sqlite"] = f"sqlite:///{tmp / 'floor.sqlite3'}"
        if not args.no_postgres:
            floors["floor-postgres"] = common.create_pg_db(PG_FLOOR_NAME)
    logs = common.RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    try:
        with ThreadPoolExecutor(len(backends)) as pool:
            prep = dict(zip(backends, pool.map(prepare, backends.values()), strict=True))
        print("migrated and seeded:", {k: f"{v:.1f}s" for k, v in prep.items()})
        for url in floors.values():
            floor.create_table(url)
        with contextlib.ExitStack() as stack:
            bare_env = common.app_env("sqlite:///:memory:", args.workers)
            servers = {
                "bare": stack.enter_context(
                    common.gunicorn(
                        "bare",
                        "bench.bare:app",
                        bare_env,
                        logs / "bare.log",
                        args.workers,
                        server_args,
                    )
                )
            }
            modules = {
                **dict.fromkeys(backends, "wsgi:app"),
                **dict.fromkeys(floors, "bench.floor:app"),
            }
            for name, url in {**backends, **floors}.items():
                servers[name] = stack.enter_context(
                    common.gunicorn(
                        name,
                        modules[name],
                        common.app_env(url, args.workers),
                        logs / f"{name}.log",
                        args.workers,
                        server_args,
                    )
                )
            for name, server in servers.items():
                base = 5_000_000 + 100_000 * list(servers).index(name)
                run, _, _ = one_round(
                    server, args.warmup, args.concurrency, 30, 7, base, client=args.client
                )
                print(
                    f"warmed up {name}: {len(run.latencies)} requests, "
                    f"{sum(s != 200 for s in run.statuses)} non-200"
                )
            schedule = []
            for _ in range(args.rounds):
                for name in [*backends, *floors]:
                    schedule += ["bare", name]
            pg_names = {"app-postgres": PG_NAME} if not args.no_postgres else {}
            if "floor-postgres" in floors:
                pg_names["floor-postgres"] = PG_FLOOR_NAME
            runs, rounds = run_rounds(servers, schedule, args, pg_names, floors)
            report["schedule"] = schedule
            report["rounds"] = rounds
            report["totals"] = {name: pooled(r) for name, r in runs.items()}
            if args.profile:
                report["profile"] = {}
                for name in backends:
                    path = common.RESULTS / f"pyspy-{name}.txt"
                    report["profile"][name] = profile(
                        servers[name], args.profile, path, args, 9_000_000
                    )
        bare = report["totals"]["bare"]
        report["ratios"] = {}
        for name in [*backends, *floors]:
            app = report["totals"][name]
            per_round = [
                ratio(rounds[i]["throughput_rps"], rounds[i - 1]["throughput_rps"])
                for i, target in enumerate(schedule)
                if target == name
            ]
            report["ratios"][name] = {
                "throughput_app_over_bare": ratio(app["throughput_rps"], bare["throughput_rps"]),
                "p50_app_over_bare": ratio(app["p50_ms"], bare["p50_ms"]),
                "p99_app_over_bare": ratio(app["p99_ms"], bare["p99_ms"]),
                "throughput_per_round_vs_preceding_bare": per_round,
                "throughput_median_round_ratio": statistics.median(per_round),
                "goal_throughput_at_least": GOAL,
                "meets_goal": (ratio(app["throughput_rps"], bare["throughput_rps"]) or 0) >= GOAL,
            }
        # The app against the floor of its own database: what the relay's own work
        # costs, with the machine's share (HTTP, the durable commit) taken out.
        pairs = {name: name.replace("app-", "floor-") for name in backends}
        report["over_floor"] = {
            f"{name}/{own}": ratio(
                report["totals"][name]["throughput_rps"], report["totals"][own]["throughput_rps"]
            )
            for name, own in pairs.items()
            if own in floors
        }
        report["audit_verify"] = {name: verify(url) for name, url in backends.items()}
    finally:
        if not args.no_postgres:
            with contextlib.suppress(Exception):
                common.drop_pg_db(PG_NAME)
        if "floor-postgres" in floors:
            with contextlib.suppress(Exception):
                common.drop_pg_db(PG_FLOOR_NAME)
        shutil.rmtree(tmp, ignore_errors=True)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"wrote {out.relative_to(common.ROOT) if out.is_relative_to(common.ROOT) else out}"
        f" in {report['elapsed_s']} s"
    )
    found = problems(report)
    for problem in found:
        print("PROBLEM:", problem)
    if found:
        raise SystemExit(1)


def problems(report: dict) -> list[str]:
    """What makes the run's figures meaningless: every webhook of the mix is genuine,
    so each must be answered 200, each floor must keep each new text once, and every
    chain must verify."""
    found = [
        f"round {r['index'] + 1} ({r['target']}): {r['non_200']} answers were not 200"
        for r in report["rounds"]
        if r["non_200"]
    ]
    found += [
        f"round {r['index'] + 1} ({r['target']}): kept {r['texts_kept']} texts,"
        f" answered {r['new_texts_answered']} new ones"
        for r in report["rounds"]
        if "texts_kept" in r and r["texts_kept"] != r["new_texts_answered"]
    ]
    found += [
        f"audit verify {name}: {v['output']}"
        for name, v in report.get("audit_verify", {}).items()
        if not v["ok"]
    ]
    return found


def print_table(report: dict) -> None:
    rows = report["rounds"]
    print()
    header = f"{'target':<13} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8}"
    header += f" {'p99 ms':>8} {'non-200':>7} {'srv CPU µs/req':>14} {'gen CPU µs/req':>14}"
    print(header)
    print("-" * len(header))
    for name, total in report["totals"].items():
        srv = per_request(rows, name, "server_cpu_us_per_request")
        gen = per_request(rows, name, "generator_cpu_us_per_request")
        print(
            f"{name:<13} {total['requests']:>8} {total['throughput_rps']:>8.1f} "
            f"{total['p50_ms']:>8.2f} {total['p90_ms']:>8.2f} {total['p99_ms']:>8.2f} "
            f"{total['non_200']:>7} {srv:>14.0f} {gen:>14.0f}"
        )
    print()
    for name, r in report["ratios"].items():
        print(
            f"{name}/bare: throughput {r['throughput_app_over_bare']} "
            f"(per round {r['throughput_per_round_vs_preceding_bare']}), "
            f"p50 x{r['p50_app_over_bare']}, p99 x{r['p99_app_over_bare']}; "
            f"goal >= {GOAL}: {'met' if r['meets_goal'] else 'NOT met'}"
        )
    for name, r in report.get("over_floor", {}).items():
        print(f"{name}: throughput {r} of what one durable write alone serves")
    for name, v in report.get("audit_verify", {}).items():
        print(f"audit verify {name}: {'OK' if v['ok'] else 'FAILED'} ({v['output'][-80:]})")
    for name, prof in report.get("profile", {}).items():
        print(f"\nwhere {name}'s workers spend their time (py-spy, inclusive % of samples):")
        for label, pct in prof.get("inclusive_pct", {}).items():
            print(f"  {pct:5.1f}%  {label}")
        print("  top frames by own samples:")
        for frame, pct in prof.get("top_self_pct", {}).items():
            print(f"  {pct:5.1f}%  {frame}")
        if "error" in prof:
            print("  ", prof["error"])


if __name__ == "__main__":
    main()
