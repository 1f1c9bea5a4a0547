"""Record which worker slot runs a task; index what the dashboard reads.

The dashboard shows the head of the queue, the latest finished tasks and a
timeline of the last minutes. With these indexes each is a short index scan,
however many tasks the table holds: the queued tasks of one priority in run
order, and the tasks that ran by the time they finished. Both are partial:
they hold only the tasks that are waiting, or that started.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'In Queue'")
RAN = sa.text("start_time IS NOT NULL")


def upgrade() -> None:
    """Add tasks.slot and the dashboard's two indexes."""
    op.add_column("tasks", sa.Column("slot", sa.Integer(), nullable=True))
    op.create_index(
        "ix_tasks_queued_priority_id",
        "tasks",
        ["priority", "id"],
        sqlite_where=QUEUED,
        postgresql_where=QUEUED,
    )
    op.create_index(
        "ix_tasks_ran_finish_time",
        "tasks",
        ["finish_time"],
        sqlite_where=RAN,
        postgresql_where=RAN,
    )


def downgrade() -> None:
    """Drop the indexes and tasks.slot."""
    op.drop_index("ix_tasks_ran_finish_time", table_name="tasks")
    op.drop_index("ix_tasks_queued_priority_id", table_name="tasks")
    # Not batch mode: on SQLite it would rebuild the table and lose its triggers.
    op.drop_column("tasks", "slot")
