"""subscriber: welcomed_at, when the reader's welcome mail was queued

A reader who confirms gets one welcome mail (service/welcome.py); this column records that it was
queued, written in the same transaction as the outbox row, so a second confirmation (or a crash
between the two) never queues another. Existing subscribers keep NULL: nobody is mailed by the
upgrade itself, since a welcome is queued only when a reader confirms (or `digest subscribers add
--welcome` asks for one).

Revision ID: 5b1e0c7a9d42
Revises: 3e9f40dae72a
Create Date: 2026-11-26 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '5b1e0c7a9d42'
down_revision = "3e9f40dae72a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(sa.Column('welcomed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('welcomed_at')
