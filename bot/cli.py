"""Command line (SPEC §9): thin Click commands over plain functions."""

import os
import socket
import stat
import sys
from datetime import UTC, datetime
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import AppGroup

from bot import auth, bundle, doctor, evidence, ledger, notes, phones, provision, reconcile
from bot import employees as staff
from bot import settings as org_settings
from bot.extensions import db

employees_cli = AppGroup("employees", help="Employees and their lines.")
settings_cli = AppGroup("settings", help="Company name, default mode and texts.")
audit_cli = AppGroup("audit", help="The evidence log: verify, checkpoints, bundles, export.")

admins_cli = AppGroup("admins", help="Portal sign-ins.")
twilio_cli = AppGroup("twilio", help="Twilio's side: set the lines up, recover lost texts.")

groups = [employees_cli, settings_cli, audit_cli, admins_cli, twilio_cli]


def _region() -> str:
    return current_app.config["DEFAULT_REGION"]


def _fail(exc: Exception) -> None:
    db.session.rollback()
    raise click.ClickException(str(exc))


def _describe(employee) -> str:
    mode = employee.mode.value if employee.mode else "default"
    state = "" if employee.active else "  (inactive)"
    return (
        f"{phones.readable(employee.line):<18} {employee.name:<24} "
        f"cell {phones.readable(employee.cell):<18} mode {mode}{state}"
    )


@employees_cli.command("add")
@click.option("--name", required=True, help="Display name ({employee_name}).")
@click.option("--cell", required=True, help="The employee's own cell phone.")
@click.option("--line", required=True, help="The Twilio number of the employee's line.")
@click.option(
    "--mode", default=None, help="consent, disclaimer or off (default: follow the organisation)."
)
def employees_add(name, cell, line, mode):
    """Give an employee a line."""
    try:
        employee = staff.add(name, cell, line, mode, _region())
        db.session.commit()
    except staff.EmployeeError as exc:
        _fail(exc)
    click.echo(f"added {_describe(employee)}")


@employees_cli.command("list")
def employees_list():
    """List employees and their lines."""
    rows = staff.listing()
    if not rows:
        click.echo("no employees yet: flask --app app employees add --name … --cell … --line …")
    for employee in rows:
        click.echo(_describe(employee))


@employees_cli.command("set-mode")
@click.argument("line")
@click.argument("mode")
def employees_set_mode(line, mode):
    """Set a line's mode: consent, disclaimer, off, or default."""
    try:
        employee = staff.set_mode(line, mode, _region())
        db.session.commit()
    except staff.EmployeeError as exc:
        _fail(exc)
    click.echo(_describe(employee))


@employees_cli.command("remove")
@click.argument("line")
def employees_remove(line):
    """Deactivate a line (its history stays)."""
    try:
        employee = staff.remove(line, _region())
        db.session.commit()
    except staff.EmployeeError as exc:
        _fail(exc)
    click.echo(f"deactivated {_describe(employee)}")


@settings_cli.command("show")
def settings_show():
    """Show every setting and where its value comes from."""
    current = org_settings.current()
    source = lambda key: "saved" if key in current.saved else "default"  # noqa: E731
    click.echo(f"company_name = {current.company_name!r}  [{source('company_name')}]")
    click.echo(f"default_mode = {current.default_mode.value}  [{source('default_mode')}]")
    for key, value in current.texts.items():
        click.echo(f"text.{key} = {value!r}  [{source('text.' + key)}]")


@settings_cli.command("set")
@click.argument("key")
@click.argument("value")
def settings_set(key, value):
    """Save a setting: company_name, default_mode or text.<key>."""
    try:
        org_settings.put(key, value)
        db.session.commit()
    except org_settings.SettingError as exc:
        _fail(exc)
    for warning in org_settings.warnings(key, value):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{key} saved")


@settings_cli.command("reset")
@click.argument("key")
def settings_reset(key):
    """Go back to the default of a setting."""
    try:
        org_settings.reset(key)
        db.session.commit()
    except org_settings.SettingError as exc:
        _fail(exc)
    click.echo(f"{key} reset to the default")


