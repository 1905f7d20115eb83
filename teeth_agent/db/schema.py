"""The database: its URL, its engine, and its schema version.

``upgrade(url)`` applies the Alembic migrations shipped in
``teeth_agent/db/migrations`` (no ``alembic.ini``: the script location is
the package itself); ``current(url)`` says which revision a database is
at; ``check(engine)`` raises :class:`SchemaBehind` when the database is
older than the code (``serve`` refuses to start then) and
:class:`SchemaAhead` when it was made by a newer teeth-agent.
"""

import logging
import os

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from teeth_agent.conf import database as conf_database

LOG = logging.getLogger(__name__)
# Alembic says "Context impl SQLiteImpl" on every check at INFO; what a
# migration did is logged here instead.
logging.getLogger("alembic").setLevel(logging.WARNING)

#: Where Alembic finds env.py and versions/ (package resource notation).
SCRIPT_LOCATION = "teeth_agent.db:migrations"
#: Every revision in versions/, oldest first; the last is the code's head.
#: Written here so that ``serve`` checks the schema without importing
#: Alembic (a second of start-up on a busy machine); a unit test keeps it
#: equal to the migrations.
REVISIONS = ("0001", "0002", "0003", "0004", "0005")
HEAD = REVISIONS[-1]


class DatabaseError(Exception):
    """The database cannot be used; the message is one sentence."""


class SchemaBehind(DatabaseError):
    """The database lacks migrations the code needs."""


class SchemaAhead(DatabaseError):
    """The database was migrated by a newer teeth-agent."""


def url_from_conf(conf):
    """The database URL: ``[database] connection``, else an SQLite file in
    ``[endpoint] state_dir``; None when both are empty (the endpoint then
    keeps its state in memory only)."""
    url = conf.database.connection
    if url:
        return url
    state_dir = conf.endpoint.state_dir
    if not state_dir:
        return None
    return "sqlite:///" + os.path.join(os.path.abspath(state_dir),
                                       conf_database.DEFAULT_SQLITE_FILE)


def shown_url(url):
    """``url`` as it may be logged: its password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return "<a database URL that cannot be parsed>"


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    # WAL: readers (the operator's reports) never block the writer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url, create=True):
    """An engine for ``url``. An SQLite file is created mode 0600 in a
    directory created mode 0700 (it holds session-token hashes); without
    ``create`` a missing one is a :class:`DatabaseError` (a report never
    makes an empty database). Raises :class:`DatabaseError` for a URL
    that cannot be used."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise DatabaseError("[database] connection is not a database URL "
                            "(expected e.g. sqlite:///path or "
                            "postgresql+psycopg://user@host/name)") from None
    kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:"):
            if create:
                _prepare_sqlite_file(path)
            elif not os.path.exists(path):
                raise DatabaseError(
                    "there is no database at %s (the endpoint has not run "
                    "yet, or [database] connection names another)" % path)
        else:
            # One shared in-memory database for every thread of a test.
            kwargs["poolclass"] = sa.pool.StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError,
            ImportError) as exc:
        raise DatabaseError("cannot use the database %s: %s"
                            % (shown_url(url), exc)) from None
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _prepare_sqlite_file(path):
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise DatabaseError("cannot create the database file %s: %s"
                            % (path, exc.strerror or exc)) from None


def _alembic():
    """Alembic's modules, imported on first use: they take a noticeable
    part of a second, and the commands that never touch the schema
    (``agents``, ``call``) should not pay it."""
    from alembic import command
    from alembic import config
    from alembic import migration
    from alembic import script
    return command, config, migration, script


def _config(connection):
    config = _alembic()[1].Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def head():
    """The newest revision the code knows."""
    scripts = _alembic()[3].ScriptDirectory.from_config(_config(None))
    return scripts.get_current_head()


def revision_of(engine):
    """The revision the database is at (None: never migrated), read from
    Alembic's ``alembic_version`` table.

    Raises :class:`DatabaseError` when the database cannot be reached."""
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            versions = connection.execute(sa.text(
                "SELECT version_num FROM alembic_version")).scalars().all()
            return versions[0] if len(versions) == 1 else None
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError("cannot reach the database %s: %s"
                            % (shown_url(str(engine.url)),
                               first_line(exc))) from None


def upgrade(engine, revision="head"):
    """Apply the migrations up to ``revision``; returns the new revision."""
    before = revision_of(engine)
    try:
        with engine.begin() as connection:
            _alembic()[0].upgrade(_config(connection), revision)
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError("the migration of %s failed: %s"
                            % (shown_url(str(engine.url)),
                               first_line(exc))) from None
    after = revision_of(engine)
    if after != before:
        LOG.info("migrated the database %s from %s to %s",
                 shown_url(str(engine.url)), before or "empty", after)
    return after


def is_empty(engine):
    """Whether the database holds no table at all (a new database)."""
    try:
        return not sa.inspect(engine).get_table_names()
    except sa_exc.SQLAlchemyError as exc:
        raise DatabaseError("cannot reach the database %s: %s"
                            % (shown_url(str(engine.url)),
                               first_line(exc))) from None


def check(engine, create_empty=False):
    """Raise :class:`SchemaBehind` or :class:`SchemaAhead` unless the
    database is at the code's revision. With ``create_empty`` a database
    without any table is migrated instead (the embedded SQLite file of a
    single endpoint: nothing to install, nothing to run first)."""
    wanted = HEAD
    found = revision_of(engine)
    if found == wanted:
        return found
    if found is None and create_empty and is_empty(engine):
        LOG.info("creating the tables of the new database %s",
                 shown_url(str(engine.url)))
        return upgrade(engine)
    if found is not None and found not in REVISIONS:
        raise SchemaAhead(
            "the database %s is at revision %s, which this teeth-agent does "
            "not know (it knows up to %s): it was migrated by a newer "
            "version" % (shown_url(str(engine.url)), found, wanted))
    raise SchemaBehind(
        "the database %s is at revision %s but this teeth-agent needs %s: "
        "run teeth-endpoint db upgrade"
        % (shown_url(str(engine.url)), found or "none (empty)", wanted))


def first_line(exc):
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
