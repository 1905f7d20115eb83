"""[database] options: where ``teeth-endpoint`` keeps its state.

The option name ``connection`` is oslo.db's, so a deployment's habits and
tooling carry over; oslo.db itself is not used (the endpoint needs one
SQLAlchemy engine, not its session and retry machinery).
"""

from oslo_config import cfg

from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "database", title="Database",
    help="The database in which the endpoint keeps agents, task history, "
         "agent logs, erasure records and session-token hashes.")

#: The SQLite file under ``[endpoint] state_dir`` used when ``connection``
#: is empty.
DEFAULT_SQLITE_FILE = "endpoint.sqlite"

opts = [
    cfg.StrOpt(
        "connection",
        default="",
        secret=True,
        help="The SQLAlchemy URL of the database. Empty means an SQLite "
             "file named endpoint.sqlite in [endpoint] state_dir, which "
             "needs nothing installed; a fleet of several endpoint "
             "processes shares one PostgreSQL database, for example "
             "postgresql+psycopg://teeth:PASSWORD@db.example.com/teeth. "
             "Run teeth-endpoint db upgrade before the first serve and "
             "after every upgrade of teeth-agent."),
    cfg.FloatOpt(
        "flush_interval",
        default=5.0,
        min=0.01,
        max=60.0,
        help="Seconds during which running task updates (and log records, "
             "connects and disconnects) are gathered before they are "
             "written in one transaction, the latest update of each task "
             "winning: agents report a running task every few seconds, so "
             "a longer interval writes fewer rows. Final task states, "
             "erasure records, new session tokens and task commands are "
             "written at once, before they are acknowledged."),
    cfg.IntOpt(
        "batch_limit",
        default=5000,
        min=1,
        help="The most queued changes written in one transaction; more "
             "are written in the next one. Running task updates are not "
             "counted: only the latest of each task is kept, and all of "
             "them go with the next transaction."),
    cfg.IntOpt(
        "task_retention",
        default=90,
        min=0,
        help="Days a finished task (complete or error) and its state "
             "changes are kept after it ended; older ones are deleted by "
             "each serve process, at most 1000 tasks per transaction, "
             "about once a minute. 0 keeps them forever. Running tasks, "
             "tasks that were only sent and erasure records are never "
             "deleted by it; teeth-endpoint db prune does the same on "
             "demand."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
