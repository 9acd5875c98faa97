"""What the benchmarks share: the lines, the app's environment, databases, servers."""

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOKEN = "bench-auth-token"
# Every server validates signatures for this origin (PUBLIC_BASE_URL), so each
# request is signed once, before the timed phase, whatever port a server got.
PUBLIC_BASE = "https://bench.consentline.test"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")

# (name, cell, line) of each employee.
LINES = (
    ("Ana Reyes", "+14155550111", "+14155550101"),
    ("Ben Okafor", "+14155550112", "+14155550102"),
    ("Cy Lindqvist", "+14155550113", "+14155550103"),
    ("Dee Moreau", "+14155550114", "+14155550104"),
    ("Eli Nakamura", "+14155550115", "+14155550105"),
)
AREAS = (212, 312, 415, 617, 713, 206, 303, 404, 503, 602)


def contact_number(n: int) -> str:
    """The n-th contact: a distinct, valid US number."""
    rest = n // len(AREAS)
    return f"+1{AREAS[n % len(AREAS)]}{201 + (rest // 10000) % 799:03d}{rest % 10000:04d}"


def app_env(database_url: str, workers: int = 2) -> dict[str, str]:
    """The environment a server runs with: nothing of the machine's configures it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "FLASK_"))}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-secret",
        TWILIO_AUTH_TOKEN=TOKEN,
        PUBLIC_BASE_URL=PUBLIC_BASE,
        COMPANY_NAME="Bench Plumbing",
        WEB_CONCURRENCY=str(workers),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def flask(args: list[str], database_url: str, cwd: Path = ROOT, stdin: str | None = None) -> str:
    """``flask --app app ARGS`` in ``cwd`` (a checkout) against ``database_url``."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=cwd,
        env=app_env(database_url) | {"PYTHONPATH": str(cwd)},
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare(database_url: str, cwd: Path = ROOT) -> None:
    """Migrate a fresh database and give every line its employee, as an admin would."""
    flask(["db", "upgrade"], database_url, cwd)
    for name, cell, line in LINES:
        flask(
            ["employees", "add", "--name", name, "--cell", cell, "--line", line], database_url, cwd
        )


def sqlite_url(directory: str, name: str) -> str:
    return f"sqlite:///{Path(directory) / name}.sqlite3"


def pg_admin(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-qc", sql], check=True, capture_output=True)


def pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def databases(backends: list[str], names: list[str]):
    """A fresh database per backend and name ({(backend, name): url}), dropped afterwards."""
    made, urls = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        try:
            for backend in backends:
                for name in names:
                    if backend == "sqlite":
                        urls[backend, name] = sqlite_url(directory, name)
                    else:
                        db = f"bench_{name}_{os.getpid()}"
                        pg_admin(f"DROP DATABASE IF EXISTS {db}")
                        pg_admin(f"CREATE DATABASE {db}")
                        made.append(db)
                        urls[backend, name] = pg_url(db)
            yield urls
        finally:
            for db in made:
                pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gunicorn(module: str, env: dict[str, str], cwd: Path = ROOT):
    """``gunicorn MODULE`` as the Procfile runs the app (sync workers); yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", module, "--bind", f"127.0.0.1:{port}"]
    command += ["--log-level", "warning"]
    env = env | {"PYTHONPATH": str(cwd) + os.pathsep + str(ROOT)}
    proc = subprocess.Popen(command, cwd=cwd, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def checkout(ref: str):
    """``ref`` in a temporary git worktree (for a side-by-side run of two commits)."""
    directory = tempfile.mkdtemp(prefix="bench-ref-")
    subprocess.run(
        ["git", "worktree", "add", "--detach", directory, ref],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield Path(directory)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", directory], cwd=ROOT, check=False)


def machine() -> dict:
    """What the figures were measured on."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join(["python -m", *sys.argv]),
    }


def write_results(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path
