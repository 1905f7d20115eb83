"""Erasure records, their report and what the views keep of agent text."""

import csv
import io
import json
import os
import shutil
import stat
import tempfile
import threading

from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint.web import auth
from teeth_agent.endpoint.web import records
from teeth_agent.endpoint.web import report
from teeth_agent.endpoint.web import views
from tests import base
from tests.unit.endpoint.web import fakes


class TestErasureBook(base.TestCase):
    def test_one_record_per_device_of_final_disk_erase_tasks(self):
        fleet = fakes.Fleet()
        fleet.connect("a")
        # Tasks already in the books when the book is attached count too.
        fleet.task("a", "old", "complete", method="decom.disk_erase",
                   result=fakes.erase_result(("/dev/sdz", "erased", 5)))
        book = records.ErasureBook(fleet.endpoint, clock=lambda: 50.0)
        book.attach()
        fleet.task("a", "e", "running", method="decom.disk_erase")
        fleet.task("a", "q", "complete", method="decom.qc", result={})
        fleet.task("a", "e", "error", method="decom.disk_erase",
                   msg="sdb failed",
                   result=fakes.erase_result(("/dev/sda", "erased", 10),
                                             ("/dev/sdb", "failed", 0)))
        found = book.erasure_records()
        self.assertEqual([("old", "/dev/sdz", None), ("e", "/dev/sda", 50.0),
                          ("e", "/dev/sdb", 50.0)],
                         [(r["task_id"], r["path"], r["finished_at"])
                          for r in found])
        self.assertEqual("error", found[1]["task_state"])
        self.assertEqual(1, len(book.erasure_records(1)))
        self.assertEqual([], book.erasure_records(0))

    def test_malformed_results_make_no_records(self):
        for result in (None, "x", {"devices": "x"}, {"devices": [1, "a"]}):
            self.assertEqual([], records.records_of("a", {
                "task_id": "t", "state": "complete", "result": result}, 1.0))

    def test_bounded(self):
        fleet = fakes.Fleet()
        fleet.connect("a")
        book = records.ErasureBook(fleet.endpoint, limit=3).attach()
        for n in range(5):
            fleet.task("a", "e%d" % n, "complete",
                       method="decom.disk_erase",
                       result=fakes.erase_result(("/dev/sda", "erased", 1)))
        self.assertEqual(["e2", "e3", "e4"],
                         [r["task_id"] for r in book.erasure_records()])


class TestReport(base.TestCase):
    def test_csv_cells_cannot_be_formulas(self):
        rows = [{"agent_id": value, "path": "/dev/sda", "verified": True,
                 "bytes": 7, "error": {"nested": 1}}
                for value in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx",
                              "plain")]
        text = report.as_csv(rows)
        parsed = list(csv.reader(io.StringIO(text)))
        self.assertEqual(list(records.COLUMNS), parsed[0])
        self.assertEqual(["'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx",
                          "'\rx", "plain"], [row[0] for row in parsed[1:]])
        self.assertEqual("true", parsed[1][records.COLUMNS.index("verified")])
        self.assertEqual('{"nested": 1}',
                         parsed[1][records.COLUMNS.index("error")])

    def test_json_keeps_the_device_entries(self):
        entry = {"path": "/dev/sda", "serial": "S1", "extra": [1, 2]}
        text = report.as_json([{"agent_id": "a", "device": entry}], 1.0)
        self.assertEqual(entry, json.loads(text)["records"][0]["device"])


class TestViews(base.TestCase):
    def test_agent_text_is_cut(self):
        long = "x" * (views.TEXT_LIMIT + 100)
        row = views.DashboardView.log_row("a", {"message": long,
                                                "level": "L" * 100,
                                                "time": "soon"})
        self.assertEqual(views.TEXT_LIMIT + 1, len(row["message"]))
        self.assertEqual(21, len(row["level"]))
        self.assertIsNone(row["time"])

    def test_numbers_that_are_not_numbers_are_none(self):
        for bad in ("50", True, float("nan"), float("inf"), [1]):
            row = views.DashboardView.task_row(
                "a", {"task_id": "t", "state": "running", "percent": bad,
                      "eta": bad})
            self.assertEqual((None, None), (row["percent"], row["eta"]),
                             bad)


