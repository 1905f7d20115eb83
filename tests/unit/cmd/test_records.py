"""teeth-endpoint db, tasks, erasures and watch, on an SQLite file."""

import csv
import io
import json
import os
import shutil
import tempfile
import threading
import time
import types
from unittest import mock

from teeth_agent.cmd import endpoint as endpoint_cmd
from teeth_agent.cmd import records
from teeth_agent.cmd import usage
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from tests import base


class RecordsTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.url = "sqlite:///" + os.path.join(self.directory, "e.sqlite")
        self.conf = base.make_conf(**{
            "database.connection": self.url,
            "endpoint.control_socket": os.path.join(self.directory,
                                                    "none.sock")})

    def run_command(self, name, **args):
        if name == "db":
            args = dict({"older_than": None, "dry_run": False,
                         "json": False}, **args)
        conf = types.SimpleNamespace(
            command=types.SimpleNamespace(name=name, **args),
            database=self.conf.database, endpoint=self.conf.endpoint)
        out, err = io.StringIO(), io.StringIO()
        if name == "db":
            code = records.db_command(conf, out)
        elif name == "tasks":
            code = records.list_tasks(conf, out)
        elif name == "erasures":
            code = records.list_erasures(conf, out)
        else:
            conf.command.json = False
            conf.command.all_tasks = False
            with mock.patch("sys.stdout", out), \
                    mock.patch("sys.stderr", err):
                code = endpoint_cmd.watch(conf)
        return code, out.getvalue(), err.getvalue()

    def fill(self):
        store = store_mod.Store.from_url(self.url, flush_interval=0.01)
        store.open()
        self.addCleanup(store.close)
        store.agent_connected("a", {"agent_version": "2.0"}, peer="p")
        store.task_sent("a", "e1", "decom.disk_erase", {})
        done = threading.Event()
        store.task_status("a", {
            "task_id": "e1", "state": "complete",
            "method": "decom.disk_erase",
            "result": {"devices": [{"path": "/dev/sda",
                                    "outcome": "erased",
                                    "serial": "=HYPERLINK(1)",
                                    "ended_at": 1796169600.0}]}},
            lambda error: done.set())
        store.task_status("a", {"task_id": "f1", "state": "error",
                                "msg": "broken\nline"})
        self.assertTrue(done.wait(30))
        store.flush(30)
        return store


class TestDbCommand(RecordsTestCase):
    def test_current_upgrade_current(self):
        code, out, _ = self.run_command("db", action="current")
        self.assertEqual(1, code)
        self.assertIn("there is no database", out)
        code, out, _ = self.run_command("db", action="upgrade")
        self.assertEqual(0, code)
        self.assertIn("revision %s (was empty)" % schema.head(), out)
        code, out, _ = self.run_command("db", action="current")
        self.assertEqual(0, code, out)

    def test_prune_dry_run_then_prune(self):
        self.fill().close()
        # [database] task_retention (90 days): nothing is that old.
        code, out, _ = self.run_command("db", action="prune")
        self.assertEqual(0, code)
        self.assertIn("deleted 0 finished tasks (none) and their 0 events",
                      out)
        self.assertIn("(older than 90 days)", out)
        # A hundredth of a second in days.
        days = 0.01 / 86400
        time.sleep(0.05)
        code, out, _ = self.run_command("db", action="prune",
                                        older_than=days, dry_run=True)
        self.assertEqual(0, code)
        self.assertIn("would delete 2 finished tasks (complete 1, error 1) "
                      "and their 3 events", out)
        self.assertIn("erasure records are kept", out)
        self.assertEqual(2, len(self.reader().tasks()))
        code, out, _ = self.run_command("db", action="prune",
                                        older_than=days)
        self.assertEqual(0, code)
        self.assertIn("deleted 2 finished tasks (complete 1, error 1) and "
                      "their 3 events", out)
        self.assertEqual([], self.reader().tasks())
        self.assertEqual(1, len(self.reader().erasures()))

    def test_json_is_one_object(self):
        def one(**args):
            code, out, _ = self.run_command("db", json=True, **args)
            lines = out.splitlines()
            self.assertEqual(1, len(lines), out)
            return code, json.loads(lines[0])
        head = schema.head()
        code, shown = one(action="current")
        self.assertEqual(1, code)
        self.assertEqual((None, head, False),
                         (shown["revision"], shown["needs"],
                          shown["current"]))
        self.assertIn("there is no database", shown["problem"])
        code, shown = one(action="upgrade")
        self.assertEqual((0, head, None),
                         (code, shown["revision"], shown["was"]))
        self.assertTrue(shown["database"].startswith("sqlite:///"), shown)
        code, shown = one(action="upgrade")
        self.assertEqual((0, head, head),
                         (code, shown["revision"], shown["was"]))
        code, shown = one(action="current")
        self.assertEqual((0, {"database": shown["database"],
                              "revision": head, "needs": head,
                              "current": True}), (code, shown))
        self.fill().close()
        time.sleep(0.05)
        code, shown = one(action="prune", older_than=0.01 / 86400,
                          dry_run=True)
        self.assertEqual(0, code)
        self.assertEqual((True, 2, {"complete": 1, "error": 1}, 3),
                         (shown["dry_run"], shown["tasks"], shown["states"],
                          shown["events"]))
        self.assertRegex(shown["cutoff"], r"^\d{4}-\d\d-\d\dT")
        code, shown = one(action="prune", older_than=0.01 / 86400)
        self.assertEqual((0, False, 2), (code, shown["dry_run"],
                                         shown["tasks"]))
        self.assertEqual([], self.reader().tasks())

    def test_prune_refusals(self):
        self.fill().close()
        for args, message in (
                ({"older_than": 0.0}, "--older-than must be a positive"),
                ({"older_than": -3.0}, "--older-than must be a positive"),
                ({"older_than": float("nan")},
                 "--older-than must be a positive")):
            with self.assertRaisesRegex(usage.UsageError, message):
                self.run_command("db", action="prune", **args)
        with self.assertRaisesRegex(usage.UsageError, "go with db prune"):
            self.run_command("db", action="upgrade", dry_run=True)
        self.conf.set_override("task_retention", 0, group="database")
        with self.assertRaisesRegex(records.ReportError,
                                    r"task_retention is 0 .*--older-than"):
            self.run_command("db", action="prune")
        self.assertEqual(2, len(self.reader().tasks()))

    def reader(self):
        reader = store_mod.Store.from_url(self.url)
        self.addCleanup(reader.engine.dispose)
        return reader


