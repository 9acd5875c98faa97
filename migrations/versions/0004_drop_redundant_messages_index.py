"""drop ix_messages_conversation_id: ix_messages_conversation_id_disposition covers it

Every lookup of a conversation's messages (and the foreign key's) can use the
composite index (conversation_id, disposition), whose first column it is; the
single-column index only cost every inserted message one more index entry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:20:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_conversation_id'))


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_conversation_id'), ['conversation_id'], unique=False)
