"""admin: index-only counts for departures per week and bounces per edition; failures in id order

Measured with bench/admin.py (1,000,000 subscribers, 200 editions, PostgreSQL; docs/admin.md):
- the departures of the last 26 weeks are counted for subscribers still unsubscribed, so the
  index on unsubscribed_at alone sent PostgreSQL to the table for each of ~50,000 rows (a bitmap
  heap scan, ~100 ms); with status in the index it is an index-only scan, like the joins' and
  bounces' indexes;
- each edition's bounces (failed deliveries whose last error is a recorded bounce) were read from
  the table through the undelivered index (~27,000 rows for 10 editions, ~55 ms); a partial index
  of bounces alone answers the count by itself;
- an edition's page lists its failed deliveries 50 at a time in id order (keyset: id > after);
  with the undelivered index on (edition_id, status) PostgreSQL walked the primary key instead,
  past every older edition's rows (1.6 M rows, ~220 ms for the newest edition); with id as its
  third column the index gives a page in order by itself (and still counts by status).

Revision ID: 7c3e9a41d2b8
Revises: 5c0a9e3d7b21
Create Date: 2026-11-26 17:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '7c3e9a41d2b8'
down_revision = "5c0a9e3d7b21"
branch_labels = None
depends_on = None

BOUNCED = "status = 'failed' AND last_error LIKE 'bounced (%'"
UNSENT = "status <> 'sent'"


def upgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriber_unsubscribed')
        batch_op.create_index('ix_subscriber_unsubscribed', ['unsubscribed_at', 'status'], unique=False)
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_bounced', ['edition_id'], unique=False,
                              sqlite_where=sa.text(BOUNCED), postgresql_where=sa.text(BOUNCED))
        batch_op.drop_index('ix_delivery_unsent', sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
        batch_op.create_index('ix_delivery_unsent', ['edition_id', 'status', 'id'], unique=False,
                              sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_unsent', sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
        batch_op.create_index('ix_delivery_unsent', ['edition_id', 'status'], unique=False,
                              sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
        batch_op.drop_index('ix_delivery_bounced', sqlite_where=sa.text(BOUNCED), postgresql_where=sa.text(BOUNCED))
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriber_unsubscribed')
        batch_op.create_index('ix_subscriber_unsubscribed', ['unsubscribed_at'], unique=False)
