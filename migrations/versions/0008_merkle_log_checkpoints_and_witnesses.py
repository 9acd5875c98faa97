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
    op.create_table(
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
    op.create_index('uq_attestations_leaf_index', 'attestations', ['leaf_index'], unique=True)
    op.create_index('ix_attestations_unsequenced', 'attestations', ['id'],
                    sqlite_where=sa.text('leaf_index IS NULL'),
                    postgresql_where=sa.text('leaf_index IS NULL'))
    _bring_in_the_log()


def _bring_in_the_log():
    """Every existing entry gets its salt; then the sequencer places them all, by id."""
    from bot import ledger, merkle

    conn = op.get_bind()
    tree = sa.table('evidence_tree', sa.column('id'), sa.column('size'), sa.column('root'),
                    sa.column('updated_at', sa.DateTime(timezone=True)))
    conn.execute(tree.insert().values(id=1, size=0, root=merkle.EMPTY_ROOT.hex(),
                                      updated_at=sa.func.now()))
    entries = sa.table('attestations', sa.column('id'), sa.column('salt'))
    after = 0
    while ids := conn.execute(sa.select(entries.c.id).where(entries.c.id > after)
                              .order_by(entries.c.id).limit(BATCH)).scalars().all():
        salted = [{'entry_id': i, 'new_salt': secrets.token_hex(16)} for i in ids]
        conn.execute(entries.update().where(entries.c.id == sa.bindparam('entry_id'))
                     .values(salt=sa.bindparam('new_salt')), salted)
        after = ids[-1]
    while ledger.sequence_once(conn, BATCH):
        pass


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
