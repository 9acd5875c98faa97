"""What compiling the relay's own modules with mypyc buys: instructions per webhook.

The design change most often named for the throughput target was "compile the
relay's hot path". This measures it instead of guessing: HEAD is checked out
twice in temporary ``git worktree``s, the relay's modules (``MODULES``) are
compiled in one of them with mypyc into C extensions that Python imports in
place of the ``.py`` files, and ``bench.instructions`` counts the instructions of
a webhook in both, side by side on the same workload (callgrind: the same figure
on every run, where timings here move by 10–30 %). Instructions, not seconds:
a CPU-time difference of a few per cent cannot be seen on these machines.

The code base does not pass ``mypy`` (it has never been part of the lint), so
the trial turns off the error codes it would otherwise stop at (``IGNORED``): the
compiled code is the same code, with mypyc's run-time checks of the annotations
it has. A webhook that fails under them fails the count (every webhook must be
answered 200), so a result is only printed for code that ran the whole mix.

    .venv/bin/python -m bench.compiled                      # SQLite and Postgres (~6 min)
    .venv/bin/python -m bench.compiled --target sqlite      # SQLite only (~3 min)
    .venv/bin/python -m bench.compiled --quick --target sqlite   # as make bench-smoke runs it

Needs mypy (``bench/requirements.txt``), a C compiler and Python's headers.
Writes ``bench/results/compiled.json``. Both sides are HEAD: uncommitted changes
are in neither.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common, instructions

# The relay's own modules: the webhook's path from the form to the TwiML.
MODULES = (
    "bot/relay.py",
    "bot/statements.py",
    "bot/evidence.py",
    "bot/consent.py",
    "bot/keywords.py",
    "bot/texts.py",
    "bot/twiml.py",
)
# What mypy finds in them today, none of which stops the code from running.
IGNORED = (
    "union-attr",
    "attr-defined",
    "arg-type",
    "index",
    "assignment",
    "misc",
    "type-var",
    "operator",
    "var-annotated",
    "list-item",
    "return-value",
)


def compile_in(worktree: Path) -> None:
    """mypyc over ``MODULES`` in ``worktree``; the extensions land beside the sources."""
    # setuptools, which mypyc builds with, would read pyproject.toml's [project] and
    # look for packages in the flat layout; the worktree is thrown away after.
    (worktree / "pyproject.toml").rename(worktree / "pyproject.toml.aside")
    command = [str(Path(sys.executable).with_name("mypyc"))]
    command += ["--ignore-missing-imports", "--follow-imports=silent"]
    for code in IGNORED:
        command += ["--disable-error-code", code]
    done = subprocess.run(
        [*command, *MODULES], cwd=worktree, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"mypyc failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    built = {p.name.split(".")[0] for p in (worktree / "bot").glob("*.so")}
    wanted = {Path(module).stem for module in MODULES}
    if built != wanted:
        raise SystemExit(f"mypyc built {sorted(built)}, not {sorted(wanted)}")
    # And Python imports them instead of the sources.
    check = "import bot.relay; print(bot.relay.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=worktree,
        env={**os.environ, "PYTHONPATH": str(worktree)},
        capture_output=True,
        text=True,
        check=True,
    )
    if not done.stdout.strip().endswith(".so"):
        raise SystemExit(f"bot.relay imports from {done.stdout.strip()}, not the extension")
    print("compiled:", ", ".join(sorted(built)), flush=True)


def _worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(common.ROOT), "worktree", "add", "--detach", str(path), "HEAD"],
        check=True,
        capture_output=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=("sqlite", "postgres"))
    parser.add_argument("--out", type=Path, default=common.RESULTS / "compiled.json")
    parser.add_argument("--quick", action="store_true", help="tiny counts (bench-smoke)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_compiled_") as tmp:
        interpreted, compiled = Path(tmp) / "interpreted", Path(tmp) / "compiled"
        try:
            _worktree(interpreted)
            _worktree(compiled)
            compile_in(compiled)
            counting = ["--root", str(interpreted), "--root", str(compiled)]
            counting += ["--out", str(args.out)]
            for target in args.target or ("sqlite", "postgres"):
                counting += ["--target", target]
            if args.quick:
                counting.append("--quick")
            instructions.main(counting)
        finally:
            for path in (interpreted, compiled):
                subprocess.run(
                    ["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(path)],
                    check=False,
                    capture_output=True,
                )
            subprocess.run(["git", "-C", str(common.ROOT), "worktree", "prune"], check=False)
    summarize(args.out)


def summarize(path: Path) -> None:
    """Mark the compiled checkout's rows in ``path`` and add compiled / interpreted."""
    report = json.loads(path.read_text())
    interpreted, compiled = {}, {}
    for row in report["results"]:
        row["compiled"] = Path(row["root"]).name == "compiled"
        (compiled if row["compiled"] else interpreted)[row["target"]] = row
    report["compiled_over_interpreted"] = {
        target: round(
            compiled[target]["instructions_per_webhook"]
            / interpreted[target]["instructions_per_webhook"],
            3,
        )
        for target in interpreted
        if target in compiled
    }
    report["modules"] = list(MODULES)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for target, ratio in report["compiled_over_interpreted"].items():
        print(f"{target}: compiled / interpreted x{ratio} instructions a webhook")


if __name__ == "__main__":
    main()
