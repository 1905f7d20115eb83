"""Alembic migrations of the endpoint's database, shipped in the package
(found through :data:`teeth_agent.db.schema.SCRIPT_LOCATION`, so
operators need no ``alembic.ini``)."""
