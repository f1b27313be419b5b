"""api keys: who may call the HTTP API

`digest api-key create NAME` makes a key for /api/v1; the table keeps its SHA-256, never the key.
A new table: no existing rows to move.

Revision ID: 3e9f40dae72a
Revises: 5a7d1e0c9b42
Create Date: 2026-11-26 16:32:35.125467
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '3e9f40dae72a'
down_revision = "5a7d1e0c9b42"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_key_key_hash'))
    )
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.create_index('uq_api_key_live_name', ['name'], unique=True, sqlite_where=sa.text('revoked_at IS NULL'), postgresql_where=sa.text('revoked_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_index('uq_api_key_live_name', sqlite_where=sa.text('revoked_at IS NULL'), postgresql_where=sa.text('revoked_at IS NULL'))

    op.drop_table('api_key')
