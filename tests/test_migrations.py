"""The migrations build exactly the models' schema (``flask db check`` is clean), and undo."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from bot.extensions import db, outside_the_models
from support import make_app


def test_models_and_migrations_agree(app):
    with app.app_context(), db.engine.connect() as conn:
        opts = {"compare_type": True, "include_name": outside_the_models}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, db.metadata) == []


def test_flask_db_check_is_clean(runner):
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def _indexes(conn) -> dict[str, str]:
    """Index name -> definition, for the messages and attestations tables.

    On SQLite a UNIQUE constraint is an automatic index without SQL of its own:
    it is listed under the constraint's name when the table declares it.
    """
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename IN ('messages', 'attestations')"
            )
        )
        return dict(rows.all())
    found = dict(
        conn.execute(
            text(
                "SELECT name, COALESCE(sql, 'automatic') FROM sqlite_master"
                " WHERE type = 'index' AND tbl_name IN ('messages', 'attestations')"
            )
        ).all()
    )
    table = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'messages'")).scalar()
    if "CONSTRAINT uq_messages_twilio_sid UNIQUE" in table:
        found["uq_messages_twilio_sid"] = "UNIQUE constraint"
    return found


def test_the_lean_indexes_migrate_up_and_down(scratch_url):
    """0005 drops the unused message_ref index, 0006 makes the SID index partial; both undo."""
    app = make_app(scratch_url)
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            lean = _indexes(conn)
        assert "ix_attestations_message_ref" not in lean
        sid = lean["uq_messages_twilio_sid"].replace("(", "").replace(")", "")
        assert "UNIQUE" in sid and "WHERE twilio_sid IS NOT NULL" in sid
        downgrade(revision="0004")
        with db.engine.connect() as conn:
            before = _indexes(conn)
        assert "ix_attestations_message_ref" in before
        assert "WHERE" not in before["uq_messages_twilio_sid"]
        upgrade()
        with db.engine.connect() as conn:
            assert _indexes(conn) == lean
        db.engine.dispose()
