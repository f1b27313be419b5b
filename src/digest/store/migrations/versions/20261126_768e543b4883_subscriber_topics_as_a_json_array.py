"""subscriber: topics as a JSON array instead of comma-separated categories

A category name may hold a comma ("News, Events"): stored comma-separated, such a choice read back
as two phantom topics and the reader got nothing. The new column `topics` holds a JSON array of
names, sorted and without duplicates (models.topics_text); NULL still means every category.

Existing choices are converted as the old code read them (split on ",", pieces stripped), except
that a run of pieces which together make a category some post carries is taken back as that one
name: the old code wrote the names it was given joined with ",", so "News, Events" can only have
been that category. The downgrade joins the names with "," again (a name with a comma is then
split as before: the old format cannot hold it).

Revision ID: 768e543b4883
Revises: 2d67f755f3aa
Create Date: 2026-11-26 13:48:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '768e543b4883'
down_revision = '2d67f755f3aa'
branch_labels = None
depends_on = None

BATCH = 5000  # subscribers read and written at a time: memory stays flat on a large list


def upgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(sa.Column('topics', sa.Text(), nullable=True))
    conn = op.get_bind()
    known = {c for c in conn.execute(sa.text("SELECT DISTINCT category FROM post")).scalars() if c}
    _convert(conn, "categories", "topics", lambda stored: _topics_text(split_old(stored, known)))
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('categories')


def downgrade() -> None:
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.add_column(sa.Column('categories', sa.Text(), nullable=True))
    _convert(op.get_bind(), "topics", "categories", lambda stored: ",".join(json.loads(stored)))
    with op.batch_alter_table('subscriber', schema=None) as batch_op:
        batch_op.drop_column('topics')


def split_old(stored: str, known: set[str]) -> list[str]:
    """The names a comma-separated choice meant (see the module's docstring)."""
    parts = stored.split(",")
    names: list[str] = []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i + 1, -1):  # the longest run of two or more pieces first
            joined = ",".join(parts[i:j]).strip()
            if joined in known:
                names.append(joined)
                i = j
                break
        else:
            if parts[i].strip():
                names.append(parts[i].strip())
            i += 1
    return names


def _topics_text(names: list[str]) -> str:
    # models.topics_text as of this revision (a migration must not change with the models)
    return json.dumps(sorted(set(names)), ensure_ascii=False, separators=(",", ":"))


def _convert(conn, old: str, new: str, convert) -> None:
    """new = convert(old) for every subscriber whose `old` is set, BATCH rows at a time."""
    read = sa.text(f"SELECT id, {old} FROM subscriber WHERE id > :after AND {old} IS NOT NULL ORDER BY id LIMIT :n")
    write = sa.text(f"UPDATE subscriber SET {new} = :value WHERE id = :id")
    after = 0
    while rows := conn.execute(read, {"after": after, "n": BATCH}).all():
        conn.execute(write, [{"id": i, "value": convert(stored)} for i, stored in rows])
        after = rows[-1][0]
