"""The portal's indexes: pages in keyset order, reviews and failures, contact search

What each serves (docs/performance.md has the figures at a million conversations):

- conversations (updated_at, id): the contacts list, most recent first, paged by key;
- conversations (contact): a contact searched by its whole number;
- conversations (state): the dashboard's count by state, from the index alone;
- messages (created_at, id): the log, newest first, paged by key and filtered by date;
- messages.line, a new column (the line's number, as on its conversation): the log
  of one line, newest first, read along (created_at, id) without the join that
  SQLite's planner would otherwise run from every conversation of the line;
- messages (id) of the revocation hints not reviewed yet, and of the failed texts:
  the dashboard's and the contacts page's short lists, without a scan of the log;
- a search of numbers and names by any part of them: Postgres's pg_trgm (GIN
  indexes of trigrams), SQLite's FTS5 trigram tokenizer (a table kept in step
  with the conversations by triggers).

Postgres: built CONCURRENTLY, outside the migration's transaction, so webhooks go
on meanwhile; pg_trgm is a trusted extension (PG 13+), which the database's owner
may create. SQLite: the database's write lock is held while they are built.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 19:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

HINTS = {'sqlite': 'hint = 1 AND review IS NULL', 'postgresql': 'hint AND review IS NULL'}
FAILED = "status IN ('failed', 'undelivered')"
PLAIN = [
    ('ix_conversations_updated_at_id', 'conversations', ['updated_at', 'id'], None),
    ('ix_conversations_contact', 'conversations', ['contact'], None),
    ('ix_conversations_state', 'conversations', ['state'], None),
    ('ix_messages_created_at_id', 'messages', ['created_at', 'id'], None),
    ('ix_messages_pending_hints', 'messages', ['id'], HINTS),
    ('ix_messages_failed', 'messages', ['id'], {'sqlite': FAILED, 'postgresql': FAILED}),
]
TRIGRAMS = [('ix_search_conversations_contact', 'contact'),
            ('ix_search_conversations_contact_name', 'contact_name')]
FTS = [
    "CREATE VIRTUAL TABLE conversation_search USING fts5(contact, contact_name,"
    " content='conversations', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER conversation_search_insert AFTER INSERT ON conversations BEGIN"
    " INSERT INTO conversation_search(rowid, contact, contact_name)"
    " VALUES (new.id, new.contact, new.contact_name); END",
    "CREATE TRIGGER conversation_search_update AFTER UPDATE OF contact, contact_name"
    " ON conversations BEGIN"
    " INSERT INTO conversation_search(conversation_search, rowid, contact, contact_name)"
    " VALUES ('delete', old.id, old.contact, old.contact_name);"
    " INSERT INTO conversation_search(rowid, contact, contact_name)"
    " VALUES (new.id, new.contact, new.contact_name); END",
    "CREATE TRIGGER conversation_search_delete AFTER DELETE ON conversations BEGIN"
    " INSERT INTO conversation_search(conversation_search, rowid, contact, contact_name)"
    " VALUES ('delete', old.id, old.contact, old.contact_name); END",
    "INSERT INTO conversation_search(conversation_search) VALUES ('rebuild')",
]


def upgrade():
    dialect = op.get_context().dialect.name
    op.add_column('messages', sa.Column('line', sa.String(32), nullable=False, server_default=''))
    op.execute('UPDATE messages SET line = (SELECT conversations.line FROM conversations'
               ' WHERE conversations.id = messages.conversation_id)')
    if dialect == 'postgresql':
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
        with op.get_context().autocommit_block():
            for name, table, columns, where in PLAIN:
                op.create_index(name, table, columns, postgresql_concurrently=True,
                                postgresql_where=sa.text(where[dialect]) if where else None)
            for name, column in TRIGRAMS:
                op.create_index(name, 'conversations', [column], postgresql_using='gin',
                                postgresql_ops={column: 'gin_trgm_ops'},
                                postgresql_concurrently=True)
        return
    for name, table, columns, where in PLAIN:
        op.create_index(name, table, columns,
                        sqlite_where=sa.text(where[dialect]) if where else None)
    for statement in FTS:
        op.execute(statement)


def downgrade():
    if op.get_context().dialect.name == 'postgresql':
        for name, _ in TRIGRAMS:
            op.drop_index(name, table_name='conversations')
    else:
        for trigger in ('insert', 'update', 'delete'):
            op.execute(f'DROP TRIGGER conversation_search_{trigger}')
        op.execute('DROP TABLE conversation_search')
    for name, table, _, _ in PLAIN:
        op.drop_index(name, table_name=table)
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('line')
