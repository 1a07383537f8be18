"""Alembic environment: runs on a connection passed in by homeserver.storage.migrate."""

from __future__ import annotations

from alembic import context

import homeserver.storage.all_schemas  # noqa: F401  (registers every table on metadata)
from homeserver.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `sotto migrate`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
