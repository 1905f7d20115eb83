"""The store with SQLite in memory: coalescing, commits before answers,
erasure records, redaction, bounds, reads."""

import os
import shutil
import sqlite3
import tempfile
import threading
import time
from unittest import mock

import sqlalchemy as sa

from teeth_agent.db import evidence
from teeth_agent.db import redact
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from tests import base

WAIT = 30.0


def erase_result(*devices, **fields):
    return {"devices": [dict({"path": path, "outcome": "erased",
                              "method": "nvme_sanitize_crypto",
                              "nist_category": "purge", "verified": True},
                             **fields) for path in devices]}


class StoreTestCase(base.TestCase):
    def make_store(self, **kwargs):
        kwargs.setdefault("flush_interval", 0.05)
        store = store_mod.Store.from_url("sqlite://", **kwargs)
        schema.upgrade(store.engine)
        store.open()
        self.addCleanup(store.close)
        return store

    def final(self, store, agent_id, status):
        """Queue a final state and wait for its commit callback."""
        done = threading.Event()
        errors = []

        def committed(error):
            errors.append(error)
            done.set()
        store.task_status(agent_id, status, committed)
        self.assertTrue(done.wait(WAIT))
        return errors[0]


class GatherTest(base.TestCase):
    """The writer's batches (:meth:`Store._gather`), on a store whose
    writer is not started: the test thread plays it."""

    def store(self, **kwargs):
        kwargs.setdefault("flush_interval", 3600.0)
        store = store_mod.Store.from_url("sqlite://", **kwargs)
        self.addCleanup(store.engine.dispose)
        return store

    def running(self, store, number, percent=1.0):
        store.task_status("a", {"task_id": "t%d" % number,
                                "state": "running", "percent": percent})

    def log(self, store, number):
        store.log_record("a", {"message": "m%d" % number})

    @staticmethod
    def statuses(batch):
        return [(change.payload["task_id"], change.payload.get("percent"))
                for change in batch if change.kind == "status"]

    def gather_in_thread(self, store):
        batches = []
        writer = threading.Thread(
            target=lambda: batches.append(store._gather(timeout=WAIT)))
        writer.start()
        return writer, batches

    def test_ordinary_changes_wake_nobody_urgent_ones_do(self):
        store = self.store(batch_limit=100)
        for number in range(20):
            self.running(store, number)
        store.log_record("a", {"message": "x"})
        self.assertFalse(store._urgent.is_set())
        store.flush_async(lambda error: None)
        self.assertTrue(store._urgent.is_set())

    def test_a_full_batch_wakes_the_writer(self):
        store = self.store(batch_limit=5)
        for number in range(4):
            self.log(store, number)
        self.assertFalse(store._urgent.is_set())
        self.log(store, 4)
        self.assertTrue(store._urgent.is_set())
        batch = store._gather(timeout=WAIT)
        self.assertEqual(5, len(batch))

    def test_running_updates_are_kept_one_per_task_not_queued(self):
        # Thousands of running updates of a few tasks: one queue entry
        # (the marker that starts the gathering), no wake-up, and the
        # batch holds the latest update of each task, whatever
        # batch_limit says.
        store = self.store(batch_limit=5)
        for percent in range(1000):
            for number in range(3):
                self.running(store, number, float(percent))
        self.assertFalse(store._urgent.is_set())
        self.assertEqual(1, store._queue.qsize())
        self.assertEqual(2997, store.stats["running_coalesced"])
        store.flush_async(lambda error: None)
        batch = store._gather(timeout=WAIT)
        self.assertEqual([("t0", 999.0), ("t1", 999.0), ("t2", 999.0)],
                         self.statuses(batch))
        # Taken: the next update starts a new gathering.
        self.assertEqual({}, store._latest_running)
        self.running(store, 0, 5.0)
        self.assertEqual(1, store._queue.qsize())

    def test_coalesced_updates_keep_when_the_first_came(self):
        now = [100.0]
        store = self.store(clock=lambda: now[0])
        for percent in range(5):
            self.running(store, 0, float(percent))
            now[0] += 1.0
        store.flush_async(lambda error: None)
        [change] = [change for change in store._gather(timeout=WAIT)
                    if change.kind == "status"]
        self.assertEqual((100.0, 104.0, 4.0), (
            change.first_at, change.at, change.payload["percent"]))

    def test_an_urgent_change_queued_during_the_wait_ends_it(self):
        store = self.store()
        self.running(store, 0)
        writer, batches = self.gather_in_thread(store)
        for number in range(1, 4):
            self.running(store, number)
        store.task_status("a", {"task_id": "t9", "state": "complete",
                                "result": {}}, lambda error: None)
        # With an hour's flush_interval, only the urgent change ends it.
        writer.join(WAIT)
        self.assertFalse(writer.is_alive())
        [batch] = batches
        # What was queued first, then the running updates kept meanwhile.
        self.assertEqual(["t9", "t0", "t1", "t2", "t3"],
                         [task for task, _ in self.statuses(batch)])

    def test_what_is_left_past_the_limit_is_the_next_batch(self):
        store = self.store(batch_limit=3)
        for number in range(7):
            self.log(store, number)
        sizes = [len(store._gather(timeout=WAIT)) for _ in range(2)]
        self.assertEqual([3, 3], sizes)
        # One left: the next batch waits for more until the interval ends
        # or an urgent change comes.
        writer, batches = self.gather_in_thread(store)
        store.flush_async(lambda error: None)
        writer.join(WAIT)
        self.assertFalse(writer.is_alive())
        self.assertEqual(["log", "flush"],
                         [change.kind for change in batches[0]])