@audit_cli.command("export")
@click.option("--since", default=None, help="Only entries from this day on (YYYY-MM-DD, UTC).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None)
def audit_export(since, out_path):
    """Write the attestation log as CSV (standard output without --out)."""
    start = None
    if since:
        try:
            start = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise click.BadParameter("use YYYY-MM-DD", param_hint="--since") from None
    if out_path:
        with open(out_path, "w", encoding="utf-8", newline="") as out:
            count = evidence.export(out, start)
            settle(out)
        click.echo(f"{count} entries written to {out_path}", err=True)
    else:
        evidence.export(sys.stdout, start)


def settle(out) -> None:
    """A file written out is on disk, and its name in its folder, before the command says so
    (a device or a pipe has nothing to flush)."""
    out.flush()
    if not stat.S_ISREG(os.fstat(out.fileno()).st_mode):
        return
    os.fsync(out.fileno())
    folder = os.open(os.path.dirname(os.path.abspath(out.name)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@audit_cli.command("verify")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A signed checkpoint kept elsewhere (a witness's copy); may be given again.",
)
def audit_verify(checkpoints):
    """Check the whole log: chains, Merkle tree, checkpoints, and what the portal shows."""
    report = evidence.verify(checkpoint_files=checkpoints)
    ledger.record_verify(report)
    for broken in report.broken:
        click.echo(f"BROKEN line {broken.line} contact {broken.contact}: {broken.reason}", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    summary = (
        f"{report.conversations} conversations, {report.entries} entries, "
        f"{report.leaves} in the Merkle tree, {report.checkpoints} signed checkpoints"
    )
    if not report.ok:
        raise click.ClickException(f"{len(report.broken)} problem(s) in {summary}")
    click.echo(f"OK: the log is intact ({summary})")


@audit_cli.command("keygen")
def audit_keygen():
    """Print a new Ed25519 key pair for checkpoints, as two lines for .env."""
    config = current_app.config
    host = urlsplit(config["PUBLIC_BASE_URL"] or "").hostname or socket.gethostname()
    key = notes.generate(ledger.origin_name(org_settings.current().company_name, host))
    click.echo(f"EVIDENCE_SIGNING_KEY={key}")
    click.echo(f"EVIDENCE_PUBLIC_KEY={key.verifier}")


@audit_cli.command("checkpoint")
def audit_checkpoint():
    """Sign the log as it is now and hand it to the witnesses; print the checkpoint."""
    key = ledger.signer()
    if key is None:
        raise click.ClickException(
            "EVIDENCE_SIGNING_KEY is not set: evidence is unsigned (`audit keygen` makes a key)"
        )
    try:
        record, new = ledger.checkpoint(key, force=True)
    except ledger.Refused as exc:
        _fail(exc)
    if not new:
        click.echo("nothing new since the last checkpoint:", err=True)
    click.echo(record.note, nl=False)
    failing = ledger.undelivered()
    for copy in failing:
        click.echo(
            f"witness {copy.witness} failed ({copy.attempts} tries): {copy.last_error}", err=True
        )
    if failing:
        raise click.ClickException(
            f"{len(failing)} witness copies not delivered; tried again later"
        )


@audit_cli.command("sequence")
def audit_sequence():
    """Place every committed entry in the Merkle tree now (webhooks do it as they go)."""
    click.echo(f"{ledger.sequence()} entries placed")


@audit_cli.command("bundle")
@click.argument("contact")
@click.option("--line", default=None, help="Only this line's conversation with the contact.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True))
def audit_bundle(contact, line, out_path):
    """One contact's evidence as a zip a court can check offline (SPEC §10)."""
    try:
        summary = bundle.write(contact, line, out_path)
    except bundle.BundleError as exc:
        _fail(exc)
    click.echo(summary)


@admins_cli.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def admins_create(email, password_stdin):
    """Create a portal sign-in (asks for the password)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        admin = auth.create_admin(email, password)
        db.session.commit()
    except auth.AuthError as exc:
        _fail(exc)
    click.echo(f"admin {admin.email} created")


@twilio_cli.command("setup")
@click.option("--apply", is_flag=True, help="Make the changes (without it: only show them).")
def twilio_setup(apply):
    """Each active line's number, Messaging Service and webhooks, through Twilio's API."""
    try:
        report = provision.run(apply, http_client=current_app.config.get("TWILIO_HTTP_CLIENT"))
    except (provision.SetupError, reconcile.ReconcileError) as exc:
        _fail(exc)
    if not report.lines:
        click.echo("no active lines: nothing to set up")
    for line in report.lines:
        click.echo(f"{phones.readable(line.line)} ({line.employee}):")
        for change in line.changes:
            click.echo(f"  {'done: ' if apply else 'would '}{change}")
        for error in line.errors:
            click.echo(f"  error: {error}", err=True)
        if not line.changes and not line.errors:
            click.echo("  nothing to change")
    if report.changes and not apply:
        click.echo("run again with --apply to make these changes")
    if report.console_steps:
        click.echo("\nWhat Twilio's API cannot set (once per Messaging Service, in the console):")
        for number, step in enumerate(report.console_steps, 1):
            click.echo(f"  {number}. {step}")
    if not report.ok:
        raise click.ClickException("some lines could not be set up (see above)")


@twilio_cli.command("doctor")
def twilio_doctor():
    """Check the whole set-up; each problem with its fix. Non-zero exit on any error."""
    findings = doctor.check(http_client=current_app.config.get("TWILIO_HTTP_CLIENT"))
    for finding in findings:
        mark = {"ok": "ok     ", "warning": "WARNING", "error": "ERROR  "}[finding.level]
        click.echo(
            f"{mark} {finding.what}"
            + (f"\n        fix: {finding.fix}" if finding.fix and finding.level != "ok" else "")
        )
    if doctor.failed(findings):
        raise click.ClickException("the set-up has errors (see above)")


@twilio_cli.command("reconcile")
@click.option("--since", required=True, help="Texts sent from this day on (YYYY-MM-DD, UTC).")
def twilio_reconcile(since):
    """Process the inbound texts Twilio has but the log lacks, in order, marked recovered.

    The answers go out through the REST API. Without PUBLIC_BASE_URL they carry
    no status callback, so their delivery status does not reach the log.
    """
    try:
        start = reconcile.parse_since(since)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--since") from None
    # TWILIO_HTTP_CLIENT: the tests' seam, a fake of Twilio's REST API (never set it otherwise).
    try:
        report = reconcile.run(start, http_client=current_app.config.get("TWILIO_HTTP_CLIENT"))
    except reconcile.ReconcileError as exc:
        _fail(exc)
    if not report.lines:
        click.echo("no active lines: nothing to reconcile")
    for line in report.lines:
        click.echo(
            f"{phones.readable(line.line)}: {line.listed} listed, {line.missing} missing, "
            f"{line.recovered} recovered, {line.sent} sent, {line.failed} failed"
        )
        for error in line.errors:
            click.echo(f"  error: {error}", err=True)
    if any(line.sent for line in report.lines) and not current_app.config["PUBLIC_BASE_URL"]:
        click.echo(
            "note: PUBLIC_BASE_URL is not set, so these texts carry no status callback",
            err=True,
        )
    if not report.ok:
        raise click.ClickException("some texts could not be recovered or sent (see above)")
