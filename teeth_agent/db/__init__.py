"""The endpoint's state in a database (SQLAlchemy 2, Alembic migrations).

``models``   the tables
``schema``   the URL, the engine, the migrations (upgrade, current, check)
``store``    :class:`~teeth_agent.db.store.Store`: queued writes committed by
             one OS thread, running updates coalesced, final states
             committed before the agent hears back; the reads the reports
             and the endpoint's start-up use
``redact``   what of a task's params may be stored
``evidence`` erasure records from a disk_erase final state

This package sits below ``endpoint`` and ``cmd`` and never imports the
transport or eventlet: the endpoint hands it plain data and callbacks.
"""
