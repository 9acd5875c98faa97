"""The Merkle log over every evidence entry, its signed checkpoints and their witnesses

- attestations.salt (random, in the entry's Merkle leaf) and attestations.leaf_index
  (its place in the tree, given once by the sequencer), with a unique index and a
  partial index of the entries still to be placed;
- evidence_tree (its size and root, one row) and evidence_tree_nodes (every complete
  subtree's hash, from which proofs are made);
- evidence_checkpoints (the signed notes) and evidence_witness_copies (who has one);
- evidence_verify_runs (when `audit verify` last passed).

An existing log comes in whole, in its original order (by id): each entry gets its
salt and leaf index and the tree is built here. The chains are not touched, so they
verify as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 22:30:00.000000

"""
import secrets

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade():
    op.add_column('attestations', sa.Column('salt', sa.String(32), nullable=True))
    op.add_column('attestations', sa.Column('leaf_index', sa.BigInteger(), nullable=True))
    op.create_table(
        'evidence_tree',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('root', sa.String(64), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_tree')),
    )
    nodes = op.create_table(
        'evidence_tree_nodes',
        sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('position', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('hash', sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint('level', 'position', name=op.f('pk_evidence_tree_nodes')),
    )
    op.create_table(
        'evidence_checkpoints',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('root', sa.String(64), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_checkpoints')),
    )
    op.create_table(
        'evidence_witness_copies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('checkpoint_id', sa.Integer(), nullable=False),
        sa.Column('witness', sa.String(255), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('copy', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['checkpoint_id'], ['evidence_checkpoints.id'],
                                name=op.f('fk_evidence_witness_copies_checkpoint_id_evidence_checkpoints')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_witness_copies')),
    )
    op.create_table(
        'evidence_verify_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('entries', sa.BigInteger(), nullable=False),
        sa.Column('problems', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_verify_runs')),
    )
    op.create_index(op.f('ix_evidence_witness_copies_checkpoint_id'), 'evidence_witness_copies',
                    ['checkpoint_id'], unique=False)
    size, root = _bring_in_the_log(nodes)
    tree = sa.table('evidence_tree', sa.column('id'), sa.column('size'), sa.column('root'),
                    sa.column('updated_at', sa.DateTime(timezone=True)))
    op.execute(tree.insert().values(id=1, size=size, root=root, updated_at=sa.func.now()))
    op.create_index('uq_attestations_leaf_index', 'attestations', ['leaf_index'], unique=True)
    op.create_index('ix_attestations_unsequenced', 'attestations', ['id'],
                    sqlite_where=sa.text('leaf_index IS NULL'),
                    postgresql_where=sa.text('leaf_index IS NULL'))


def _bring_in_the_log(nodes):
    """Every existing entry, by id: a salt, a leaf index, the tree. Its size and root."""
    from bot import evidence, merkle

    conn = op.get_bind()
    # Untyped columns: values exactly as stored, as ``audit verify`` reads them.
    entries = sa.table('attestations', *map(sa.column, ('id', 'conversation_id', 'salt',
                                                       'leaf_index', *evidence.HASHED)))
    conversations = sa.table('conversations', *map(sa.column, ('id', 'line', 'contact')))
    columns = [entries.c[name] for name in evidence.HASHED]
    stmt = (sa.select(entries.c.id, conversations.c.line, conversations.c.contact, *columns)
            .join_from(entries, conversations, conversations.c.id == entries.c.conversation_id)
            .where(entries.c.id > sa.bindparam('after'))
            .order_by(entries.c.id).limit(BATCH))
    place = (entries.update().where(entries.c.id == sa.bindparam('entry_id'))
             .values(salt=sa.bindparam('new_salt'), leaf_index=sa.bindparam('new_index')))
    tree, after = merkle.Frontier(), 0
    while rows := conn.execute(stmt, {'after': after}).all():
        placed = []
        for row in rows:
            salt = secrets.token_hex(16)
            placed.append({'entry_id': row[0], 'new_salt': salt, 'new_index': tree.size})
            tree.append(merkle.leaf_hash(evidence.stored_leaf([*row[1:], salt])))
        conn.execute(place, placed)
        conn.execute(nodes.insert(), [{'level': lv, 'position': p, 'hash': h}
                                      for lv, p, h in tree.added])
        tree.added.clear()
        after = rows[-1][0]
    return tree.size, tree.root().hex()


def downgrade():
    op.drop_index('ix_attestations_unsequenced', table_name='attestations')
    op.drop_index('uq_attestations_leaf_index', table_name='attestations')
    op.drop_index(op.f('ix_evidence_witness_copies_checkpoint_id'),
                  table_name='evidence_witness_copies')
    op.drop_table('evidence_verify_runs')
    op.drop_table('evidence_witness_copies')
    op.drop_table('evidence_checkpoints')
    op.drop_table('evidence_tree_nodes')
    op.drop_table('evidence_tree')
    with op.batch_alter_table('attestations', schema=None) as batch_op:
        batch_op.drop_column('leaf_index')
        batch_op.drop_column('salt')
