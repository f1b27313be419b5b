"""delivery: partial indexes for claiming and releasing.

claim() scans an edition's pending deliveries in id order; with sent ones out of the index that
stays one short range scan however far a million-row edition has got. Held claims are few, so
releasing and taking over claims reads a tiny index instead of every pending row.

Revision ID: 468d1c1d1661
Revises: 0001
Create Date: 2026-11-26 02:24:52.234853
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '468d1c1d1661'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_claim'))
        batch_op.create_index('ix_delivery_claimed_by', ['claimed_by'], unique=False, sqlite_where=sa.text('claimed_by IS NOT NULL'), postgresql_where=sa.text('claimed_by IS NOT NULL'))
        batch_op.create_index('ix_delivery_pending', ['edition_id', 'id'], unique=False, sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_pending', sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))
        batch_op.drop_index('ix_delivery_claimed_by', sqlite_where=sa.text('claimed_by IS NOT NULL'), postgresql_where=sa.text('claimed_by IS NOT NULL'))
        batch_op.create_index(batch_op.f('ix_delivery_claim'), ['edition_id', 'status', 'claimed_until'], unique=False)
