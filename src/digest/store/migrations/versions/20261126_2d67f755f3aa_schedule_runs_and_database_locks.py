"""schedule runs and database locks: the scheduler's exactly-once record per slot, and named locks

Revision ID: 2d67f755f3aa
Revises: 468d1c1d1661
Create Date: 2026-11-26 03:42:10.011896
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '2d67f755f3aa'
down_revision = '468d1c1d1661'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('app_lock',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('holder', sa.String(length=100), nullable=True),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_app_lock'))
    )
    op.create_table('schedule_run',
    sa.Column('slot', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ran_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('edition_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['edition_id'], ['edition.id'], name=op.f('fk_schedule_run_edition_id_edition')),
    sa.PrimaryKeyConstraint('slot', name=op.f('pk_schedule_run'))
    )


def downgrade() -> None:
    op.drop_table('schedule_run')
    op.drop_table('app_lock')
