"""What compiling the relay's own modules with mypyc buys: instructions per webhook.

The design change most often named for the throughput target was "compile the
relay's hot path". This measures it instead of guessing: HEAD is checked out in
a temporary ``git worktree``, the relay's modules (``MODULES``) are compiled there
with mypyc into C extensions that Python imports in place of the ``.py`` files,
and ``bench.instructions`` counts the instructions of a webhook in this checkout
and in the compiled one, side by side on the same workload (callgrind: the same
figure on every run, where timings here move by 10–30 %).

The code base does not pass ``mypy`` (it has never been part of the lint), so
the trial turns off the error codes it would otherwise stop at (``IGNORED``): the
compiled code is the same code, with mypyc's run-time checks of the annotations
it has. A webhook that fails under them fails the count (every webhook must be
answered 200), so a result is only printed for code that ran the whole mix.

    .venv/bin/python -m bench.compiled                      # SQLite and Postgres (~6 min)
    .venv/bin/python -m bench.compiled --target sqlite      # SQLite only (~3 min)
    .venv/bin/python -m bench.compiled --quick --target sqlite   # as make bench-smoke runs it

Needs mypy (``bench/requirements.txt``), a C compiler and Python's headers.
Writes ``bench/results/compiled.json``. Uncommitted changes are not in the trial.
"""

import argparse
import json
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
    built = sorted(p.name for p in (worktree / "bot").glob("*.so"))
    if len(built) != len(MODULES):
        raise SystemExit(f"mypyc built {built}, not one extension per module")
    print("compiled:", ", ".join(built), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=("sqlite", "postgres"))
    parser.add_argument("--out", type=Path, default=common.RESULTS / "compiled.json")
    parser.add_argument("--quick", action="store_true", help="tiny counts (bench-smoke)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_compiled_") as tmp:
        worktree = Path(tmp) / "compiled"
        subprocess.run(
            ["git", "-C", str(common.ROOT), "worktree", "add", "--detach", str(worktree), "HEAD"],
            check=True,
            capture_output=True,
        )
        try:
            compile_in(worktree)
            counting = ["--root", str(common.ROOT), "--root", str(worktree), "--out", str(args.out)]
            for target in args.target or ("sqlite", "postgres"):
                counting += ["--target", target]
            if args.quick:
                counting.append("--quick")
            instructions.main(counting)
        finally:
            subprocess.run(
                ["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
                capture_output=True,
            )
    summarize(args.out)


def summarize(path: Path) -> None:
    """Mark the compiled checkout's rows in ``path`` and add compiled / interpreted."""
    report = json.loads(path.read_text())
    interpreted, compiled = {}, {}
    for row in report["results"]:
        row["compiled"] = Path(row["root"]) != common.ROOT
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
