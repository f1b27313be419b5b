"""post: its lead image (URL, width, height) for the email's cards

Three nullable columns. Existing posts have none until their feed is polled again: an unsent post
then picks up its image (sources._store_posts), a sent one is history and keeps none. Nothing is
fetched to fill them in: the feed is the only source of an image and its size.

Revision ID: 5a1e7c3b9d40
Revises: 2e0fe7baca9d
Create Date: 2026-11-26 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5a1e7c3b9d40'
down_revision = "2e0fe7baca9d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('post', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_url', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('image_width', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('image_height', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('post', schema=None) as batch_op:
        batch_op.drop_column('image_height')
        batch_op.drop_column('image_width')
        batch_op.drop_column('image_url')
