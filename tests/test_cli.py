"""SPEC §9 command line: employees, settings, with clear errors for bad input."""

import pytest

from bot import texts
from support import CELL, LINE


def run(runner, *args):
    return runner.invoke(args=list(args))


def test_employees_add_list_set_mode_remove(runner):
    added = run(
        runner,
        "employees",
        "add",
        "--name",
        "Bo Li",
        "--cell",
        "(415) 555-0111",
        "--line",
        "415.555.0100",
        "--mode",
        "disclaimer",
    )
    assert added.exit_code == 0, added.output
    assert "+1 415-555-0100" in added.output and "mode disclaimer" in added.output
    listed = run(runner, "employees", "list")
    assert "Bo Li" in listed.output and "cell +1 415-555-0111" in listed.output
    assert "mode default" in run(runner, "employees", "set-mode", LINE, "default").output
    assert "mode off" in run(runner, "employees", "set-mode", "4155550100", "OFF").output
    removed = run(runner, "employees", "remove", LINE)
    assert removed.exit_code == 0 and "(inactive)" in removed.output
    # The line is free again for someone else; the old row stays as history.
    again = run(runner, "employees", "add", "--name", "Cy", "--cell", CELL, "--line", LINE)
    assert again.exit_code == 0, again.output
    assert run(runner, "employees", "list").output.count("415-555-0100") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cell", "555", "--line", LINE], "cell: '555' is not a valid phone number"),
        (["--cell", CELL, "--line", "+1555123"], "line: '+1555123' is not a valid phone number"),
        (["--cell", CELL, "--line", CELL], "cell and line must be different numbers"),
        (["--cell", CELL, "--line", LINE, "--mode", "maybe"], "mode must be consent, disclaimer"),
        (["--cell", CELL, "--line", LINE, "--name", " "], "an employee needs a name"),
    ],
)
def test_employees_add_rejects_bad_input(runner, args, message):
    if "--name" not in args:
        args = ["--name", "Al", *args]
    result = run(runner, "employees", "add", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "no employees yet" in run(runner, "employees", "list").output


def test_duplicate_active_line_and_unknown_line(runner, employee):
    dup = run(runner, "employees", "add", "--name", "Bo", "--cell", "+14155550112", "--line", LINE)
    assert dup.exit_code != 0 and "already belongs to an active employee" in dup.output
    missing = run(runner, "employees", "set-mode", "+14155550199", "off")
    assert missing.exit_code != 0 and "no active employee has the line" in missing.output
    bad = run(runner, "employees", "set-mode", LINE, "sometimes")
    assert bad.exit_code != 0 and "mode must be" in bad.output


def test_settings_show_set_reset(runner):
    shown = run(runner, "settings", "show").output
    assert "company_name = 'Acme Plumbing'  [default]" in shown
    assert "default_mode = consent  [default]" in shown
    assert f"text.relay.to_employee = {texts.DEFAULTS['relay.to_employee']!r}  [default]" in shown
    assert run(runner, "settings", "set", "default_mode", "Disclaimer").exit_code == 0
    assert "default_mode = disclaimer  [saved]" in run(runner, "settings", "show").output
    assert run(runner, "settings", "reset", "default_mode").exit_code == 0
    assert "default_mode = consent  [default]" in run(runner, "settings", "show").output


def test_settings_errors_and_warnings(runner):
    unknown = run(runner, "settings", "set", "colour", "blue")
    assert unknown.exit_code != 0 and "unknown setting 'colour'" in unknown.output
    bad_mode = run(runner, "settings", "set", "default_mode", "strict")
    assert bad_mode.exit_code != 0 and "default_mode must be" in bad_mode.output
    empty = run(runner, "settings", "set", "text.help.to_contact", "  ")
    assert empty.exit_code != 0 and "cannot be empty" in empty.output
    lossy = run(runner, "settings", "set", "text.help.to_contact", "Call us.")
    assert lossy.exit_code == 0
    assert "no longer uses {company_name}" in lossy.output
    assert "no longer tells the contact how to opt out" in lossy.output
    assert run(runner, "settings", "reset", "nope").exit_code != 0
