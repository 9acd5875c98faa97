"""The migrations build exactly the models' schema (``flask db check`` is clean)."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.extensions import db


def test_models_and_migrations_agree(app):
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


def test_flask_db_check_is_clean(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output
