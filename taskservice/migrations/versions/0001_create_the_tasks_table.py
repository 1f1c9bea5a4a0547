"""Create the tasks table.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITIES = ("high", "medium", "low")
STATUSES = ("In Queue", "Run", "Completed", "Failed", "Cancelled")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    """Create the tasks table and its indexes."""
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("priority", _enum(PRIORITIES, "task_priority"), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("status", _enum(STATUSES, "task_status"), nullable=False),
        # Naive UTC; the application reads them back as aware (models.UTCDateTime).
        sa.Column("create_time", sa.DateTime(), nullable=False),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("exec_time", sa.Float(), nullable=True),
        sa.Column("finish_time", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tasks_status_id", "tasks", ["status", "id"])
    op.create_index("ix_tasks_priority_id", "tasks", ["priority", "id"])


def downgrade() -> None:
    """Drop the tasks table."""
    op.drop_index("ix_tasks_priority_id", table_name="tasks")
    op.drop_index("ix_tasks_status_id", table_name="tasks")
    op.drop_table("tasks")
