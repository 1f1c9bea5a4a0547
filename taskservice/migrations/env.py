"""Alembic's entry point: migrate the database the service is configured for.

The service runs this itself at start (Database.upgrade_schema) on its own
connection; the alembic command line (see alembic.ini) reads DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine, text

from taskservice.models import Base


def run_migrations(connection: Connection) -> None:
    """Apply the pending revisions in one transaction, one process at a time."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        transactional_ddl=True,  # SQLite's DDL is transactional too: all or nothing
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Processes starting together would otherwise all find the schema
            # empty and race to create it. Released at commit. (On SQLite the
            # service begins this transaction IMMEDIATE, which serialises it.)
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('taskservice.schema'))"))
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///instance/taskservice.sqlite3"))
    with engine.connect() as own_connection:
        run_migrations(own_connection)
    engine.dispose()
