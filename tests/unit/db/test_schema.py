"""Migrations, the schema check and the database URL."""

import os
import shutil
import stat
import tempfile

from alembic import autogenerate
from alembic import migration
import sqlalchemy as sa

from teeth_agent.db import models
from teeth_agent.db import schema
from tests import base


class TestSchema(base.TestCase):
    def setUp(self):
        super().setUp()
        self.engine = schema.make_engine("sqlite://")
        self.addCleanup(self.engine.dispose)

    def test_migrations_build_exactly_the_models(self):
        schema.upgrade(self.engine)
        with self.engine.connect() as connection:
            diff = autogenerate.compare_metadata(
                migration.MigrationContext.configure(connection),
                models.Base.metadata)
        self.assertEqual([], diff)

    def test_the_written_revisions_are_the_migrations(self):
        from alembic import config
        from alembic import script
        alembic_config = config.Config()
        alembic_config.set_main_option("script_location",
                                       schema.SCRIPT_LOCATION)
        scripts = script.ScriptDirectory.from_config(alembic_config)
        self.assertEqual(
            list(schema.REVISIONS),
            [s.revision for s in reversed(list(scripts.walk_revisions()))])
        self.assertEqual(scripts.get_current_head(), schema.HEAD)
        self.assertEqual(schema.HEAD, schema.head())

    def test_an_empty_database_is_behind(self):
        with self.assertRaises(schema.SchemaBehind) as caught:
            schema.check(self.engine)
        self.assertIn("run teeth-endpoint db upgrade", str(caught.exception))
        self.assertIsNone(schema.revision_of(self.engine))

    def test_create_empty_migrates_a_new_database_only(self):
        self.assertEqual(schema.head(),
                         schema.check(self.engine, create_empty=True))
        other = schema.make_engine("sqlite://")
        self.addCleanup(other.dispose)
        with other.begin() as connection:
            connection.execute(sa.text("CREATE TABLE unrelated (x int)"))
        # Tables but no revision: not ours to migrate silently.
        self.assertRaises(schema.SchemaBehind, schema.check, other,
                          create_empty=True)

    def test_a_newer_revision_is_ahead(self):
        schema.upgrade(self.engine)
        with self.engine.begin() as connection:
            connection.execute(sa.text(
                "UPDATE alembic_version SET version_num = 'f00d'"))
        with self.assertRaises(schema.SchemaAhead) as caught:
            schema.check(self.engine)
        self.assertIn("newer version", str(caught.exception))

    def test_upgrade_is_idempotent(self):
        self.assertEqual(schema.head(), schema.upgrade(self.engine))
        self.assertEqual(schema.head(), schema.upgrade(self.engine))
        self.assertEqual(schema.head(), schema.check(self.engine))


class TestURL(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def test_default_is_an_sqlite_file_in_state_dir(self):
        conf = base.make_conf(**{"endpoint.state_dir": self.directory})
        self.assertEqual(
            "sqlite:///" + os.path.join(self.directory, "endpoint.sqlite"),
            schema.url_from_conf(conf))

    def test_connection_wins_and_both_empty_is_memory_only(self):
        conf = base.make_conf(**{
            "endpoint.state_dir": self.directory,
            "database.connection": "postgresql+psycopg://u:pw@db/teeth"})
        self.assertEqual("postgresql+psycopg://u:pw@db/teeth",
                         schema.url_from_conf(conf))
        conf = base.make_conf(**{"endpoint.state_dir": ""})
        self.assertIsNone(schema.url_from_conf(conf))

    def test_the_password_is_never_shown(self):
        shown = schema.shown_url("postgresql+psycopg://u:hunter2@db/teeth")
        self.assertNotIn("hunter2", shown)
        self.assertIn("db/teeth", shown)

    def test_bad_urls_are_one_sentence_errors(self):
        for url in ("not a url", "nosuchdialect://x/y"):
            with self.assertRaises(schema.DatabaseError) as caught:
                schema.make_engine(url)
            self.assertNotIn("\n", str(caught.exception))

    def test_sqlite_file_is_private_and_not_made_by_reports(self):
        path = os.path.join(self.directory, "sub", "endpoint.sqlite")
        self.assertRaises(schema.DatabaseError, schema.make_engine,
                          "sqlite:///" + path, create=False)
        self.assertFalse(os.path.exists(path))
        schema.make_engine("sqlite:///" + path).dispose()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        self.assertEqual(0o700, stat.S_IMODE(
            os.stat(os.path.dirname(path)).st_mode))
