"""Deploying in one step: app.json (a Heroku button), the Dockerfile and compose.yaml
say what the Procfile, the README and SPEC §8 say."""

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The fields of Heroku's app.json schema (devcenter.heroku.com/articles/app-json-schema).
APP_JSON_FIELDS = {
    "name",
    "description",
    "keywords",
    "website",
    "repository",
    "logo",
    "success_url",
    "scripts",
    "env",
    "formation",
    "image",
    "addons",
    "buildpacks",
    "environments",
    "stack",
}
ENV_FIELDS = {"description", "value", "required", "generator"}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def spec_variables() -> set[str]:
    """The variables of SPEC §8's table, as the README and .env.example list them."""
    return set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))


def test_app_json_uses_herokus_fields_and_describes_every_variable():
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app) <= APP_JSON_FIELDS
    assert isinstance(app["name"], str) and len(app["name"]) <= 30
    assert app["addons"][0]["plan"].startswith("heroku-postgresql")
    for name, entry in app["env"].items():
        assert set(entry) <= ENV_FIELDS, name
        assert entry["description"], name
    assert app["env"]["SECRET_KEY"]["generator"] == "secret"
    assert app["env"]["TRUSTED_PROXIES"]["value"] == "1"
    # Every setting a team sets (not the ones Heroku or the buildpack fills in).
    heroku_sets = {"DATABASE_URL", "EVIDENCE_WITNESS_DIR"}  # the add-on; no lasting disk
    assert spec_variables() - heroku_sets <= set(app["env"])


def test_the_release_phase_is_the_procfiles():
    assert procfile()["release"] == "flask --app app db upgrade"
    assert procfile()["web"] == "gunicorn wsgi:app --bind 0.0.0.0:$PORT"


def test_the_dockerfile_runs_the_procfiles_commands():
    text = (ROOT / "Dockerfile").read_text()
    [cmd] = re.findall(r"^CMD (.+)$", text, re.M)
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"]
    assert argv[2] == f"{procfile()['release']} && {procfile()['web']}"
    assert "pip install --no-cache-dir -r requirements.txt" in text


def test_compose_runs_the_app_on_postgres():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    app, db = compose["services"]["app"], compose["services"]["db"]
    assert app["build"] == "."
    url = app["environment"]["DATABASE_URL"]
    assert url.startswith("postgresql://") and "@db:5432/" in url
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert db["image"].startswith("postgres:")
    assert shlex.split(db["healthcheck"]["test"][1])[0] == "pg_isready"
    assert {"data", "witness"} <= set(compose["volumes"])


def test_the_readme_gives_both_ways():
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up" in readme
    assert "heroku.com/deploy" in readme
    assert "twilio setup" in readme and "twilio doctor" in readme
