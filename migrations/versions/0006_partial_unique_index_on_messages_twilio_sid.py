"""messages.twilio_sid: a unique index of the texts that have a SID

The unique constraint indexed every text, the relay's own outgoing texts
included, which have no SID until a status callback brings one (if ever): each
of them added a NULL entry that no lookup asks for. A unique index with
``WHERE twilio_sid IS NOT NULL`` keeps the same rule (one text per SID) and
serves the same lookups (``twilio_sid = ...`` implies NOT NULL on both
databases), with one index entry fewer per text the relay sends.

On SQLite, dropping the constraint copies the messages table (batch mode).

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

WHERE = sa.text('twilio_sid IS NOT NULL')


def upgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint('uq_messages_twilio_sid', type_='unique')
        batch_op.create_index(
            'uq_messages_twilio_sid', ['twilio_sid'], unique=True,
            sqlite_where=WHERE, postgresql_where=WHERE,
        )


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('uq_messages_twilio_sid')
        batch_op.create_unique_constraint('uq_messages_twilio_sid', ['twilio_sid'])
