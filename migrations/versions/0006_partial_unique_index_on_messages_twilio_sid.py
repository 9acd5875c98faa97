"""messages.twilio_sid: a unique index of the texts that have a SID

The unique constraint indexed every text, the relay's own outgoing texts
included, which have no SID until a status callback brings one (if ever): each
of them added a NULL entry that no lookup asks for. A unique index with
``WHERE twilio_sid IS NOT NULL`` keeps the same rule (one text per SID) and
serves the same lookups (``twilio_sid = ...`` and ``IN`` imply NOT NULL on
both databases), with one index entry fewer per text the relay sends.

Postgres: the new index is built CONCURRENTLY, outside the migration's
transaction, so webhooks go on writing while it is built; only the swap (drop
the constraint, rename the index) takes the table's lock, for a moment. If the
build fails it leaves an invalid index named ``uq_messages_twilio_sid_new``:
drop it and run the upgrade again.

SQLite: dropping a constraint copies the messages table (batch mode), which
holds the database's write lock for as long as the copy takes (seconds per
million texts); webhooks arriving meanwhile wait for it, or answer 503 once
DATABASE_BUSY_TIMEOUT runs out.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

NAME = 'uq_messages_twilio_sid'
WHERE = sa.text('twilio_sid IS NOT NULL')


def upgrade():
    if op.get_context().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.create_index(
                f'{NAME}_new', 'messages', ['twilio_sid'], unique=True,
                postgresql_where=WHERE, postgresql_concurrently=True,
            )
        op.drop_constraint(NAME, 'messages', type_='unique')
        op.execute(f'ALTER INDEX {NAME}_new RENAME TO {NAME}')
        return
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint(NAME, type_='unique')
        batch_op.create_index(NAME, ['twilio_sid'], unique=True, sqlite_where=WHERE)


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(NAME)
        batch_op.create_unique_constraint(NAME, ['twilio_sid'])
