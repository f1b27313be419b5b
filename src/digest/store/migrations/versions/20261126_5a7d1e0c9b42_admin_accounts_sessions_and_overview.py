"""admin: accounts, sessions and "send now" requests; what the overview counts from

For /admin in `digest serve`:
- `admin`, `admin_session`, `send_request`: new tables, no rows to move.
- source.last_polled_at: the last fetch tried (last_fetched_at is only ever written on success, so
  it is the last success); existing rows start with the last success.
- subscriber.bounced_at: when a subscriber became bounced or suspended; existing ones get the date
  of the newest edition whose delivery to them failed, else the day they signed up.
- edition.recipients: the deliveries it was built with, counted once here for existing editions.
- Indexes for the overview's counts at a million subscribers: joins, departures and bounces per
  week (subscriber), and each edition's not-yet-delivered deliveries (delivery, partial).

Revision ID: 5a7d1e0c9b42
Revises: 5a1e7c3b9d40
Create Date: 2026-11-26 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5a7d1e0c9b42'
down_revision = "5a1e7c3b9d40"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin')),
    sa.UniqueConstraint('email', name=op.f('uq_admin_email'))
    )
    op.create_table('admin_session',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('admin_id', sa.Integer(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['admin_id'], ['admin.id'], name=op.f('fk_admin_session_admin_id_admin')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_session'))
    )
    with op.batch_alter_table('admin_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admin_session_admin_id'), ['admin_id'], unique=False)
    op.create_table('send_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('requested_by', sa.String(length=320), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('edition_number', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_send_request'))
    )

    with op.batch_alter_table('source', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE source SET last_polled_at = last_fetched_at")

    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounced_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE subscriber SET bounced_at = COALESCE("
        "(SELECT MAX(e.created_at) FROM delivery d JOIN edition e ON e.id = d.edition_id"
        " WHERE d.subscriber_id = subscriber.id AND d.status = 'failed'), created_at)"
        " WHERE status IN ('bounced', 'suspended')"
    )
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.create_index('ix_subscriber_confirmed', ['confirmed_at', 'status'], unique=False)
        batch_op.create_index('ix_subscriber_unsubscribed', ['unsubscribed_at'], unique=False)
        batch_op.create_index('ix_subscriber_bounced', ['bounced_at', 'status'], unique=False)

    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recipients', sa.Integer(), nullable=True))
    op.execute("UPDATE edition SET recipients = (SELECT COUNT(*) FROM delivery d WHERE d.edition_id = edition.id)")

    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_unsent', ['edition_id', 'status'], unique=False,
                              sqlite_where=sa.text("status <> 'sent'"), postgresql_where=sa.text("status <> 'sent'"))


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_unsent', sqlite_where=sa.text("status <> 'sent'"),
                            postgresql_where=sa.text("status <> 'sent'"))
    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.drop_column('recipients')
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriber_bounced')
        batch_op.drop_index('ix_subscriber_unsubscribed')
        batch_op.drop_index('ix_subscriber_confirmed')
        batch_op.drop_column('bounced_at')
    with op.batch_alter_table('source', schema=None) as batch_op:
        batch_op.drop_column('last_polled_at')
    op.drop_table('send_request')
    with op.batch_alter_table('admin_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admin_session_admin_id'))
    op.drop_table('admin_session')
    op.drop_table('admin')