class TestWrites(StoreTestCase):
    def test_running_updates_coalesce_latest_wins(self):
        store = self.make_store(flush_interval=5.0)
        for percent in range(100):
            store.task_status("a", {"task_id": "t", "state": "running",
                                    "percent": percent, "eta": 100 - percent})
        store.flush(WAIT)
        self.assertEqual(100, store.stats["task_updates"])
        self.assertEqual(99, store.stats["running_coalesced"])
        self.assertEqual(1, store.stats["task_writes"])
        [task] = store.tasks()
        self.assertEqual((99.0, 1.0), (task["percent"], task["eta"]))
        self.assertEqual(["running"],
                         [e["state"] for e in store.task_events("a", "t")])

    def test_final_state_is_committed_before_its_callback(self):
        store = self.make_store(flush_interval=60.0)
        store.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 5})
        seen = []

        def committed(error):
            # Read on another connection: it is there already.
            seen.append((error, [task["state"] for task in store.tasks()]))
            done.set()
        done = threading.Event()
        store.task_status("a", {"task_id": "t", "state": "complete",
                                "result": {"ok": True}}, committed)
        # Not held back by the 60 s interval.
        self.assertTrue(done.wait(WAIT))
        self.assertEqual([(None, ["complete"])], seen)
        self.assertEqual(["running", "complete"],
                         [e["state"] for e in store.task_events("a", "t")])

    def test_failed_commit_reaches_the_callback(self):
        store = self.make_store()
        with store.engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE tasks"))
        error = self.final(store, "a", {"task_id": "t", "state": "error",
                                        "msg": "x"})
        self.assertIsInstance(error, sa.exc.SQLAlchemyError)
        self.assertEqual(1, store.stats["failures"])

    def test_one_refused_change_does_not_sink_the_batch(self):
        store = self.make_store(flush_interval=5.0)
        store.agent_connected("a", {}, peer="p")
        # A value the database refuses (here: one that is not JSON).
        store.task_status("a", {"task_id": "bad", "state": "complete",
                                "result": {"cannot be JSON": object()}})
        error = self.final(store, "a", {"task_id": "t", "state": "complete",
                                        "result": {}})
        self.assertIsNone(error)
        self.assertEqual(["a"], [row["agent_id"] for row in store.agents()])
        self.assertEqual(["t"], [task["task_id"] for task in store.tasks()])

    def test_a_later_different_final_state_is_ignored(self):
        store = self.make_store()
        self.assertIsNone(self.final(store, "a", {
            "task_id": "t", "state": "complete", "result": {"n": 1}}))
        self.assertIsNone(self.final(store, "a", {
            "task_id": "t", "state": "error", "msg": "forged"}))
        store.task_status("a", {"task_id": "t", "state": "running"})
        store.flush(WAIT)
        [task] = store.tasks()
        self.assertEqual(("complete", {"n": 1}, None),
                         (task["state"], task["result"], task["msg"]))

    def test_a_summary_then_the_full_state(self):
        store = self.make_store()
        store.task_sent("a", "t", "decom.disk_erase", {"devices": None})
        store.task_status("a", {"task_id": "t", "state": "complete",
                                "method": "decom.disk_erase"})
        store.flush(WAIT)
        self.assertEqual([], store.erasures())
        self.final(store, "a", {"task_id": "t", "state": "complete",
                                "method": "decom.disk_erase",
                                "result": erase_result("/dev/sda")})
        [task] = store.tasks()
        self.assertEqual("/dev/sda", task["result"]["devices"][0]["path"])
        self.assertEqual(1, len(store.erasures()))
        self.assertEqual(["sent", "complete"],
                         [e["state"] for e in store.task_events("a", "t")])

    def test_erasure_records_once_per_device_with_agent_version(self):
        store = self.make_store()
        store.agent_connected("a", {"agent_version": "9.9"}, peer="p")
        store.task_sent("a", "t", "decom.disk_erase", {})
        status = {"task_id": "t", "state": "complete",
                  "method": "decom.disk_erase",
                  "result": erase_result("/dev/sda", "/dev/sdb",
                                         serial="S1", model="M",
                                         wwn="0x5000", firmware="F1",
                                         size_bytes=10 ** 12,
                                         started_at=100.0,
                                         ended_at="1970-01-01T00:03:20Z",
                                         tool={"name": "nvme",
                                               "version": "2.4"})}
        self.final(store, "a", status)
        self.final(store, "a", status)
        records = store.erasures()
        self.assertEqual(["/dev/sda", "/dev/sdb"],
                         [r["device"] for r in records])
        first = records[0]
        self.assertEqual(("S1", "M", "0x5000", "F1", 10 ** 12, "9.9"),
                         (first["serial"], first["model"], first["wwn"],
                          first["firmware"], first["size_bytes"],
                          first["agent_version"]))
        self.assertEqual((100.0, 200.0, "nvme", "2.4", True, "purge"),
                         (first["started_at"], first["ended_at"],
                          first["tool"], first["tool_version"],
                          first["verified"], first["nist_category"]))
        self.assertEqual("S1", first["record"]["serial"])

    def test_a_failed_erase_is_recorded_from_its_details(self):
        store = self.make_store()
        details = erase_result("/dev/sda")
        details["devices"].append({"path": "/dev/sdb", "outcome": "failed",
                                   "error": "sanitize failed",
                                   "verified": False})
        self.final(store, "a", {"task_id": "t", "state": "error",
                                "method": "decom.disk_erase",
                                "msg": "disk erase failed on 1 of 2",
                                "details": details})
        records = {r["device"]: r for r in store.erasures("a")}
        self.assertEqual("failed", records["/dev/sdb"]["outcome"])
        self.assertEqual("sanitize failed", records["/dev/sdb"]["error"])
        self.assertEqual([], store.erasures("other"))

    def test_params_are_redacted(self):
        store = self.make_store()
        store.task_sent("a", "t", "standbye.cache_image", {
            "task_id": "t",
            "image": {"urls": ["https://user:pw@h/i?temp_url_sig=SECRET"]},
            "config_drive": "SECRETDRIVE"})
        store.flush(WAIT)
        [task] = store.tasks()
        text = str(task["params"])
        for secret in ("SECRET", "pw@"):
            self.assertNotIn(secret, text)
        self.assertEqual("sent", task["state"])

    def test_a_refused_task_is_forgotten_unless_it_ran(self):
        store = self.make_store()
        store.task_sent("a", "t1", "testing.sleep", {})
        store.task_sent("a", "t2", "testing.sleep", {})
        store.task_status("a", {"task_id": "t2", "state": "running"})
        store.task_refused("a", "t1")
        store.task_refused("a", "t2")
        store.flush(WAIT)
        self.assertEqual(["t2"], [task["task_id"] for task in store.tasks()])
        self.assertEqual([], store.task_events("a", "t1"))

    def test_logs_are_bounded_per_agent(self):
        store = self.make_store(log_history=10)
        for index in range(25):
            store.log_record("a", {"message": "m%d" % index,
                                   "level": "INFO", "time": 1.0 + index})
        store.log_record("b", {"message": "other"})
        store.flush(WAIT)
        self.assertEqual(["m%d" % i for i in range(15, 25)],
                         [r["message"] for r in store.logs("a")])
        self.assertEqual(1, len(store.logs("b")))

    def test_agents_tokens_and_the_holding_process(self):
        store = self.make_store()
        store.agent_connected("a", {"agent_version": "1"}, peer="agent at x",
                              tls=True, identity="token")
        store.set_token("a", "ab" * 32)
        store.agent_connected("b", {}, peer="y")
        store.agent_disconnected("b")
        store.flush(WAIT)
        rows = {row["agent_id"]: row for row in store.agents()}
        self.assertTrue(rows["a"]["connected"])
        self.assertEqual(store.process_name, rows["a"]["process"])
        self.assertEqual((False, None), (rows["b"]["connected"],
                                         rows["b"]["process"]))
        self.assertEqual({"a": "ab" * 32}, store.token_hashes())
        store.agent_forgotten("a")
        store.flush(WAIT)
        self.assertEqual(["b"], [row["agent_id"] for row in store.agents()])
        self.assertEqual({}, store.token_hashes())

    def count_selects(self, store):
        selects = []

        def before(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("SELECT"):
                selects.append(statement)
        sa.event.listen(store.engine, "before_cursor_execute", before)
        self.addCleanup(sa.event.remove, store.engine,
                        "before_cursor_execute", before)
        return selects

    def test_a_ramp_of_first_handshakes_is_a_few_queries(self):
        # Thousands of agents shaking hands for the first time: their
        # rows are looked up a few hundred at a time, not one by one.
        store = self.make_store(flush_interval=5.0)
        selects = self.count_selects(store)
        for index in range(1200):
            agent_id = "agent-%04d" % index
            store.agent_connected(agent_id, {"agent_version": "1"},
                                  peer="p")
            store.set_token(agent_id, "%064x" % index)
            store.task_status(agent_id, {"task_id": "t", "state": "running",
                                         "percent": 1.0})
        store.flush(WAIT)
        self.assertLessEqual(len(selects), 8,
                             [select[:60] for select in selects])
        # Tasks are looked up by (agent, task) pair, never by a list of
        # agents crossed with a list of task ids (SQLite probes every
        # combination).
        self.assertEqual([], [select[:80] for select in selects
                              if "tasks.task_id IN" in select])
        self.assertEqual(1200, len(store.token_hashes()))
        self.assertEqual(1200, len(store.tasks()))
        # The same agents again (known rows now): still a few queries.
        del selects[:]
        for index in range(1200):
            store.agent_disconnected("agent-%04d" % index)
        store.flush(WAIT)
        self.assertLessEqual(len(selects), 8,
                             [select[:60] for select in selects])
        self.assertFalse(any(row["connected"] for row in store.agents()))

    def test_a_final_state_after_kept_running_updates(self):
        # Running updates still kept (not written) when the final state
        # comes: the final state wins, the start is the first update's.
        now = [1000.0]
        store = self.make_store(flush_interval=3600.0, clock=lambda: now[0])
        for percent in (10.0, 20.0, 30.0):
            store.task_status("a", {"task_id": "t", "state": "running",
                                    "percent": percent})
            now[0] += 10.0
        self.assertIsNone(self.final(store, "a", {
            "task_id": "t", "state": "complete", "result": {"ok": 1}}))
        [task] = store.tasks()
        self.assertEqual(("complete", 100.0, 1000.0, 1030.0), (
            task["state"], task["percent"], task["started_at"],
            task["ended_at"]))
        self.assertEqual([("running", 1000.0), ("complete", 1030.0)],
                         [(e["state"], e["at"])
                          for e in store.task_events("a", "t")])
        # A late running update does not reopen it.
        store.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 40.0})
        store.flush(WAIT)
        [task] = store.tasks()
        self.assertEqual(("complete", 100.0), (task["state"],
                                               task["percent"]))

    def test_known_running_tasks_are_updated_without_a_lookup(self):
        store = self.make_store(flush_interval=5.0)
        for index in range(500):
            store.task_status("a%03d" % index, {
                "task_id": "t", "state": "running", "percent": 1.0})
        store.flush(WAIT)
        selects = self.count_selects(store)
        for percent in (2.0, 3.0):
            for index in range(500):
                store.task_status("a%03d" % index, {
                    "task_id": "t", "state": "running",
                    "percent": percent, "eta": 7})
            store.flush(WAIT)
        self.assertEqual([], [select[:60] for select in selects
                              if "FROM tasks" in select])
        tasks = store.tasks()
        self.assertEqual({(3.0, 7.0)},
                         {(task["percent"], task["eta"]) for task in tasks})
        self.assertEqual(1500, store.stats["task_writes"])
        # 500 rows: a chunk of 400 and one of 100; only the full chunk's
        # statement is kept (a last chunk of any length would pile up).
        self.assertEqual([("?", store_mod.RUNNING_CHUNK)],
                         [key for key in store._running_sql
                          if isinstance(key, tuple)])
        # One running event per task: an update is no state change.
        self.assertEqual(["running"],
                         [e["state"] for e in store.task_events("a007", "t")])

    def test_running_rows_by_executemany_where_update_from_is_missing(
            self):
        # (SQLite before 3.33 has no UPDATE ... FROM.)
        with mock.patch.object(store_mod, "_updates_from_values",
                               return_value=False):
            store = self.make_store(flush_interval=5.0)
            for percent in (1.0, 2.0):
                for index in range(5):
                    store.task_status("a%d" % index, {
                        "task_id": "t", "state": "running",
                        "percent": percent, "eta": 9})
                store.flush(WAIT)
            self.assertEqual({(2.0, 9.0)}, {(task["percent"], task["eta"])
                                            for task in store.tasks()})
            self.assertEqual(5, len(store._running))
            self.assertIn("sqlite", store._running_sql)

    def two_writers(self):
        """Two stores on one SQLite file: two endpoint processes."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        url = "sqlite:///" + os.path.join(directory, "e.sqlite")
        stores = []
        for _ in range(2):
            store = store_mod.Store.from_url(url, flush_interval=0.01)
            store.open()
            self.addCleanup(store.close)
            stores.append(store)
        return stores

    def running_in_two_writers(self):
        """Two writers on one file; the first wrote task a/t running."""
        first, second = self.two_writers()
        first.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 10.0})
        first.flush(WAIT)
        return first, second

    def test_a_task_another_process_ended_is_not_reopened(self):
        first, second = self.running_in_two_writers()
        # The agent failed over: the other process records the end.
        self.assertIsNone(self.final(second, "a", {
            "task_id": "t", "state": "complete", "result": {"ok": 1}}))
        # A late running update reaches the first process.
        first.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 50.0})
        first.flush(WAIT)
        [task] = first.tasks()
        self.assertEqual(("complete", 100.0), (task["state"],
                                               task["percent"]))
        self.assertEqual(["running", "complete"],
                         [e["state"] for e in first.task_events("a", "t")])
        self.assertNotIn(("a", "t"), first._running)

    def test_a_task_row_deleted_elsewhere_is_made_again(self):
        first, second = self.running_in_two_writers()
        self.assertIn("tasks", sa.inspect(second.engine).get_table_names())
        # (No endpoint deletes a running task; an operator's clean-up
        # of the database may.)
        with second.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM tasks"))
        self.assertEqual([], first.tasks())
        first.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 20.0})
        first.flush(WAIT)
        [task] = first.tasks()
        self.assertEqual(("running", 20.0), (task["state"],
                                             task["percent"]))

    def test_a_failed_transaction_forgets_the_known_rows(self):
        store = self.make_store()
        store.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 1.0})
        store.flush(WAIT)
        self.assertIn(("a", "t"), store._running)
        store.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 2.0})
        store.task_status("b", {"task_id": "u", "state": "running",
                                "percent": 2.0})

        # Every UPDATE fails: SQLAlchemy's, and the running rows' own
        # executemany on the DBAPI cursor.
        def refuse(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("UPDATE"):
                raise sqlite3.OperationalError("disk I/O error")

        def refused_update(session):
            def update(rows):
                raise sqlite3.OperationalError("disk I/O error")
            return update
        sa.event.listen(store.engine, "before_cursor_execute", refuse)
        try:
            with mock.patch.object(store, "_running_update",
                                   refused_update):
                store.flush(WAIT)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", refuse)
        # The batch was retried change by change: the new task's insert
        # went in alone and is known; the refused update is not.
        self.assertNotIn(("a", "t"), store._running)
        self.assertEqual({}, store._running_new)
        store.task_status("a", {"task_id": "t", "state": "running",
                                "percent": 3.0})
        store.flush(WAIT)
        self.assertEqual({"a": 3.0, "b": 2.0},
                         {task["agent_id"]: task["percent"]
                          for task in store.tasks()})

    def test_the_known_rows_are_bounded(self):
        store = self.make_store(flush_interval=5.0)
        with mock.patch.object(store_mod, "RUNNING_CACHE", 50):
            for index in range(120):
                store.task_status("a%03d" % index, {
                    "task_id": "t", "state": "running", "percent": 1.0})
            store.flush(WAIT)
            self.assertEqual(50, len(store._running))
            # The newest are kept.
            self.assertIn(("a119", "t"), store._running)
            self.assertNotIn(("a000", "t"), store._running)

    def test_forgotten_and_back_in_one_batch(self):
        store = self.make_store(flush_interval=5.0)
        store.agent_connected("a", {"agent_version": "1"}, peer="p")
        store.set_token("a", "ab" * 32)
        store.task_sent("a", "t", "testing.sleep", {})
        store.flush(WAIT)
        # One batch: the rows loaded for it are deleted and made again.
        store.agent_forgotten("a")
        store.agent_connected("a", {"agent_version": "2"}, peer="q")
        store.set_token("a", "cd" * 32)
        store.task_refused("a", "t")
        store.task_sent("a", "t", "testing.echo", {})
        store.flush(WAIT)
        self.assertEqual({"a": "cd" * 32}, store.token_hashes())
        [row] = store.agents()
        self.assertEqual("2", row["agent_version"])
        [task] = store.tasks()
        self.assertEqual(("sent", "testing.echo"),
                         (task["state"], task["method"]))
        self.assertEqual(0, store.stats["failures"])

    def test_close_marks_the_process_stopped_and_its_agents_gone(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        url = "sqlite:///" + os.path.join(directory, "e.sqlite")
        store = store_mod.Store.from_url(url, flush_interval=0.05)
        store.open()  # a new SQLite file is migrated on open
        store.agent_connected("a", {}, peer="p")
        store.close()
        self.assertRaises(store_mod.StoreClosed, store.agent_disconnected,
                          "a")
        reader = store_mod.Store.from_url(url)
        self.addCleanup(reader.engine.dispose)
        [row] = reader.agents()
        self.assertEqual((False, None), (row["connected"], row["process"]))
        with reader.engine.connect() as connection:
            stopped = connection.execute(sa.text(
                "SELECT stopped_at FROM endpoint_processes")).scalar_one()
        self.assertIsNotNone(stopped)

    def test_recent_tasks_are_the_newest_per_known_agent(self):
        store = self.make_store()
        store.agent_connected("a", {}, peer="p")
        for index in range(5):
            store.task_status("a", {"task_id": "t%d" % index,
                                    "state": "complete", "result": {}})
        store.task_status("ghost", {"task_id": "g", "state": "complete"})
        store.flush(WAIT)
        recent = store.recent_tasks(2)
        self.assertEqual(["a"], list(recent))
        self.assertEqual(["t3", "t4"],
                         [task["task_id"] for task in recent["a"]])
        status = store_mod.task_status_of(recent["a"][0])
        self.assertEqual({"task_id": "t3", "state": "complete",
                          "method": None, "result": {}}, status)


class FakeWaits:
    """The writer's interval clock and wake-up event for :meth:`_pace`:
    each wait the writer makes moves the clock by its timeout (after the
    test's hook for that wait, if any, ran); a wait an urgent change ends
    does not move it."""

    def __init__(self, store):
        self.now = 0.0
        self.waits = []
        self.hooks = {}
        self.event = store._urgent
        store._urgent = self
        store.monotonic = lambda: self.now

    def set(self):
        self.event.set()

    def clear(self):
        self.event.clear()

    def is_set(self):
        return self.event.is_set()

    def wait(self, timeout):
        self.waits.append(round(timeout, 6))
        hook = self.hooks.pop(len(self.waits), None)
        if hook is not None:
            hook()
        if self.event.is_set():
            return True
        self.now += timeout
        return False


class PaceTest(base.TestCase):
    """The running rows of a batch beyond its first chunk, spread over
    half the interval (:meth:`Store._pace`), on a store whose writer is
    not started: the test thread plays it."""

    TASKS = 2000

    def setUp(self):
        super().setUp()
        self.wall = FakeClock(100.0)
        self.store = store_mod.Store.from_url(
            "sqlite://", flush_interval=10.0, clock=self.wall)
        self.addCleanup(self.store.engine.dispose)
        schema.upgrade(self.store.engine)
        self.waits = FakeWaits(self.store)
        self.writes = []
        write = self.store._write

        def recorded(batch):
            self.writes.append((self.waits.now, sorted(
                change.agent_id for change in batch
                if change.kind == "status")))
            write(batch)
        self.store._write = recorded

    def running(self, percent=1.0, agents=None):
        for index in range(self.TASKS) if agents is None else agents:
            self.store.task_status("a%04d" % index, {
                "task_id": "t", "state": "running", "percent": percent})

    def batch(self):
        """Gather a batch (its interval passes on the fake clock), write
        it and return what is to be paced."""
        batch = self.store._gather(timeout=0)
        paced = self.store._paced_part(batch)
        self.store._write(batch)
        # The hooks count the pacing's waits only.
        del self.waits.waits[:]
        return paced

    def rows(self):
        with self.store.engine.connect() as connection:
            return {row.agent_id: row for row in connection.execute(
                sa.text("SELECT agent_id, state, percent, started_at "
                        "FROM tasks"))}

    def test_rows_beyond_the_first_chunk_are_spread_over_half_the_interval(
            self):
        self.running()
        paced = self.batch()
        chunk = store_mod.RUNNING_CHUNK
        self.assertEqual(self.TASKS - chunk, len(paced))
        # The batch's transaction had the first chunk.
        [(_, first)] = self.writes
        self.assertEqual(chunk, len(first))
        # Meanwhile: a log record and an update of a task not in the
        # batch are queued; neither is urgent, neither stops the pacing.
        self.waits.hooks[2] = lambda: (
            self.store.log_record("a0000", {"message": "m"}),
            self.store.task_status("b", {"task_id": "t",
                                         "state": "running"}))
        start = self.waits.now
        carried = self.store._pace(paced)
        # Four chunks of 400, one every 1.25 s: the last at 5 s, half of
        # flush_interval.
        self.assertEqual([1.25, 2.5, 3.75, 5.0],
                         [at - start for at, _ in self.writes[1:]])
        self.assertEqual([chunk] * 4,
                         [len(agents) for _, agents in self.writes[1:]])
        self.assertEqual(4, self.store.stats["paced_transactions"])
        # What was queued is the start of the next batch.
        self.assertEqual(["log", "running"],
                         sorted(change.kind for change in carried))
        rows = self.rows()
        self.assertEqual(self.TASKS, len(rows))
        self.assertEqual({("running", 1.0)},
                         {(row.state, row.percent) for row in rows.values()})
        # The update of "b" is kept for the next batch.
        self.assertEqual([("b", "t")], list(self.store._latest_running))

    def test_an_urgent_change_ends_the_pacing_and_nothing_is_lost(self):
        self.running()
        paced = self.batch()
        store = self.store
        committed = []

        def meanwhile():
            # a1700's newer update (its chunk is not written yet), then
            # a1300's final state: urgent.
            self.wall.advance(100.0)
            store.task_status("a1700", {"task_id": "t", "state": "running",
                                        "percent": 9.0})
            store.task_status("a1300", {"task_id": "t", "state": "complete",
                                        "result": {}}, committed.append)
        self.waits.hooks[2] = meanwhile
        carried = store._pace(paced)
        # The batch's chunk and the first paced one went in, then it
        # stopped: the rest is kept again, a1700's newer update keeping
        # when its first came.
        self.assertEqual(2, len(self.writes))
        self.assertEqual(self.TASKS - 2 * store_mod.RUNNING_CHUNK,
                         len(store._latest_running))
        newer = store._latest_running[("a1700", "t")]
        self.assertEqual((9.0, 200.0, 100.0), (
            newer.payload["percent"], newer.at, newer.first_at))
        self.assertTrue(any(change.urgent for change in carried))
        # The next batch is written at once, with all of it.
        batch = store._gather(0, carried, self.waits.now)
        self.assertEqual([], store._paced_part(batch))
        store._write(batch)
        self.assertEqual([None], committed)
        rows = self.rows()
        self.assertEqual(self.TASKS, len(rows))
        self.assertEqual(("complete", 100.0, 100.0), (
            rows["a1300"].state, rows["a1300"].percent,
            rows["a1300"].started_at))
        self.assertEqual((9.0, 100.0), (rows["a1700"].percent,
                                        rows["a1700"].started_at))
        self.assertEqual({"running"}, {
            row.state for agent, row in rows.items() if agent != "a1300"})
        self.assertEqual([("running", 100.0), ("complete", 200.0)],
                         [(event["state"], event["at"])
                          for event in store.task_events("a1300", "t")])

    def test_a_task_ended_elsewhere_meanwhile_is_not_reopened(self):
        # Every row exists and is known (a batch written whole), then the
        # next batch is paced; another process ends a1000 meanwhile.
        store = self.store
        store.running_spread = 0
        self.running()
        self.assertEqual([], self.batch())
        store.running_spread = store_mod.RUNNING_SPREAD
        self.running(percent=2.0)
        paced = self.batch()

        def elsewhere():
            with store.engine.begin() as connection:
                connection.execute(sa.text(
                    "UPDATE tasks SET state = 'complete', percent = 100 "
                    "WHERE agent_id = 'a1000'"))
        self.waits.hooks[2] = elsewhere
        self.assertEqual([], store._pace(paced))
        rows = self.rows()
        self.assertEqual(("complete", 100.0), (rows["a1000"].state,
                                               rows["a1000"].percent))
        self.assertEqual({("running", 2.0)}, {
            (row.state, row.percent) for agent, row in rows.items()
            if agent != "a1000"})
        self.assertNotIn(("a1000", "t"), store._running)

    def test_urgent_batches_and_a_task_s_final_state_are_not_paced(self):
        store = self.store
        self.running()
        store.task_status("a1999", {"task_id": "t", "state": "error",
                                    "msg": "x"})
        batch = store._gather(timeout=0)
        # a1999's running update stays beside its final state.
        paced = store._paced_part(list(batch))
        self.assertEqual(self.TASKS - 1 - store_mod.RUNNING_CHUNK,
                         len(paced))
        self.assertNotIn("a1999", {change.agent_id for change in paced})
        store.running_spread = 0
        self.assertEqual([], store._paced_part(list(batch)))
        store.running_spread = store_mod.RUNNING_SPREAD
        batch.append(store_mod._Change("flush", None, None, 0.0,
                                       lambda error: None))
        self.assertEqual([], store._paced_part(batch))

    def test_a_running_update_behind_its_final_state_is_dropped(self):
        # As the next batch has it when a final state ended the pacing:
        # the older running update comes after the final state.
        store = self.store
        running = store_mod._Change("status", "a", {
            "task_id": "t", "state": "running", "percent": 50.0}, 100.0)
        final = store_mod._Change("status", "a", {
            "task_id": "t", "state": "complete", "result": {}}, 200.0,
            lambda error: None)
        store._write([final, running])
        # Dropped as coalesced (no lookup of its row, nothing written).
        self.assertEqual(1, store.stats["running_coalesced"])
        self.assertEqual(1, store.stats["task_writes"])
        [task] = store.tasks()
        self.assertEqual(("complete", 100.0, 100.0, 200.0), (
            task["state"], task["percent"], task["started_at"],
            task["ended_at"]))
        self.assertEqual(["running", "complete"],
                         [e["state"] for e in store.task_events("a", "t")])


class PacingWriterTest(StoreTestCase):
    def test_flush_and_close_while_the_writer_paces(self):
        path = os.path.join(tempfile.mkdtemp(), "store.sqlite")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        store = store_mod.Store.from_url(
            "sqlite:///" + path, flush_interval=3600.0, batch_limit=10)
        schema.upgrade(store.engine)
        store.open()
        for index in range(1000):
            store.task_status("a%04d" % index, {
                "task_id": "t", "state": "running", "percent": 1.0})
        # A full batch (batch_limit) ends the gathering: its first chunk
        # is written, the rest paced over half an hour.
        for index in range(10):
            store.log_record("a0000", {"message": "m%d" % index})
        deadline = time.monotonic() + WAIT
        while store.stats["transactions"] < 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        self.assertEqual(0, store.stats["paced_transactions"])
        store.task_status("a0001", {"task_id": "t", "state": "running",
                                    "percent": 5.0})
        self.assertTrue(store.flush(WAIT))
        self.assertEqual(1000, len(store.tasks()))
        for index in range(1000, 1500):
            store.task_status("a%04d" % index, {
                "task_id": "t", "state": "running", "percent": 1.0})
        store.close()
        engine = sa.create_engine("sqlite:///" + path)
        self.addCleanup(engine.dispose)
        with engine.connect() as connection:
            self.assertEqual(1500, connection.execute(sa.text(
                "SELECT count(*) FROM tasks WHERE state = 'running'"
            )).scalar_one())
            self.assertEqual(5.0, connection.execute(sa.text(
                "SELECT percent FROM tasks WHERE agent_id = 'a0001'"
            )).scalar_one())


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class TestRetention(StoreTestCase):
    def setUp(self):
        super().setUp()
        self.clock = FakeClock()

    def make_store(self, **kwargs):
        # A file, not SQLite in memory: that one is a single connection
        # shared by every thread (StaticPool), so the test's reads while
        # it waits would run inside the writer's pruning transaction and
        # could end it.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        kwargs.setdefault("flush_interval", 0.05)
        store = store_mod.Store.from_url(
            "sqlite:///" + os.path.join(directory, "e.sqlite"), **kwargs)
        schema.upgrade(store.engine)
        store.open()
        self.addCleanup(store.engine.dispose)
        self.addCleanup(store.close)
        return store

    def history(self, store, prefix="old"):
        """An erase that completed, a task that failed, a running one and
        one only sent, all now (by the fake clock)."""
        store.agent_connected("a", {"agent_version": "1"}, peer="p")
        store.task_sent("a", prefix + "-erase", "decom.disk_erase", {})
        store.task_status("a", {"task_id": prefix + "-erase",
                                "state": "running", "percent": 50})
        self.assertIsNone(self.final(store, "a", {
            "task_id": prefix + "-erase", "state": "complete",
            "method": "decom.disk_erase",
            "result": erase_result("/dev/sda", "/dev/sdb")}))
        self.assertIsNone(self.final(store, "a", {
            "task_id": prefix + "-failed", "state": "error", "msg": "no"}))
        store.task_status("a", {"task_id": prefix + "-running",
                                "state": "running", "percent": 1})
        store.task_sent("a", prefix + "-sent", "decom.qc", {})
        store.flush(WAIT)

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("timed out waiting for " + what)
            time.sleep(0.02)

    def task_ids(self, store):
        return sorted(task["task_id"] for task in store.tasks())

    def test_old_finished_tasks_go_recent_running_sent_and_evidence_stay(
            self):
        store = self.make_store(clock=self.clock)
        self.history(store, "old")
        self.clock.advance(10 * store_mod.DAY)
        self.history(store, "new")
        erasures = store.erasures()
        self.assertEqual(4, len(erasures))
        dry = store.prune_tasks(5, dry_run=True)
        self.assertEqual(({"complete": 1, "error": 1}, 4, 0),
                         (dry.states, dry.events, dry.transactions))
        self.assertEqual(8, len(self.task_ids(store)))
        pruned = store.prune_tasks(5)
        self.assertEqual(({"complete": 1, "error": 1}, 4),
                         (pruned.states, pruned.events))
        self.assertEqual(self.clock.now - 5 * store_mod.DAY, pruned.cutoff)
        self.assertEqual(
            ["new-erase", "new-failed", "new-running", "new-sent",
             "old-running", "old-sent"], self.task_ids(store))
        self.assertEqual([], store.task_events("a", "old-erase"))
        self.assertEqual([], store.task_events("a", "old-failed"))
        self.assertEqual(["running"], [e["state"] for e in store.task_events(
            "a", "old-running")])
        self.assertEqual(["sent"], [e["state"] for e in store.task_events(
            "a", "old-sent")])
        self.assertEqual(["sent", "running", "complete"],
                         [e["state"] for e in store.task_events(
                             "a", "new-erase")])
        # The evidence of the pruned erase is all still there.
        self.assertEqual(erasures, store.erasures())
        # Nothing is left to prune.
        self.assertEqual(0, store.prune_tasks(5).tasks)
        # Running and sent tasks stay however old they are.
        self.clock.advance(1000 * store_mod.DAY)
        store.prune_tasks(1)
        self.assertEqual(["new-running", "new-sent", "old-running",
                          "old-sent"], self.task_ids(store))

    def test_the_writer_prunes_a_backlog_in_bounded_chunks(self):
        store = self.make_store(clock=self.clock, task_retention=1,
                                prune_chunk=3)
        chunks = []
        prune_chunk = store._prune_chunk

        def recorded(session, cutoff):
            chunk = prune_chunk(session, cutoff)
            chunks.append(chunk.tasks)
            return chunk
        store._prune_chunk = recorded
        for index in range(8):
            store.task_status("a", {"task_id": "t%d" % index,
                                    "state": "complete", "result": {}})
        store.task_status("a", {"task_id": "r", "state": "running"})
        store.flush(WAIT)
        self.assertEqual(9, len(self.task_ids(store)))
        self.clock.advance(2 * store_mod.DAY)
        store.task_status("a", {"task_id": "fresh", "state": "error",
                                "msg": "x"})
        store.flush(WAIT)
        self.wait_for(lambda: self.task_ids(store) == ["fresh", "r"],
                      "the old tasks pruned")
        self.assertEqual(8, store.stats["tasks_pruned"])
        self.assertEqual(8, store.stats["task_events_pruned"])
        # Each transaction deleted at most a chunk; the backlog took
        # three back to back, not three minutes.
        self.assertEqual([3, 3, 2], [n for n in chunks if n])
        self.assertLessEqual(max(chunks), 3)

    def test_a_pass_at_most_once_per_interval(self):
        # task_retention in days: 0.001 is 86.4 seconds. The first pass
        # is at the start (nothing old yet), the next 450-750 s later.
        store = self.make_store(clock=self.clock, task_retention=0.001,
                                prune_interval=600.0)
        store.task_status("a", {"task_id": "first", "state": "complete"})
        store.flush(WAIT)
        self.clock.advance(800)
        store.flush(WAIT)
        self.wait_for(lambda: self.task_ids(store) == [], "the second pass")
        store.task_status("a", {"task_id": "second", "state": "complete"})
        store.flush(WAIT)
        self.clock.advance(100)
        # Old enough, but the next pass is due 450 s after the last at
        # the earliest: the writer wakes and writes but does not prune.
        for _ in range(3):
            store.flush(WAIT)
        self.assertEqual(["second"], self.task_ids(store))
        self.clock.advance(700)
        store.flush(WAIT)
        self.wait_for(lambda: self.task_ids(store) == [], "the third pass")
        self.assertEqual(2, store.stats["tasks_pruned"])

    def test_zero_keeps_the_history_forever(self):
        store = self.make_store(clock=self.clock, task_retention=0)
        self.history(store)
        self.clock.advance(10000 * store_mod.DAY)
        for _ in range(3):
            store.flush(WAIT)
        self.assertEqual(4, len(self.task_ids(store)))
        self.assertEqual(0, store.stats["tasks_pruned"])

    def test_processes_pruning_one_database_at_once(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        url = "sqlite:///" + os.path.join(directory, "e.sqlite")
        writer = store_mod.Store.from_url(url, flush_interval=0.01,
                                          clock=self.clock)
        writer.open()
        self.addCleanup(writer.close)
        for index in range(50):
            writer.task_status("a", {"task_id": "t%03d" % index,
                                     "state": "complete", "result": {}})
        writer.flush(WAIT)
        self.clock.advance(3 * store_mod.DAY)
        pruners = [store_mod.Store.from_url(url, clock=self.clock,
                                            prune_chunk=4)
                   for _ in range(3)]
        results, errors = base.prune_at_once(pruners, 1, WAIT)
        self.assertEqual([], errors)
        # Every task deleted once, by one of them.
        self.assertEqual(50, sum(result.tasks for result in results))
        self.assertEqual(50, sum(result.events for result in results))
        self.assertEqual([], writer.tasks())


class TestRedact(base.TestCase):
    def test_credentials_documents_and_urls(self):
        kept = redact.redact({
            "url": "https://u:pw@h/x?X-Amz-Signature=abc&part=1",
            "meta_data": {"admin_pass": "hunter2", "hostname": "h",
                          "public_keys": {"k": "ssh-rsa"}},
            "user_data": "#cloud-config\npassword: x",
            "token": "t", "allow_fallback": True, "devices": ["/dev/sda"]})
        self.assertEqual("https://***@h/x?X-Amz-Signature=***&part=1",
                         kept["url"])
        self.assertEqual("***", kept["meta_data"]["admin_pass"])
        self.assertEqual("***", kept["meta_data"]["public_keys"])
        self.assertEqual("h", kept["meta_data"]["hostname"])
        self.assertTrue(kept["user_data"].startswith("<redacted: "))
        self.assertEqual("***", kept["token"])
        self.assertIs(True, kept["allow_fallback"])
        self.assertEqual(["/dev/sda"], kept["devices"])

    def test_deep_nesting_is_cut(self):
        value = "x"
        for _ in range(50):
            value = [value]
        self.assertIn("nested too deep", str(redact.redact(value)))


class TestEvidence(base.TestCase):
    def test_hostile_entries_are_tolerated(self):
        status = {"state": "complete", "result": {"devices": [
            "not a dict", {"path": 7}, {"path": ""},
            {"path": "/dev/sda", "size_bytes": float("nan"),
             "serial": ["list"], "verified": "yes", "started_at": "never",
             "model": "x" * 10000}]}}
        [entry] = evidence.device_entries("decom.disk_erase", status)
        columns = evidence.record_columns(entry)
        self.assertEqual((None, None, None, None),
                         (columns["size_bytes"], columns["serial"],
                          columns["verified"], columns["started_at"]))
        self.assertEqual(255, len(columns["model"]))

    def test_other_methods_and_shapes_have_no_records(self):
        self.assertEqual([], evidence.device_entries(
            "decom.qc", {"state": "complete",
                         "result": {"devices": [{"path": "/dev/sda"}]}}))
        self.assertEqual([], evidence.device_entries(
            "decom.disk_erase", {"state": "complete", "result": [1]}))
