"""cadences: editions, their posts, schedule slots and readers per cadence

Each reader picks how often they get the digest (`schedule.cadences`); each cadence has its own
numbered editions and its own schedule slots. A `cadence` column ("" = the main cadence) goes on
subscriber, edition, editionpost and schedule_run; every existing row is the main cadence's, so
the server default "" migrates them. Edition numbers and slots become unique per cadence, the key
of editionpost (a post is in one edition at most) becomes (cadence, post_id) (one edition of each
cadence at most), and schedule_run's key (cadence, slot). A reader's first edition after a change
of cadence records where they stood (delivery.catch_up_from).

The downgrade keeps only the main cadence's editions, slots and deliveries (the older schema
cannot hold another cadence's: their numbers would collide), and every reader goes back to it.

Revision ID: 5c0a9e3d7b21
Revises: 5b1e0c7a9d42
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '5c0a9e3d7b21'
down_revision = "5b1e0c7a9d42"
branch_labels = None
depends_on = None


def _cadence() -> sa.Column:
    return sa.Column('cadence', sa.String(length=50), nullable=False, server_default='')


def upgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(_cadence())
        batch_op.add_column(sa.Column('cadence_changed_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.add_column(_cadence())
        batch_op.drop_constraint('uq_edition_number', type_='unique')
        batch_op.drop_constraint('uq_edition_slot', type_='unique')
        batch_op.create_unique_constraint('uq_edition_cadence_number', ['cadence', 'number'])
        batch_op.create_unique_constraint('uq_edition_cadence_slot', ['cadence', 'slot'])
    with op.batch_alter_table('editionpost', schema=None) as batch_op:
        batch_op.add_column(_cadence())
        batch_op.drop_constraint('pk_editionpost', type_='primary')
        batch_op.create_primary_key('pk_editionpost', ['cadence', 'post_id'])
    with op.batch_alter_table('schedule_run', schema=None) as batch_op:
        batch_op.add_column(_cadence())
        batch_op.drop_constraint('pk_schedule_run', type_='primary')
        batch_op.create_primary_key('pk_schedule_run', ['cadence', 'slot'])
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('catch_up_from', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_delivery_catch_up_from_edition', 'edition', ['catch_up_from'], ['id'])


def downgrade() -> None:
    others = "SELECT id FROM edition WHERE cadence <> ''"
    # A main delivery may have caught up from another cadence's edition (a reader back in the
    # main cadence): the column goes anyway, and its foreign key would refuse the DELETE below.
    op.execute(f"UPDATE delivery SET catch_up_from = NULL WHERE catch_up_from IN ({others})")
    op.execute(f"DELETE FROM schedule_run WHERE cadence <> '' OR edition_id IN ({others})")
    op.execute(f"DELETE FROM delivery WHERE edition_id IN ({others})")
    op.execute("DELETE FROM editionpost WHERE cadence <> ''")
    op.execute("DELETE FROM edition WHERE cadence <> ''")
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_constraint('fk_delivery_catch_up_from_edition', type_='foreignkey')
        batch_op.drop_column('catch_up_from')
    with op.batch_alter_table('schedule_run', schema=None) as batch_op:
        batch_op.drop_constraint('pk_schedule_run', type_='primary')
        batch_op.create_primary_key('pk_schedule_run', ['slot'])
        batch_op.drop_column('cadence')
    with op.batch_alter_table('editionpost', schema=None) as batch_op:
        batch_op.drop_constraint('pk_editionpost', type_='primary')
        batch_op.create_primary_key('pk_editionpost', ['post_id'])
        batch_op.drop_column('cadence')
    with op.batch_alter_table('edition', schema=None) as batch_op:
        batch_op.drop_constraint('uq_edition_cadence_slot', type_='unique')
        batch_op.drop_constraint('uq_edition_cadence_number', type_='unique')
        batch_op.create_unique_constraint('uq_edition_number', ['number'])
        batch_op.create_unique_constraint('uq_edition_slot', ['slot'])
        batch_op.drop_column('cadence')
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('cadence_changed_at')
        batch_op.drop_column('cadence')
