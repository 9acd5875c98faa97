"""Where a gunicorn worker's time goes under the load: on a CPU, waiting for one, or asleep.

    .venv/bin/python -m bench.sched                  # 3 rounds of 3,000 each, bare and app (SQLite)
    .venv/bin/python -m bench.sched --rounds 1 --requests 100   # as bench-smoke runs it

The throughput of a sync worker is one webhook per (CPU + waiting for a CPU +
asleep) of its own. The kernel keeps the first two per task in
``/proc/PID/schedstat`` (nanoseconds on a CPU, nanoseconds runnable but waiting
for one) and the voluntary and involuntary context switches in
``/proc/PID/status``; ``/proc/PID/stat`` splits the CPU into user and system
time. Read for the workers before and after a round, and for the load
generator (this process) likewise, divided by the webhooks of the round: what
is left of a worker's wall time is sleep (the next connection not there yet,
the client's FIN, the writer lock, ``fdatasync``). Rounds alternate bare and
app as in ``bench.run``; loopback only, bounded counts and time.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench import common
from bench.load import send_all, summarize, workload
from bench.run import one_round as plain_round
from bench.run import prepare

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
FIELDS = ("cpu_ns", "runqueue_ns", "voluntary", "involuntary", "user_ns", "system_ns")


def task_times(pids: list[int]) -> dict[str, int]:
    """The FIELDS of these processes together (those that ended meanwhile left out)."""
    total = dict.fromkeys(FIELDS, 0)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                cpu, waiting, _slices = map(int, f.read().split())
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        total["cpu_ns"] += cpu
        total["runqueue_ns"] += waiting
        total["voluntary"] += int(status["voluntary_ctxt_switches"])
        total["involuntary"] += int(status["nonvoluntary_ctxt_switches"])
        total["user_ns"] += int(stat[11]) * TICK_NS  # utime, stime: fields 14 and 15
        total["system_ns"] += int(stat[12]) * TICK_NS
    return total


def one_round(server: common.Server, requests: int, seed: int, contact_base: int, args) -> dict:
    scripts = workload(requests, seed=seed, contact_base=contact_base)  # signed before timing
    workers, me = server.workers(), [os.getpid()]
    before, gen_before = task_times(workers), task_times(me)
    run = send_all(
        server.sms_url, scripts, args.concurrency, requests, args.time_cap, client=args.client
    )
    after, gen_after = task_times(workers), task_times(me)
    summary = summarize(run)
    n = max(1, summary["requests"])
    worker = {k: (after[k] - before[k]) / n for k in FIELDS}
    generator = {k: (gen_after[k] - gen_before[k]) / n for k in FIELDS}
    wall_ns = summary["seconds"] * 1e9 * len(workers) / n  # each worker's wall time a webhook
    asleep = wall_ns - worker["cpu_ns"] - worker["runqueue_ns"]
    return {
        "target": server.name,
        "throughput_rps": summary["throughput_rps"],
        "non_200": summary["non_200"],
        "worker_us_per_webhook": {
            "wall": round(wall_ns / 1e3),
            "cpu": round(worker["cpu_ns"] / 1e3),
            "user": round(worker["user_ns"] / 1e3),
            "system": round(worker["system_ns"] / 1e3),
            "waiting_for_a_cpu": round(worker["runqueue_ns"] / 1e3),
            "asleep": round(asleep / 1e3),
        },
        "worker_switches_per_webhook": {
            "voluntary": round(worker["voluntary"], 2),
            "involuntary": round(worker["involuntary"], 2),
        },
        "generator_us_per_webhook": {
            "cpu": round(generator["cpu_ns"] / 1e3),
            "waiting_for_a_cpu": round(generator["runqueue_ns"] / 1e3),
        },
        # How much of the round the generator's one thread was running or runnable.
        "generator_busy_share": round(
            (generator["cpu_ns"] + generator["runqueue_ns"]) * n / (summary["seconds"] * 1e9), 3
        ),
    }


def line(r: dict) -> str:
    w, g = r["worker_us_per_webhook"], r["generator_us_per_webhook"]
    return (
        f"{r['target']:<10} {r['throughput_rps']:7.1f}/s  worker a webhook:"
        f" wall {w['wall']:5d} µs = CPU {w['cpu']:5d} (user {w['user']}, system {w['system']})"
        f" + waiting for a CPU {w['waiting_for_a_cpu']:4d} + asleep {w['asleep']:5d}; switches"
        f" {r['worker_switches_per_webhook']['voluntary']:.1f} | generator CPU {g['cpu']} +"
        f" waiting {g['waiting_for_a_cpu']} µs, busy {r['generator_busy_share']:.0%}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_round_arguments(parser)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "sched.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench_sched_") as tmp:
        url = f"sqlite:///{tmp}/app.sqlite3"
        prepare(url)
        bare_env = common.app_env("sqlite:///:memory:", args.workers)
        logs = Path(tmp)
        with (
            common.gunicorn(
                "bare", "bench.bare:app", bare_env, logs / "bare.log", args.workers
            ) as bare,
            common.gunicorn(
                "app-sqlite",
                "wsgi:app",
                common.app_env(url, args.workers),
                logs / "app.log",
                args.workers,
            ) as app,
        ):
            for n, server in enumerate((bare, app)):  # warm-up, untimed
                warm = min(300, args.requests)
                base = 900_000 + 10_000 * n
                plain_round(
                    server, warm, args.concurrency, args.time_cap, 1, base, client=args.client
                )
            for i in range(args.rounds):
                for server in (bare, app):
                    r = one_round(server, args.requests, 10 + i, 100_000 * (i + 1), args)
                    rounds.append(r)
                    print(line(r), flush=True)
    report = {
        "command": common.command_line(),
        "machine": common.machine_info(),
        "git": common.git_state(),
        "client": args.client,
        "rounds": rounds,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
