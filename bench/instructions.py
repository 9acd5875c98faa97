"""Instructions per webhook, counted by valgrind's callgrind: the same figure on any run.

Timings on these shared two-vCPU machines move by 10–30 % from one hour to the
next, so a change worth 2–5 % of a webhook cannot be seen in them; a count of
the instructions executed barely moves. Each target (the app on SQLite, the
bare endpoint, and with ``--target postgres`` the app on Postgres: the app's
process only, not the server's) runs twice under ``valgrind --tool=callgrind``, each time in a
fresh process on a copy of one migrated and seeded database (on Postgres, a
database made from it as a template): once handing
WARMUP + SHORT webhooks of the load's mix straight to the WSGI app (as
``bench.inproc`` does), once WARMUP + LONG. The difference of the two counts,
divided by LONG − SHORT, is the instructions of one webhook: the interpreter's
start, the imports, the signing of the requests and the warm-up cancel out.

A count is not a time (a cache miss costs more than an addition, and the
``fdatasync`` of a COMMIT is the kernel's, not counted), but for a change to the
Python a webhook runs it moves with its CPU time. Several checkouts are counted
in one run, on the same workload, with ``--root``:

    python -m bench.instructions                          # this checkout
    python -m bench.instructions --target postgres        # the app on Postgres (its side only)
    python -m bench.instructions --root /tmp/a --root .   # two checkouts, side by side
    python -m bench.instructions --target sqlite --target bare --by-function 25
                                                          # + by library, and the top functions

Bounded: fixed counts of webhooks, and a time limit per process.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP, SHORT, LONG = 200, 100, 400
PG_PREFIX = f"bench_instr_{os.getpid()}_"
QUICK = (20, 10, 30)  # --quick, as bench-smoke runs it: shows it works, nothing more
TARGETS = ("sqlite", "bare", "postgres")
DEFAULT_TARGETS = ("sqlite", "bare")


def _child(target: str, count: int, database: str, warmup: int, longest: int) -> None:
    """Inside valgrind: warmup + count webhooks, from a workload of a fixed size."""
    from bench.common import app_env
    from bench.inproc import _bare, _call, _environ
    from bench.load import workload

    if target == "bare":
        app = _bare()
    else:
        from bot import create_app

        url = database if target == "postgres" else f"sqlite:///{database}"
        app = create_app(env=app_env(url))
    total = warmup + longest
    scripts = workload(total, seed=11, contact_base=200_000)
    order, live = [], [list(s) for s in scripts]
    while live and len(order) < total:  # contacts interleaved, as bench.inproc does
        for steps in live[:8]:
            order.append(steps.pop(0))
        live = [s for s in live if s]
    environs = [_environ(s) for s in order[:total]]
    bad = sum(_call(app, environ) != 200 for environ in environs[: warmup + count])
    if bad:
        raise SystemExit(f"{bad} webhooks were not answered 200")


def _count(root: Path, target: str, count: int, database: Path, out: Path, args) -> int:
    """Run one child under callgrind; the instructions it executed in all."""
    warmup, _, longest = args.counts
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        # This file, importing ``bot`` and ``bench`` from the checkout measured.
        str(Path(__file__).resolve()),
        "--child",
        target,
        str(count),
        str(database),
        str(warmup),
        str(longest),
    ]
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="0")
    done = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=args.limit
    )
    if done.returncode != 0:
        raise RuntimeError(f"{target} in {root} failed:\n{done.stderr[-3000:]}")
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if not found:
        raise RuntimeError(f"no instruction count in {out}")
    return int(found.group(1))


def _self_costs(out: Path) -> dict[str, int]:
    """Each function's own instructions in a callgrind file, by ``callgrind_annotate``,
    named ``library: source:function`` (the build's paths cut short)."""
    done = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    # annotate names a function's library on the function's own line only, not on
    # the lines of code inlined into it from other files (a header's, say): those
    # take the library of the function of the same name, where one was named.
    lines = []
    for line in done.stdout.splitlines():
        found = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?:\s+\[([^\]]+)\])?\s*$", line)
        if found and "PROGRAM TOTALS" not in line:
            count, function, library = found.groups()
            function = re.sub(r"'\d+$", "", re.sub(r"^.*/Python-[\d.]+/", "", function))
            lines.append((int(count.replace(",", "")), function, library))
    named = {f.rsplit(":", 1)[-1]: lib for _, f, lib in lines if lib is not None}
    costs: dict[str, int] = {}
    for count, function, library in lines:
        library = library or named.get(function.rsplit(":", 1)[-1], "?")
        library = Path(library).name.split(".so")[0].split(".cpython")[0]
        if library.startswith("libpython"):
            library = "libpython"  # the interpreter: the Python code it runs, any module's
        name = f"{library}: {function}"
        costs[name] = costs.get(name, 0) + count
    return costs


