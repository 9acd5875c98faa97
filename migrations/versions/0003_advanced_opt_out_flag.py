"""advanced opt-out flag and longer line addresses

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 11:57:35.945551

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('twilio_opt_out', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.alter_column('line',
               existing_type=sa.VARCHAR(length=64),
               type_=sa.String(length=255),
               existing_nullable=False)



def downgrade():
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.alter_column('line',
               existing_type=sa.String(length=255),
               type_=sa.VARCHAR(length=64),
               existing_nullable=False)
        batch_op.drop_column('twilio_opt_out')

