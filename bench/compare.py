"""Two commits of the app under the same load, side by side, with the bare endpoint.

    .venv/bin/python -m bench.compare 056d008              # that commit against the working tree
    .venv/bin/python -m bench.compare 056d008 HEAD --rounds 5 --no-postgres

On a shared machine the speed of a core moves from hour to hour, so figures of
two runs made at different times do not compare; this runs both versions in one
run. Each commit is checked out with ``git worktree`` into a temporary folder
(the working tree itself for ``.``, the default second one), gets its own SQLite
file and Postgres database, migrated and seeded by its own code, and its own
gunicorn (the Procfile's command, run with ``--chdir`` into its folder). Rounds go

    bare, A-sqlite, B-sqlite, bare, A-postgres, B-postgres, bare, …

each a fresh pre-signed workload of ``bench.load``; the report gives each
target's throughput and latency, server CPU per webhook, and the ratios to the
bare endpoint and B / A. Writes ``bench/results/compare.json``; worktrees and
databases are removed at the end.
"""

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common
from bench.run import one_round, per_request, pooled, ratio, run_rounds


def _commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
    )
    return done.stdout.strip()


@contextlib.contextmanager
def _checkout(ref: str, tmp: Path):
    """The project at ``ref`` (``.``: the working tree as it is)."""
    if ref == ".":
        yield common.ROOT
        return
    tree = tmp / f"tree-{ref.replace('/', '_')}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), ref],
        cwd=common.ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=common.ROOT,
            capture_output=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the commit to compare against (e.g. the last release)")
    parser.add_argument("b", nargs="?", default=".", help="the other (default: the working tree)")
    common.add_round_arguments(parser, "rounds per version and backend")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", default=str(common.RESULTS / "compare.json"))
    args = parser.parse_args(argv)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgres"])
    pg_names: dict[str, str] = {}
    logs = common.RESULTS / "logs"
    report: dict = {"machine": common.machine_info(), "command": common.command_line()}
    report["client"] = args.client
    try:
        with contextlib.ExitStack() as stack:
            trees = {"A": stack.enter_context(_checkout(args.a, tmp))}
            trees["B"] = stack.enter_context(_checkout(args.b, tmp))
            report["versions"] = {
                side: {"ref": ref, "commit": _commit(trees[side])}
                for side, ref in (("A", args.a), ("B", args.b))
            }
            urls = {}
            for side, tree in trees.items():
                for backend in backends:
                    name = f"{side}-{backend}"
                    if backend == "sqlite":
                        urls[name] = f"sqlite:///{tmp}/{side}.sqlite3"
                    else:
                        pg_names[name] = f"bench_compare_{side.lower()}_{os.getpid()}"
                        urls[name] = common.create_pg_db(pg_names[name])
                    common.migrate(urls[name], cwd=tree)  # by its own code
                    common.seed_employees(urls[name], cwd=tree)
            bare_env = common.app_env("sqlite:///:memory:", args.workers)
            servers = {
                "bare": stack.enter_context(
                    common.gunicorn(
                        "bare", "bench.bare:app", bare_env, logs / "bare.log", args.workers
                    )
                )
            }
            for name, url in urls.items():
                tree = trees[name[0]]
                servers[name] = stack.enter_context(
                    common.gunicorn(
                        name,
                        "wsgi:app",
                        common.app_env(url, args.workers),
                        logs / f"compare-{name}.log",
                        args.workers,
                        ("--chdir", str(tree)),
                    )
                )
            for i, server in enumerate(servers.values()):  # warm-up, untimed
                base = 5_000_000 + 100_000 * i
                one_round(server, 300, args.concurrency, 30, 7, base, client=args.client)
            schedule = []
            for _ in range(args.rounds):
                for backend in backends:
                    schedule += ["bare", f"A-{backend}", f"B-{backend}"]
            runs, rounds = run_rounds(servers, schedule, args, pg_names)
        totals = {name: pooled(r) for name, r in runs.items()}
        for name, total in totals.items():
            for key in ("server_cpu_us_per_request", "postgres_cpu_us_per_request"):
                total[key] = round(per_request(rounds, name, key))
        bare = totals["bare"]
        ratios = {}
        for backend in backends:
            a, b = totals[f"A-{backend}"], totals[f"B-{backend}"]
            ratios[backend] = {
                "A_throughput_over_bare": ratio(a["throughput_rps"], bare["throughput_rps"]),
                "B_throughput_over_bare": ratio(b["throughput_rps"], bare["throughput_rps"]),
                "A_p99_over_bare": ratio(a["p99_ms"], bare["p99_ms"]),
                "B_p99_over_bare": ratio(b["p99_ms"], bare["p99_ms"]),
                "B_throughput_over_A": ratio(b["throughput_rps"], a["throughput_rps"]),
            }
        report.update(schedule=schedule, rounds=rounds, totals=totals, ratios=ratios)
        report["seconds"] = round(time.monotonic() - started, 1)
        print()
        print(f"{'target':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'srv CPU µs':>11}")
        for name, t in totals.items():
            print(
                f"{name:<11} {t['throughput_rps']:8.1f} {t['p50_ms']:8.2f} {t['p99_ms']:8.2f}"
                f" {t['server_cpu_us_per_request']:11d}"
            )
        for backend, r in ratios.items():
            print(
                f"{backend}: throughput / bare A {r['A_throughput_over_bare']} → "
                f"B {r['B_throughput_over_bare']}; p99 / bare A {r['A_p99_over_bare']} → "
                f"B {r['B_p99_over_bare']}; B / A {r['B_throughput_over_A']}"
            )
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out} in {report['seconds']} s")
    finally:
        for name in pg_names.values():
            common.drop_pg_db(name)


if __name__ == "__main__":
    main()
