"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 11:36:47.231399

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('conversations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('line', sa.String(length=64), nullable=False),
    sa.Column('contact', sa.String(length=255), nullable=False),
    sa.Column('contact_name', sa.String(length=200), nullable=True),
    sa.Column('state', sa.Enum('new', 'pending', 'opted_in', 'disclosed', 'opted_out', name='state', native_enum=False, length=20), nullable=False),
    sa.Column('initiator', sa.Enum('contact', 'employee', name='role', native_enum=False, length=20), nullable=True),
    sa.Column('last_request_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('addressed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('chain_head', sa.String(length=64), nullable=False),
    sa.Column('chain_length', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
    sa.UniqueConstraint('line', 'contact', name=op.f('uq_conversations_line_contact'))
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_line_addressed_at', ['line', 'addressed_at'], unique=False)

    op.create_table('employees',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('cell', sa.String(length=32), nullable=False),
    sa.Column('line', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.Enum('consent', 'disclaimer', 'off', name='mode', native_enum=False, length=20), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_employees'))
    )
    with op.batch_alter_table('employees', schema=None) as batch_op:
        batch_op.create_index('uq_employees_active_line', ['line'], unique=True, sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))

    op.create_table('settings',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings'))
    )
    op.create_table('attestations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.Enum('message', 'status', 'disposition', 'consent', name='recordkind', native_enum=False, length=20), nullable=False),
    sa.Column('message_ref', sa.String(length=32), nullable=True),
    sa.Column('direction', sa.Enum('inbound', 'outbound', name='direction', native_enum=False, length=20), nullable=True),
    sa.Column('sender', sa.String(length=255), nullable=True),
    sa.Column('recipient', sa.String(length=255), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('media_json', sa.Text(), nullable=True),
    sa.Column('twilio_sid', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=True),
    sa.Column('error_code', sa.String(length=16), nullable=True),
    sa.Column('event', sa.Enum('request_sent', 'disclaimer_sent', 'opted_in', 'opted_out', 're_engaged', name='event', native_enum=False, length=20), nullable=True),
    sa.Column('mode', sa.Enum('consent', 'disclaimer', 'off', name='mode', native_enum=False, length=20), nullable=True),
    sa.Column('state', sa.Enum('new', 'pending', 'opted_in', 'disclosed', 'opted_out', name='state', native_enum=False, length=20), nullable=True),
    sa.Column('shown_text', sa.Text(), nullable=True),
    sa.Column('cause_sid', sa.String(length=64), nullable=True),
    sa.Column('cause_body', sa.Text(), nullable=True),
    sa.Column('signature_valid', sa.Boolean(), nullable=True),
    sa.Column('admin', sa.String(length=255), nullable=True),
    sa.Column('method', sa.String(length=40), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_attestations_conversation_id_conversations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attestations')),
    sa.UniqueConstraint('conversation_id', 'seq', name=op.f('uq_attestations_conversation_id_seq'))
    )
    with op.batch_alter_table('attestations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attestations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_attestations_message_ref'), ['message_ref'], unique=False)

    op.create_table('messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ref', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.Integer(), nullable=False),
    sa.Column('direction', sa.Enum('inbound', 'outbound', name='direction', native_enum=False, length=20), nullable=False),
    sa.Column('author', sa.Enum('contact', 'employee', name='role', native_enum=False, length=20), nullable=True),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('recipient', sa.String(length=255), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('relay_body', sa.Text(), nullable=True),
    sa.Column('media_json', sa.Text(), nullable=False),
    sa.Column('twilio_sid', sa.String(length=64), nullable=True),
    sa.Column('idempotency_token', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('error_code', sa.String(length=16), nullable=True),
    sa.Column('disposition', sa.Enum('relayed', 'held', 'released', 'discarded', 'answered', 'blocked', 'unrouted', name='disposition', native_enum=False, length=20), nullable=True),
    sa.Column('text_key', sa.String(length=80), nullable=True),
    sa.Column('source_ref', sa.String(length=32), nullable=True),
    sa.Column('hint', sa.Boolean(), nullable=False),
    sa.Column('recovered', sa.Boolean(), nullable=False),
    sa.Column('signature_valid', sa.Boolean(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_messages_conversation_id_conversations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('ref', name=op.f('uq_messages_ref')),
    sa.UniqueConstraint('twilio_sid', name=op.f('uq_messages_twilio_sid'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index('ix_messages_conversation_id_disposition', ['conversation_id', 'disposition'], unique=False)



def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_conversation_id_disposition')
        batch_op.drop_index(batch_op.f('ix_messages_conversation_id'))

    op.drop_table('messages')
    with op.batch_alter_table('attestations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attestations_message_ref'))
        batch_op.drop_index(batch_op.f('ix_attestations_created_at'))

    op.drop_table('attestations')
    op.drop_table('settings')
    with op.batch_alter_table('employees', schema=None) as batch_op:
        batch_op.drop_index('uq_employees_active_line', sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))

    op.drop_table('employees')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_line_addressed_at')

    op.drop_table('conversations')
