"""Throughput and bursts: the app against the bare endpoint and the floor, side by side.

    python -m bench.run                   # both databases: rounds, then a burst (~8 min)
    python -m bench.run --backend sqlite  # one database
    python -m bench.run --part burst      # one part: throughput or burst
    python -m bench.run --compare 51ff420 # also the app of another commit, in the same rounds
    python -m bench.run --smoke           # < 1 min: tiny rounds; exit 1 on any non-200

Throughput: every server runs at once under gunicorn as the Procfile runs it
(``WEB_CONCURRENCY`` sync workers); rounds go to each in turn (the order rotates),
each round the realistic mix (``bench.load``) of new contacts, closed loop.
Figures are medians over rounds, and ratios of servers measured in the same run.
Burst: the mix at a fixed rate (open loop) against the app alone.
Writes bench/results/run.json (run-smoke.json with --smoke).
"""

import argparse
import contextlib
import statistics
import sys

from bench import common, load, servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--part", choices=("throughput", "burst", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000, help="webhooks per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="burst: webhooks a second")
    parser.add_argument("--seconds", type=float, default=60.0, help="burst: how long")
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY of every server")
    parser.add_argument("--compare", metavar="REF", help="also serve the app of this commit")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.requests, args.rate, args.seconds = 1, 120, 40.0, 3.0
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {"machine": common.machine(), "settings": vars(args)}
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(common.checkout(args.compare)) if args.compare else None
        names = ["app", "floor"] + (["ref"] if ref else [])
        urls = stack.enter_context(common.databases(backends, names))
        bases = {"bare": stack.enter_context(common.gunicorn("bench.servers:bare", env()))}
        for backend in backends:
            common.prepare(urls[backend, "app"])
            bases[f"app {backend}"] = serve("wsgi:app", urls[backend, "app"], args, stack)
            servers.create_table(urls[backend, "floor"])
            floor = serve("bench.servers:floor", urls[backend, "floor"], args, stack)
            bases[f"floor {backend}"] = floor
            if ref:
                common.prepare(urls[backend, "ref"], cwd=ref)
                bases[f"{args.compare} {backend}"] = serve(
                    "wsgi:app", urls[backend, "ref"], args, stack, ref
                )
        if args.part in ("throughput", "both"):
            results["throughput"] = throughput(bases, args)
            results["ratios"] = ratios(results["throughput"], backends, args.compare)
        if args.part in ("burst", "both"):
            results["burst"] = {b: burst(bases[f"app {b}"], args) for b in backends}
    path = common.write_results("run-smoke.json" if args.smoke else "run.json", results)
    report(results, path)
    failed = [
        name
        for part in ("throughput", "burst")
        for name, figures in results.get(part, {}).items()
        if figures["not_200"]
    ]
    if failed:
        print(f"FAILED: answers other than 200 from {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def env(url: str = "", args=None) -> dict[str, str]:
    return common.app_env(url, args.workers if args else 2)


def serve(module, url, args, stack, cwd=common.ROOT) -> str:
    return stack.enter_context(common.gunicorn(module, env(url, args), cwd))


def throughput(bases: dict[str, str], args) -> dict:
    """Rounds of the mix to each server in turn; per server its rounds and their medians."""
    names, rounds = list(bases), {name: [] for name in bases}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            first = (r * len(names) + names.index(name)) * 1_000_000
            scripts = load.workload(args.requests, seed=r, first_contact=first)
            summary = load.closed_loop(bases[name], scripts, args.concurrency, cap=120).summary()
            rounds[name].append(summary)
            rate, p99 = summary["per_second"], summary["p99_ms"]
            print(f"round {r + 1} {name:>24}: {rate:>7}/s p99 {p99} ms", flush=True)
    return {
        name: {
            "per_second": round(statistics.median(s["per_second"] for s in done), 1),
            "p50_ms": statistics.median(s["p50_ms"] for s in done),
            "p99_ms": statistics.median(s["p99_ms"] for s in done),
            "not_200": sum(s["not_200"] for s in done),
            "rounds": done,
        }
        for name, done in rounds.items()
    }


def ratios(figures: dict, backends: list[str], compare: str | None) -> dict:
    def rate(name: str) -> float:
        return figures[name]["per_second"]

    out = {}
    for b in backends:
        out[f"app/floor {b}"] = round(rate(f"app {b}") / rate(f"floor {b}"), 3)
        out[f"app/bare {b}"] = round(rate(f"app {b}") / rate("bare"), 3)
        out[f"floor/bare {b}"] = round(rate(f"floor {b}") / rate("bare"), 3)
        if compare:
            out[f"app/{compare} {b}"] = round(rate(f"app {b}") / rate(f"{compare} {b}"), 3)
    return out


def burst(base: str, args) -> dict:
    """The mix at ``args.rate`` a second for ``args.seconds``, open loop, new contacts."""
    count = int(args.rate * args.seconds)
    scripts = load.workload(count, seed=99, first_contact=900_000_000)
    webhooks = load.interleaved(scripts, active=int(args.rate * 2))[:count]
    return load.open_loop(base, webhooks, args.rate).summary() | {"rate": args.rate}


def report(results: dict, path) -> None:
    print(f"\n{'server':>24} {'/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'not 200':>8}")
    for name, f in results.get("throughput", {}).items():
        print(
            f"{name:>24} {f['per_second']:>8} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['not_200']:>8}"
        )
    for name, value in results.get("ratios", {}).items():
        print(f"{name:>24} {value:>8}")
    for backend, f in results.get("burst", {}).items():
        print(
            f"burst {backend}: {f['requests']} at {f['rate']}/s, p50 {f['p50_ms']} ms,"
            f" p99 {f['p99_ms']} ms, max {f['max_ms']} ms, not 200: {f['not_200']}"
        )
    print(f"written to {path}")


if __name__ == "__main__":
    sys.exit(main())
