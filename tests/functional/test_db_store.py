"""The endpoint's state in a database, against SQLite and a real
PostgreSQL server (a throwaway cluster, :mod:`tests.functional.postgres`).

Real ``teeth-endpoint`` and ``teeth-agent`` processes on 127.0.0.1. Each
test runs once per backend (the ``Sqlite``/``Postgres`` classes at the
end); the PostgreSQL ones skip when the server binaries are missing.
"""

from importlib import metadata
import json
import os
import re
import sqlite3
import threading
import time
import unittest

from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from tests import base
from tests.functional import faults_endpoint
from tests.functional import faults_throttle
from tests.functional import harness
from tests.functional import loopdev
from tests.functional import postgres

AGENT_ID = "db-agent"
SECRET = "S3CRET-SIG-VALUE"
TASK_TIMEOUT = 180.0
SLOW = 512 * 1024  # bytes per second while the endpoint restarts

FAST_AGENT = harness.merge_sections(harness.PLAINTEXT_AGENT, {
    "DEFAULT": {"agent_id": AGENT_ID,
                "reconnect_initial_delay": 0.05,
                "reconnect_max_delay": 0.3,
                "task_status_interval": 0.05}})


class DatabaseCase:
    """The tests; a subclass says which database (:meth:`make_database`).
    """

    def setUp(self):
        super().setUp()
        self.work = harness.make_workdir(self)
        self.url = self.make_database()
        self.db_section = {"database": {"connection": self.url,
                                        "flush_interval": 0.5}}

    # -- helpers ----------------------------------------------------------

    def cli(self, *args):
        """``teeth-endpoint ARGS`` with this database; no server needed."""
        path = os.path.join(self.work, "cli.conf")
        if not os.path.exists(path):
            harness.write_config(path, harness.endpoint_sections(
                os.path.join(self.work, "cli", "control.sock"),
                self.db_section))
        return harness.run_command(harness.endpoint_cli_argv(path, *args),
                                   timeout=120)

    def json_lines(self, *args):
        result = self.cli(*(args + ("--json",)))
        self.assertEqual(0, result.returncode, result.stderr)
        return harness.parse_json_lines(result.stdout)

    def upgrade_here(self):
        """Migrate from this process (the CLI's own test is the schema
        one; a CLI start costs seconds on a busy machine)."""
        engine = schema.make_engine(self.url)
        self.addCleanup(engine.dispose)
        schema.upgrade(engine)

    def reader(self):
        reader = store_mod.Store.from_url(self.url)
        self.addCleanup(reader.engine.dispose)
        return reader

    def upgrade(self):
        result = self.cli("db", "upgrade")
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn("revision %s" % schema.head(), result.stdout)

    def db_task(self, task_id, states):
        """Wait until the database holds the task in one of ``states``.
        """
        reader = store_mod.Store.from_url(self.url)
        self.addCleanup(reader.engine.dispose)

        def stored():
            for task in reader.tasks(agent_id=AGENT_ID):
                if task["task_id"] == task_id and task["state"] in states:
                    return task
            return None
        return harness.wait_until(stored, TASK_TIMEOUT,
                                  what="task %s stored in %s"
                                  % (task_id, "/".join(states)))

    def start_endpoint(self):
        return faults_endpoint.RestartableEndpoint(
            self, harness.merge_sections(harness.PLAINTEXT_ENDPOINT,
                                         self.db_section))

    # -- schema -----------------------------------------------------------

    def test_migrations_from_empty_and_the_schema_check_at_serve(self):
        result = self.cli("db", "current")
        self.assertEqual(1, result.returncode, result.stdout)
        self.assertTrue("none (empty)" in result.stdout
                        or "there is no database" in result.stdout,
                        result.stdout)
        engine = schema.make_engine(self.url)
        self.addCleanup(engine.dispose)
        # A database one migration behind the code is refused at start.
        schema.upgrade(engine, "0001")
        endpoint = harness.EndpointProcess(
            self.work, harness.merge_sections(harness.PLAINTEXT_ENDPOINT,
                                              self.db_section))
        self.addCleanup(endpoint.stop)
        self.assertEqual(2, endpoint.wait_exit())
        refusals = [line for line in endpoint.output().splitlines()
                    if line.startswith("teeth-endpoint: ")]
        self.assertEqual(1, len(refusals), endpoint.output())
        self.assertIn("is at revision 0001", refusals[0])
        self.assertIn("run teeth-endpoint db upgrade", refusals[0])
        self.assertNotIn("Traceback", endpoint.output())
        self.upgrade()
        started = self.start_endpoint()
        self.assertIsNotNone(started.current.port)

    # -- what is stored -----------------------------------------------------

    def test_secrets_redacted_and_running_updates_coalesced(self):
        self.upgrade_here()
        self.db_section["database"]["flush_interval"] = 2.0
        endpoint = self.start_endpoint()
        harness.start_agent(self, [endpoint.address], harness.merge_sections(
            FAST_AGENT, {
                "DEFAULT": {"enabled_extensions": ["testing", "standbye"]},
                "standbye": {
                    "image_cache_dir": os.path.join(self.work, "cache"),
                    "work_dir": os.path.join(self.work, "standbye"),
                    "download_retries": 0}}))
        endpoint.wait_agent(AGENT_ID)
        refused, port = harness.refused_port()
        self.addCleanup(refused.close)
        url = "http://user:%s@127.0.0.1:%d/i.raw?temp_url_sig=%s" % (
            SECRET, port, SECRET)
        response = endpoint.ask(lambda client: client.call(
            AGENT_ID, "standbye.cache_images", {
                "task_id": "c1",
                "images": [{"id": "0b7e2f0e-5a77-4bd6-9b0e-9f6c53a1f0e2",
                            "urls": [url],
                            "hashes": {"sha256": "0" * 64}}]}))
        self.assertIn("result", response, response)
        endpoint.ask(lambda client: client.call(
            AGENT_ID, "testing.sleep",
            {"task_id": "s1", "seconds": 4, "steps": 200}))
        self.assertEqual("error", self.db_task("c1", ("complete", "error"))[
            "state"])
        final = self.db_task("s1", ("complete",))
        self.assertEqual({"slept": 4, "steps": 200}, final["result"])
        tasks = {task["task_id"]: task
                 for task in self.json_lines("tasks", AGENT_ID)}
        self.assertIn("temp_url_sig=***", json.dumps(tasks["c1"]["params"]))
        self.assertNotIn(SECRET, self.dump_database())
        self.assertEqual(["sent", "running", "complete"],
                         [event["state"] for event in tasks["s1"]["events"]])
        writes = self.task_row_writes()
        if writes is not None:
            # About 80 running updates were sent (every 0.05 s for 4 s);
            # gathered for 2 s, a handful of writes carry them.
            self.assertLess(writes, 20)

    def test_running_rows_through_the_dbapi_executemany(self):
        # The running updates of tasks the writer already wrote go to the
        # database's own driver in one executemany (sqlite3's qmark,
        # psycopg's named parameters); a row another process ended is
        # counted as not updated and left alone.
        self.upgrade_here()
        writers = []
        for _ in range(2):
            writer = store_mod.Store.from_url(self.url, flush_interval=60.0)
            writer.open()
            self.addCleanup(writer.close)
            writers.append(writer)
        first, second = writers
        agents = ["agent-%03d" % index for index in range(30)]
        for percent in (1.0, 2.0, 3.0):
            for agent in agents:
                first.task_status(agent, {"task_id": "t", "state": "running",
                                          "percent": percent,
                                          "eta": 100 - percent})
            self.assertTrue(first.flush(30))
        ended = self.final_in(second, agents[0], {
            "task_id": "t", "state": "complete", "result": {}})
        self.assertIsNone(ended)
        for agent in agents:
            first.task_status(agent, {"task_id": "t", "state": "running",
                                      "percent": 4.0, "eta": 96.0})
        self.assertTrue(first.flush(30))
        rows = {task["agent_id"]: (task["state"], task["percent"],
                                   task["eta"])
                for task in self.reader().tasks()}
        self.assertEqual(("complete", 100.0, None), rows.pop(agents[0]))
        self.assertEqual({("running", 4.0, 96.0)}, set(rows.values()))
        self.assertEqual(29, len(rows))
        # Updated by row id (the writer's cache), but for the ended one:
        # its update counted no row, so it was looked up and dropped.
        self.assertEqual({(agent, "t") for agent in agents[1:]},
                         set(first._running))

    def final_in(self, store, agent_id, status):
        outcome = []
        done = threading.Event()

        def committed(error):
            outcome.append(error)
            done.set()
        store.task_status(agent_id, status, committed)
        self.assertTrue(done.wait(30))
        return outcome[0]

    # -- retention ----------------------------------------------------------

    def history(self, days_ago, prefix):
        """Write, as if ``days_ago`` days ago, an erase that completed
        (two erasure records), a task that failed, one still running and
        one only sent."""
        offset = days_ago * store_mod.DAY
        store = store_mod.Store.from_url(
            self.url, flush_interval=0.05,
            clock=lambda: time.time() - offset)
        store.open()
        try:
            store.agent_connected(AGENT_ID, {"agent_version": "1"})
            store.task_sent(AGENT_ID, prefix + "-erase", "decom.disk_erase",
                            {})
            store.task_status(AGENT_ID, {
                "task_id": prefix + "-erase", "state": "complete",
                "method": "decom.disk_erase",
                "result": {"devices": [
                    {"path": path, "outcome": "erased", "serial": path[-3:],
                     "method": "overwrite", "verified": True}
                    for path in ("/dev/sda", "/dev/sdb")]}})
            store.task_status(AGENT_ID, {"task_id": prefix + "-failed",
                                         "state": "error", "msg": "no"})
            store.task_status(AGENT_ID, {"task_id": prefix + "-running",
                                         "state": "running"})
            store.task_sent(AGENT_ID, prefix + "-sent", "decom.qc", {})
            store.agent_disconnected(AGENT_ID)
            store.flush(60)
        finally:
            store.close()

    def task_ids(self):
        return sorted(task["task_id"] for task in self.reader().tasks())

    def test_retention_at_serve_and_db_prune(self):
        self.upgrade_here()
        self.history(30, "old")
        self.history(0, "new")
        self.assertEqual(8, len(self.task_ids()))
        evidence = self.reader().erasures()
        self.assertEqual(4, len(evidence))
        self.db_section["database"]["task_retention"] = 20
        endpoint = self.start_endpoint()
        kept = ["new-erase", "new-failed", "new-running", "new-sent",
                "old-running", "old-sent"]
        # The first pass comes right after the start.
        harness.wait_until(lambda: self.task_ids() == kept, 60,
                           what="the old finished tasks pruned")
        self.assertEqual(evidence, self.reader().erasures())
        self.assertEqual([], self.reader().task_events(AGENT_ID,
                                                       "old-erase"))
        harness.wait_until(
            lambda: "deleted 2 finished tasks and their 3 events" in
            endpoint.current.output(), 30, what="the pruning logged")
        # On demand, next to the running server: tasks of 10 days ago,
        # which its retention (20) keeps, with --older-than 5.
        self.history(10, "mid")
        result = self.cli("db", "prune", "--older-than", "5", "--dry-run")
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn("would delete 2 finished tasks (complete 1, error 1) "
                      "and their 3 events", result.stdout)
        self.assertEqual(10, len(self.task_ids()))
        result = self.cli("db", "prune", "--older-than", "5")
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn("deleted 2 finished tasks (complete 1, error 1) and "
                      "their 3 events", result.stdout)
        self.assertIn("erasure records are kept", result.stdout)
        self.assertEqual(sorted(kept + ["mid-running", "mid-sent"]),
                         self.task_ids())
        self.assertEqual(6, len(self.reader().erasures()))

    def test_concurrent_pruning_deletes_each_task_once(self):
        self.upgrade_here()
        for index in range(4):
            self.history(30, "h%d" % index)
        pruners = [store_mod.Store.from_url(self.url, prune_chunk=1)
                   for _ in range(3)]
        results, errors = base.prune_at_once(pruners, 20, 120)
        self.assertEqual([], errors)
        self.assertEqual(8, sum(result.tasks for result in results))
        self.assertEqual(12, sum(result.events for result in results))
        self.assertEqual(8, len(self.task_ids()))
        self.assertEqual(8, len(self.reader().erasures()))

    # -- restart ------------------------------------------------------------

    def test_endpoint_restarted_mid_erase_keeps_history_and_evidence(self):
        loopdev.require_root()
        installed = {entry.name for entry in metadata.entry_points(
            group="teeth_agent.extensions")}
        if "decom" not in installed:
            self.skipTest("decom is not installed")
        if not faults_throttle.available():
            self.skipTest("no cgroup v1 blkio throttling on this machine")
        loops = loopdev.LoopDevices()
        self.addCleanup(loops.cleanup)
        device = loops.create(16 * 1024 * 1024, fill="random")
        self.upgrade_here()
        endpoint = self.start_endpoint()
        agent = harness.start_agent(
            self, [endpoint.address], harness.merge_sections(FAST_AGENT, {
                "DEFAULT": {"enabled_extensions": ["decom"]},
                "hardware": {"device_include": [device]}}))
        throttle = faults_throttle.WriteThrottle(self, [device], SLOW)
        throttle.add(agent.pid)
        endpoint.wait_agent(AGENT_ID)
        response = endpoint.ask(lambda client: client.call(
            AGENT_ID, "decom.disk_erase",
            {"task_id": "e1", "devices": [device]}))
        self.assertEqual("running", response["result"]["result"]["state"])
        # Killed (SIGKILL) twice while the task runs, each time once the
        # database holds what the endpoint knew: running updates in flight
        # are not promised to survive, committed ones are.
        for _ in range(2):
            self.db_task("e1", ("running",))
            endpoint.restart()
            endpoint.wait_agent(AGENT_ID)
        throttle.limit(0)
        final = self.db_task("e1", ("complete", "error"))
        self.assertEqual("complete", final["state"], final)
        # The agent goes; a fresh endpoint knows it from the database only.
        agent.stop()
        endpoint.restart()
        known = endpoint.ask(lambda client: client.agent(AGENT_ID))
        self.assertFalse(known["connected"])
        self.assertGreater(known["last_seen"], 0)
        self.assertEqual("complete", endpoint.ask(
            lambda client: client.task(AGENT_ID, "e1"))["state"])
        reader = self.reader()
        [task] = reader.tasks()
        self.assertEqual(("e1", "complete"), (task["task_id"],
                                              task["state"]))
        states = [event["state"]
                  for event in reader.task_events(AGENT_ID, "e1")]
        self.assertEqual(["sent", "running", "complete"], states)
        self.assertIsNotNone(task["ended_at"])
        [record] = reader.erasures(AGENT_ID)
        self.assertEqual((device, "erased", True),
                         (record["device"], record["outcome"],
                          record["verified"]))
        self.assertIsNotNone(record["agent_version"])
        self.assertEqual(device, record["record"]["path"])
        report = self.cli("erasures", "--csv")
        self.assertEqual(0, report.returncode, report.stderr)
        lines = report.stdout.strip().splitlines()
        self.assertEqual(2, len(lines), report.stdout)
        self.assertTrue(lines[0].startswith("agent_id,task_id,device,"))
        self.assertTrue(re.search(r",\d{4}-\d\d-\d\dT", lines[1]), lines[1])
        for output in endpoint.outputs():
            self.assertNotIn("after its final state", output)
            self.assertNotIn("Traceback", output)


