"""Count changes of status as rows appended, not updates of shared rows (PostgreSQL).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

The triggers of 0002 update one task_counts row per status and priority, so
on PostgreSQL every claim, finish and create of the same kind locks the same
rows until it commits: replicas take turns on them, and one paused inside a
transaction stops all the others. From here on PostgreSQL's trigger appends
the change to task_count_changes instead (an insert locks nothing another
transaction waits for); a count is task_counts plus its changes, and a
replica folds the changes into task_counts every second. SQLite has one
writer at a time and keeps the triggers of 0002: its changes table stays
empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITIES = ("high", "medium", "low")
STATUSES = ("In Queue", "Run", "Completed", "Failed", "Cancelled")

APPENDING_TRIGGER = """
    CREATE OR REPLACE FUNCTION tasks_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.priority = NEW.priority THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO task_count_changes (status, priority, delta)
            VALUES (OLD.status, OLD.priority, -1);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO task_count_changes (status, priority, delta)
            VALUES (NEW.status, NEW.priority, 1);
        END IF;
        RETURN NULL;
    END
    $$
"""

UPDATING_TRIGGER = """
    CREATE OR REPLACE FUNCTION tasks_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.priority = NEW.priority THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE task_counts SET count = count - 1
            WHERE status = OLD.status AND priority = OLD.priority;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            UPDATE task_counts SET count = count + 1
            WHERE status = NEW.status AND priority = NEW.priority;
        END IF;
        RETURN NULL;
    END
    $$
"""

FOLD = """
    WITH folded AS (DELETE FROM task_count_changes RETURNING status, priority, delta)
    UPDATE task_counts SET count = task_counts.count + sums.delta
    FROM (SELECT status, priority, sum(delta) AS delta FROM folded GROUP BY status, priority)
        AS sums
    WHERE task_counts.status = sums.status AND task_counts.priority = sums.priority
"""


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    """Create task_count_changes; on PostgreSQL, append to it instead of updating counts."""
    op.create_table(
        "task_count_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("status", _enum(STATUSES, "task_count_change_status"), nullable=False),
        sa.Column("priority", _enum(PRIORITIES, "task_count_change_priority"), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPENDING_TRIGGER)


def downgrade() -> None:
    """Fold the changes back into the counts, restore the updating trigger, drop the table."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPDATING_TRIGGER)
        op.execute(FOLD)
    op.drop_table("task_count_changes")
