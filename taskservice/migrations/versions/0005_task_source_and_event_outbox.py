"""Record where a task came from; the outbox of task events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add tasks.source (the tasks there came over HTTP) and create task_events."""
    # Not batch mode: on SQLite it would rebuild the table and lose its triggers.
    op.add_column(
        "tasks",
        sa.Column(
            "source",
            sa.Enum("http", "amqp", name="task_source", native_enum=False, length=16),
            nullable=False,
            server_default="http",
        ),
    )
    op.create_table(
        "task_events",
        sa.Column("id", TASK_ID, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", TASK_ID, nullable=False),
        sa.Column("routing_key", sa.String(length=32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        # Naive UTC, as the tasks' times.
        sa.Column("create_time", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    """Drop task_events and tasks.source."""
    op.drop_table("task_events")
    op.drop_column("tasks", "source")