class TestTokenFile(base.TestCase):
    def setUp(self):
        super().setUp()
        self.state_dir = os.path.join(tempfile.mkdtemp(), "state")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.state_dir))

    def test_only_the_hash_is_kept_mode_0600(self):
        token = auth.issue_token(self.state_dir)
        path = auth.token_path(self.state_dir)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        with open(path) as handle:
            stored = handle.read()
        self.assertNotIn(token, stored)
        self.assertEqual(auth.digest(token), auth.load_hash(self.state_dir))
        self.assertGreaterEqual(len(token), 43)  # 256 bits
        # A new token replaces the old one.
        newer = auth.issue_token(self.state_dir)
        self.assertNotEqual(token, newer)
        self.assertFalse(auth.authorized("Bearer " + token,
                                         auth.load_hash(self.state_dir)))

    def test_missing_or_malformed_files_say_what_to_do(self):
        with self.assertRaises(auth.TokenFileError) as caught:
            auth.load_hash(self.state_dir)
        self.assertIn("run teeth-endpoint dashboard-token first",
                      str(caught.exception))
        os.makedirs(self.state_dir)
        with open(auth.token_path(self.state_dir), "w") as handle:
            handle.write("my password\n")
        with self.assertRaises(auth.TokenFileError) as caught:
            auth.load_hash(self.state_dir)
        self.assertIn("does not hold a SHA-256", str(caught.exception))
        with self.assertRaises(auth.TokenFileError):
            auth.issue_token("")


class TestStoreRecords(base.TestCase):
    """The erasure records of the endpoint's database, as the dashboard
    reads them."""

    def test_newest_records_with_their_task_state(self):
        store = store_mod.Store.from_url("sqlite://", flush_interval=0.05)
        schema.upgrade(store.engine)
        store.open()
        self.addCleanup(store.close)
        store.agent_connected("a", {"agent_version": "2.0"}, peer="p")

        def final(status):
            done = threading.Event()
            store.task_status("a", status, lambda error: done.set())
            self.assertTrue(done.wait(30))
        final({"task_id": "e1", "state": "complete",
               "method": "decom.disk_erase",
               "result": fakes.erase_result(("/dev/sda", "erased", 10),
                                            ("/dev/sdb", "erased", 20))})
        final({"task_id": "e2", "state": "error",
               "method": "decom.disk_erase", "msg": "one failed",
               "details": fakes.erase_result(("/dev/sdc", "failed", 0))})
        source = records.StoreRecords(store)
        self.assertTrue(source.blocking)
        found = source.erasure_records()
        self.assertEqual([("e1", "/dev/sda", "complete", 10),
                          ("e1", "/dev/sdb", "complete", 20),
                          ("e2", "/dev/sdc", "error", 0)],
                         [(r["task_id"], r["path"], r["task_state"],
                           r["bytes"]) for r in found])
        self.assertEqual("2.0", found[0]["agent_version"])
        self.assertEqual(set(records.COLUMNS) | {"device"}, set(found[0]))
        self.assertEqual(["/dev/sdc"],
                         [r["path"] for r in source.erasure_records(1)])
        self.assertEqual([], source.erasure_records(0))
        # The report of database rows.
        self.assertIn("/dev/sdb", report.as_csv(found))

    def test_a_failed_erase_in_memory_reports_its_details(self):
        fleet = fakes.Fleet()
        fleet.connect("a")
        book = records.ErasureBook(fleet.endpoint).attach()
        fleet.task("a", "e", "error", method="decom.disk_erase",
                   msg="failed", details=fakes.erase_result(
                       ("/dev/sda", "erased", 5), ("/dev/sdb", "failed", 0)))
        self.assertEqual(["/dev/sda", "/dev/sdb"],
                         [r["path"] for r in book.erasure_records()])