class TestReports(RecordsTestCase):
    def test_a_missing_database_is_an_error_not_an_empty_report(self):
        with self.assertRaises(records.ReportError):
            self.run_command("tasks", agent_id=None, state=None, json=False,
                             limit=None)
        self.assertFalse(os.path.exists(os.path.join(self.directory,
                                                     "e.sqlite")))

    def test_tasks_table_and_json(self):
        self.fill()
        code, out, _ = self.run_command("tasks", agent_id="a", state=None,
                                        json=False, limit=None)
        self.assertEqual(0, code)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("AGENT"))
        self.assertEqual(3, len(lines), out)
        # Agent text stays on one line.
        self.assertIn('"broken\\nline"', lines[2])
        code, out, _ = self.run_command("tasks", agent_id=None,
                                        state="complete", json=True,
                                        limit=1)
        [task] = [json.loads(line) for line in out.splitlines()]
        self.assertEqual("e1", task["task_id"])
        self.assertEqual(["sent", "complete"],
                         [event["state"] for event in task["events"]])

    def test_erasures_csv_is_safe_for_spreadsheets(self):
        self.fill()
        code, out, _ = self.run_command("erasures", agent_id=None,
                                        json=False, csv=True)
        self.assertEqual(0, code)
        rows = list(csv.DictReader(io.StringIO(out)))
        self.assertEqual(1, len(rows))
        self.assertEqual("'=HYPERLINK(1)", rows[0]["serial"])
        self.assertEqual("2026-12-02T00:00:00Z", rows[0]["ended_at"])
        self.assertEqual("2.0", rows[0]["agent_version"])
        code, out, _ = self.run_command("erasures", agent_id="a", json=True,
                                        csv=False)
        [record] = [json.loads(line) for line in out.splitlines()]
        self.assertEqual("/dev/sda", record["record"]["path"])

    def test_watch_without_a_server_prints_an_ended_task_from_the_db(self):
        self.fill()
        code, out, err = self.run_command("watch", agent_id="a",
                                          task_id="f1", timeout=None)
        self.assertEqual(1, code)
        self.assertEqual("error", json.loads(out)["state"])
        self.assertIn("no server running", err)
        # A task the database does not know: the no-server message.
        with self.assertRaises(SystemExit) as caught:
            self.run_command("watch", agent_id="a", task_id="nope",
                             timeout=None)
        self.assertIn("the server is not running at",
                      str(caught.exception))