class SqliteTest(DatabaseCase, unittest.TestCase):
    def make_database(self):
        self.path = os.path.join(self.work, "db", "endpoint.sqlite")
        return "sqlite:///" + self.path

    def dump_database(self):
        with sqlite3.connect(self.path) as connection:
            return "\n".join(connection.iterdump())

    def task_row_writes(self):
        return None  # SQLite keeps no such counter; see tests/unit/db


class PostgresTest(DatabaseCase, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = postgres.start_postgres(cls)

    def make_database(self):
        # A database of its own per test, in the class's cluster.
        name = "t%d" % (abs(hash(self.id())) % 10 ** 8)
        self.cluster.psql("CREATE DATABASE %s" % name)
        self.addCleanup(self.cluster.psql, "DROP DATABASE IF EXISTS %s "
                        "WITH (FORCE)" % name)
        return "postgresql+psycopg://%s@127.0.0.1:%d/%s" % (
            postgres.USER, self.cluster.port, name)

    def _psql(self, sql):
        name = self.url.rsplit("/", 1)[1]
        return self.cluster._tool(
            "psql", "-h", self.cluster.socket_dir, "-p",
            str(self.cluster.port), "-U", postgres.USER, "-d", name, "-X",
            "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def dump_database(self):
        tables = self._psql("SELECT tablename FROM pg_tables WHERE "
                            "schemaname = 'public'").split()
        return "\n".join(self._psql("SELECT t::text FROM %s t" % table)
                         for table in tables)

    def task_row_writes(self):
        # Statistics reach the view within a moment; force the flush.
        self._psql("SELECT pg_stat_force_next_flush()")
        return int(self._psql(
            "SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables "
            "WHERE relname = 'tasks'").strip())
