"""Alembic's environment: runs the migrations on the connection that
:mod:`teeth_agent.db.schema` hands over in ``config.attributes``."""

from alembic import context

from teeth_agent.db import models


def run_migrations_online():
    connection = context.config.attributes["connection"]
    context.configure(connection=connection,
                      target_metadata=models.Base.metadata,
                      render_as_batch=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported: "
                       "run teeth-endpoint db upgrade against the database")
run_migrations_online()
