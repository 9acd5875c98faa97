"""End to end in a real headless Chromium (Debian's package, driven by Playwright).

An office manager signs in, adds an employee, runs the consent flow in the
simulator, finds the conversation, records an opt-out and exports the log.
Screenshots go to $CONSENTLINE_SCREENSHOTS (``make screenshots``: docs/screenshots).
"""

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from support import gunicorn

EMAIL, PASSWORD = "manager@example.com", "a long office passphrase"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is missing: install Debian's chromium package (make test does)")
    return path


@pytest.fixture
def shots(tmp_path) -> Path:
    target = Path(os.environ.get("CONSENTLINE_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def server(database_url, runner):
    result = runner.invoke(args=["admins", "create", EMAIL, "--password-stdin"], input=PASSWORD)
    assert result.exit_code == 0, result.output
    with gunicorn(
        database_url, workers=2, SIMULATOR_ENABLED="true", COMPANY_NAME="Acme Plumbing"
    ) as base:
        yield base


@pytest.fixture
def page(server, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        context = browser.new_context(
            base_url=server, viewport={"width": 1200, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        page.set_default_timeout(15000)
        yield page
        context.close()
        browser.close()


def test_office_manager_runs_consent_from_the_browser(page, shots):
    # Sign in.
    page.goto("/")
    expect(page).to_have_url("/login?next=/")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    # Add an employee.
    page.get_by_role("link", name="Employees").click()
    page.get_by_label("Name").fill("Alice Plumber")
    page.get_by_label("Own cell phone").fill("(415) 555-0111")
    page.get_by_label("Line (the Twilio number)").fill("415 555 0100")
    page.get_by_label("Opt-in mode").select_option("consent")
    page.get_by_role("button", name="Add employee").click()
    expect(page.get_by_text("Alice Plumber now has the line +1 415-555-0100.")).to_be_visible()

    # The contact writes; the consent request comes back; YES releases the held text.
    page.get_by_role("link", name="Simulator").click()
    page.get_by_label("Contact number").fill("(415) 555-0142")
    page.get_by_role("button", name="Use these").click()
    contact_phone = page.locator("#contact")
    employee_phone = page.locator("#employee")
    contact_phone.get_by_label("Text from the contact").fill("Hi, can you fix a leaking sink?")
    contact_phone.get_by_role("button", name="Send as contact").click()
    expect(contact_phone.get_by_text("You are trying to reach Alice Plumber")).to_be_visible()
    expect(employee_phone.get_by_text("A contact has attempted to send you")).to_be_visible()
    expect(employee_phone.get_by_text("Hi, can you fix a leaking sink?")).to_have_count(0)
    contact_phone.get_by_label("Text from the contact").fill("YES")
    contact_phone.get_by_role("button", name="Send as contact").click()
    expect(
        employee_phone.get_by_text("+14155550142: Hi, can you fix a leaking sink?")
    ).to_be_visible()
    expect(contact_phone.get_by_text("Opt in confirmed.")).to_be_visible()
    employee_phone.get_by_label("Text from the employee").fill("Sure, I can come at 3pm.")
    employee_phone.get_by_role("button", name="Send as employee").click()
    expect(contact_phone.get_by_text("Sure, I can come at 3pm.")).to_be_visible()
    page.screenshot(path=shots / "simulator.png", full_page=True)

    # Find the conversation in Contacts and look at its timeline.
    page.get_by_role("link", name="Contacts").click()
    page.get_by_label("Search by number or name").fill("555-0142")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="+1 415-555-0142").click()
    expect(page.get_by_text("Consent: opted in")).to_be_visible()
    page.screenshot(path=shots / "timeline.png", full_page=True)

    # Record an opt-out received by phone.
    page.get_by_label("How it was received").select_option("phone call")
    page.get_by_label("Note").first.fill("Called the office to stop texts")
    page.get_by_role("button", name="Record opt-out").click()
    expect(page.get_by_text("Opt-out recorded")).to_be_visible()
    expect(page.get_by_text("by " + EMAIL).first).to_be_visible()

    # Dashboard shows the states and events.
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Recent consent events")).to_be_visible()
    page.screenshot(path=shots / "dashboard.png", full_page=True)

    # Export the log as CSV.
    page.get_by_role("link", name="Log").click()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    content = Path(download_info.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(content)))
    bodies = [r["body"] for r in rows]
    assert "Hi, can you fix a leaking sink?" in bodies
    assert "Sure, I can come at 3pm." in bodies
    assert {r["contact"] for r in rows} == {"+14155550142"}

    # The chains verify from the browser too.
    page.get_by_role("button", name="Verify the evidence chains").click()
    expect(page.get_by_text("The log is intact")).to_be_visible()

    # The dashboard says what protects the evidence; the Health page lists each fix.
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Evidence")).to_be_visible()
    page.get_by_role("link", name="Health").click()
    expect(page.get_by_role("heading", name="Health")).to_be_visible()
    expect(
        page.locator("#health").get_by_text("PUBLIC_BASE_URL is not set", exact=True)
    ).to_be_visible()