def _per_webhook(short: dict[str, int], longest: dict[str, int], webhooks: int) -> dict[str, float]:
    return {k: (longest.get(k, 0) - short.get(k, 0)) / webhooks for k in {*short, *longest}}


def _split(per: dict[str, float], top: int) -> dict:
    """A webhook's instructions by library, and its ``top`` functions by their own."""
    libraries: dict[str, float] = {}
    for name, count in per.items():
        library = name.split(": ", 1)[0]
        libraries[library] = libraries.get(library, 0) + count
    functions = sorted(per.items(), key=lambda item: -item[1])[:top]
    return {
        "by_library": {
            k: round(v) for k, v in sorted(libraries.items(), key=lambda i: -i[1]) if round(v)
        },
        "top_functions": {k: round(v) for k, v in functions},
    }


def _commit(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", action="append", type=Path, help="a checkout (repeatable)")
    parser.add_argument("--target", action="append", choices=TARGETS)
    parser.add_argument("--limit", type=float, default=900.0, help="seconds per process, at most")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny counts (bench-smoke)")
    parser.add_argument(
        "--by-function",
        type=int,
        default=0,
        metavar="N",
        help="also split a webhook's instructions by library and list its top N functions",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        target, count, database, warmup, longest = args.child
        _child(target, int(count), database, int(warmup), int(longest))
        return
    args.counts = QUICK if args.quick else (WARMUP, SHORT, LONG)
    warmup, short, longest = args.counts
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    from bench.common import create_pg_db, drop_pg_db, migrate, pg_admin, pg_url, seed_employees

    roots = [root.resolve() for root in args.root or [Path(".")]]
    targets = args.target or list(DEFAULT_TARGETS)
    tmp = Path(tempfile.mkdtemp(prefix="bench_instr_"))
    report = {"command": " ".join(["python -m bench.instructions", *(argv or sys.argv[1:])])}
    report["counts"] = {"warmup": warmup, "short": short, "long": longest}
    report["results"] = []
    try:
        for n, root in enumerate(roots):
            seeded = tmp / f"seeded-{n}.sqlite3"
            migrate(f"sqlite:///{seeded}", cwd=root)
            seed_employees(f"sqlite:///{seeded}", cwd=root)
            if "postgres" in targets:  # a seeded database, copied as a template
                pg_seeded = create_pg_db(f"{PG_PREFIX}seed")
                migrate(pg_seeded, cwd=root)
                seed_employees(pg_seeded, cwd=root)
            for target in targets:
                started, counts = time.monotonic(), {}
                for count in (short, longest):
                    if target == "postgres":
                        name = f"{PG_PREFIX}run"
                        drop_pg_db(name)
                        pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{PG_PREFIX}seed"')
                        database = pg_url(name)
                    else:
                        database = tmp / f"run-{n}-{target}-{count}.sqlite3"
                        shutil.copy(seeded, database)
                    out = tmp / f"callgrind-{n}-{target}-{count}.out"
                    counts[count] = _count(root, target, count, database, out, args)
                per = (counts[longest] - counts[short]) / (longest - short)
                row = {
                    "root": str(root),
                    "commit": _commit(root),
                    "target": target,
                    "instructions_per_webhook": round(per),
                    "seconds": round(time.monotonic() - started, 1),
                }
                report["results"].append(row)
                print(f"{row['commit']:>14} {target:7s} {per / 1e6:8.3f} M instructions a webhook")
                if args.by_function:
                    outs = [tmp / f"callgrind-{n}-{target}-{c}.out" for c in (short, longest)]
                    costs = _per_webhook(*map(_self_costs, outs), longest - short)
                    row.update(_split(costs, args.by_function))
                    for library, count in list(row["by_library"].items())[:6]:
                        print(f"{'':>14} {'':7s} {count / 1e3:8.1f} k in {library}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if "postgres" in targets:
            drop_pg_db(f"{PG_PREFIX}run")
            drop_pg_db(f"{PG_PREFIX}seed")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
