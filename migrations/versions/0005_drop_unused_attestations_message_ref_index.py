"""drop ix_attestations_message_ref: no lookup uses it

Nothing the app runs looks evidence entries up by ``message_ref`` (the portal
reads a conversation's chain by ``(conversation_id, seq)``, ``audit export`` by
id, ``--since`` by ``created_at``), while every entry a webhook writes paid one
more index entry and every commit one more page of the write-ahead log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('attestations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attestations_message_ref'))


def downgrade():
    with op.batch_alter_table('attestations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attestations_message_ref'), ['message_ref'], unique=False)
