"""What the benchmarks share: lines, contacts, the app's environment, databases, gunicorn."""

import contextlib
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

TOKEN = "bench-auth-token"
# Both servers validate signatures against this origin (PUBLIC_BASE_URL), so every
# request can be signed once, before the timed phase, whatever port a server got.
PUBLIC_BASE = "https://bench.consentline.test"
SMS_PATH = "/twilio/sms"
SIGNED_SMS_URL = PUBLIC_BASE + SMS_PATH
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass(frozen=True)
class Line:
    name: str
    cell: str
    line: str


LINES = (
    Line("Ana Reyes", "+14155550111", "+14155550101"),
    Line("Ben Okafor", "+14155550112", "+14155550102"),
    Line("Cy Lindqvist", "+14155550113", "+14155550103"),
    Line("Dee Moreau", "+14155550114", "+14155550104"),
    Line("Eli Nakamura", "+14155550115", "+14155550105"),
)

AREAS = (212, 312, 415, 617, 713, 206, 303, 404, 503, 602)


def contact_number(n: int) -> str:
    """The n-th contact: a distinct, valid US number (checked for every area/exchange used)."""
    area = AREAS[n % len(AREAS)]
    rest = n // len(AREAS)
    return f"+1{area}{201 + (rest // 10000) % 799:03d}{rest % 10000:04d}"


# The load generator's clients (bench.load): its own, and the aiohttp one it used before.
CLIENTS = ("lean", "aiohttp")


def add_round_arguments(parser, rounds_help: str = "rounds per target") -> None:
    """The options of the side-by-side benches (``run``, ``compare``, ``sched``)."""
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)
    parser.add_argument("--requests", type=int, default=3000, help="webhooks per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per round, at most")
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY for every server")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="lean",
        help="the load generator's client (bench.load): aiohttp shows what its cost does",
    )


def python() -> str:
    return sys.executable


def base_environ() -> dict[str, str]:
    """The machine's environment without anything that configures the app."""
    drop = ("TWILIO_", "PUBLIC_", "DATABASE_", "FLASK_", "WEB_CONCURRENCY", "SQLALCHEMY")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def app_env(database_url: str, workers: int = 2) -> dict[str, str]:
    """The app's environment: every setting the README lists is given, so no .env leaks in."""
    env = base_environ()
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-secret-key",
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_VALIDATE_SIGNATURE="true",
        PUBLIC_BASE_URL=PUBLIC_BASE,
        TRUSTED_PROXIES="0",
        TRUSTED_HOSTS="",
        COMPANY_NAME="Acme Plumbing",
        OPT_IN_MODE="consent",
        DEFAULT_REGION="US",
        TWILIO_STOP_FILTERING="true",
        SIMULATOR_ENABLED="false",
        DATABASE_BUSY_TIMEOUT="10",
        WEB_CONCURRENCY=str(workers),
        PYTHONUNBUFFERED="1",
    )
    return env


def flask(args: list[str], database_url: str, timeout: float = 600, cwd: Path = ROOT, **kw) -> str:
    """``flask --app app ARGS`` from the project root (or another checkout), as an
    operator runs it."""
    command = [python(), "-m", "flask", "--app", "app", *args]
    done = subprocess.run(
        command,
        cwd=cwd,
        env=app_env(database_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def migrate(database_url: str, cwd: Path = ROOT) -> None:
    flask(["db", "upgrade"], database_url, cwd=cwd)


def seed_employees(database_url: str, cwd: Path = ROOT) -> None:
    for line in LINES:
        flask(
            ["employees", "add", "--name", line.name, "--cell", line.cell, "--line", line.line],
            database_url,
            cwd=cwd,
        )


# -- Postgres ------------------------------------------------------------------


def pg_url(name: str) -> str:
    """The URL of database ``name`` on the admin server (the app adds +psycopg itself)."""
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{name}"


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def create_pg_db(name: str) -> str:
    assert name.startswith("bench_") and name.replace("_", "").isalnum(), name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_admin(f'CREATE DATABASE "{name}"')
    return pg_url(name)


def drop_pg_db(name: str) -> None:
    assert name.startswith("bench_"), name
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return conn.execute("SELECT version()").fetchone()[0]
    except Exception as exc:
        return f"unavailable ({exc.__class__.__name__})"


# -- gunicorn ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen
    command: list[str]

    @property
    def sms_url(self) -> str:
        return self.base + SMS_PATH

    def workers(self) -> list[int]:
        return children(self.proc.pid)


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    return found


def wait_healthy(base: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{base} did not start (exit {proc.poll()})")
        time.sleep(0.1)


@contextlib.contextmanager
def gunicorn(
    name: str,
    module: str,
    env: dict[str, str],
    log_path: Path,
    workers: int = 2,
    extra_args: tuple[str, ...] = (),
):
    """``gunicorn MODULE --bind 127.0.0.1:PORT`` (the Procfile's command) with
    ``WEB_CONCURRENCY=workers``, started from the project root, so that a
    ``gunicorn.conf.py`` there applies as it does in production. Stopped with SIGTERM."""
    port = free_port()
    command = [python(), "-m", "gunicorn", module, "--bind", f"127.0.0.1:{port}", *extra_args]
    env = dict(env, WEB_CONCURRENCY=str(workers))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        deadline = time.monotonic() + 10
        while len(children(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Server(name, base, proc, command)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


GUNICORN_KEYS = ("config", "workers", "worker_class", "threads", "keepalive", "timeout", "backlog")


def gunicorn_config(module: str, env: dict[str, str], extra_args: tuple[str, ...] = ()) -> dict:
    """The settings gunicorn will run MODULE with from the project root (``--print-config``)."""
    done = subprocess.run(
        [python(), "-m", "gunicorn", "--print-config", module, *extra_args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = {"config_file_exists": (ROOT / "gunicorn.conf.py").exists()}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in GUNICORN_KEYS:
            found[key.strip()] = value.strip()
    return found


def git_state() -> dict:
    """The commit measured, and any uncommitted change outside bench/ (it is measured too).

    In a snapshot made with ``git archive`` (see bench/README.md, "Measuring a commit
    while others edit the tree") the commit is read from its ``.bench-commit`` file."""
    marker = ROOT / ".bench-commit"
    if marker.exists():
        return {
            "commit": marker.read_text().strip(),
            "snapshot": f"git archive of that commit at {ROOT}; bench/ from the working tree",
        }

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    changes = [
        line for line in git("status", "--porcelain").splitlines() if line[3:].strip() != "bench/"
    ]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_outside_bench": changes}


# -- CPU accounting (from /proc; informational) ---------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process so far (those still alive)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two ``cpu_by_pid`` snapshots by the processes alive at the end."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def postgres_pids(database: str) -> list[int]:
    """The Postgres backends serving ``database`` (by their process title)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace")
                if title.startswith("postgres:") and f" {database} " in title:
                    pids.append(int(entry))
    return pids


# -- machine ---------------------------------------------------------------------


def machine_info() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    packages = {}
    names = ("flask", "sqlalchemy", "psycopg", "gunicorn", "twilio", "werkzeug")
    for name in (*names, "aiohttp", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres_version(),
        "packages": packages,
        "loadavg_at_start": os.getloadavg(),
    }


def command_line() -> str:
    """The exact command this process was started with, and from where."""
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join(sys.orig_argv)}"
