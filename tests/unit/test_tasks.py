"""The task registry: lifecycle, exclusivity, history, persistence, ETA."""

import json
import os
import shutil
import tempfile
import threading
import time

from teeth_agent import protocol
from teeth_agent import tasks
from tests import base


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def wait_terminal(task, timeout=10):
    deadline = time.monotonic() + timeout
    while not task.terminal:
        if time.monotonic() > deadline:
            raise AssertionError("task %s did not end" % task.task_id)
        time.sleep(0.005)


class RegistryTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.changes = []
        self.registry = tasks.TaskRegistry(history=3)
        self.registry.subscribe(
            lambda task: self.changes.append(task.status()))

    def test_complete_with_result(self):
        task, created = self.registry.start(
            "t1", "x.y", lambda task: {"answer": 42})
        self.assertTrue(created)
        wait_terminal(task)
        self.assertEqual({"task_id": "t1", "state": "complete",
                          "method": "x.y", "result": {"answer": 42}},
                         task.status())
        # The change callback runs after the state is set, outside the lock.
        wait_for(lambda: self.changes[-1]["state"] == "complete")
        self.assertEqual("running", self.changes[0]["state"])

    def test_task_failed_and_crash(self):
        def fail(task):
            raise tasks.TaskFailed("disk on fire", result={"devices": []})
        task, _ = self.registry.start("t1", "x.fail", fail)
        wait_terminal(task)
        self.assertEqual("error", task.state)
        self.assertEqual("disk on fire", task.status()["msg"])
        self.assertEqual({"devices": []}, task.status()["details"])

        task, _ = self.registry.start("t2", "x.crash", lambda task: 1 / 0)
        wait_terminal(task)
        self.assertIn("ZeroDivisionError", task.msg)

        task, _ = self.registry.start("t3", "x.bad", lambda task: [1])
        wait_terminal(task)
        self.assertIn("not a dict", task.msg)

        task, _ = self.registry.start("t4", "x.set",
                                      lambda task: {"devices": {1, 2}})
        wait_terminal(task)
        self.assertIn("cannot be sent as JSON", task.msg)

        def fail_with_junk(task):
            raise tasks.TaskFailed("broken", result={"x": float("nan")})
        task, _ = self.registry.start("t5", "x.nan", fail_with_junk)
        wait_terminal(task)
        self.assertEqual("broken", task.msg)
        self.assertIsNone(task.details)

    def test_duplicate_id_does_not_restart(self):
        runs = []
        gate = threading.Event()

        def body(task):
            runs.append(1)
            gate.wait(5)
            return {}
        first, created = self.registry.start("t1", "x", body)
        second, created_again = self.registry.start("t1", "x", body)
        gate.set()
        wait_terminal(first)
        self.assertIs(first, second)
        self.assertFalse(created_again)
        self.assertEqual([1], runs)

    def test_exclusive_tasks_are_busy(self):
        # Made-up methods: the bodies are stand-ins, not the commands
        # whose results docs/schema/ describes (tests/result_schemas.py).
        gate = threading.Event()
        first, _ = self.registry.start("t1", "fake.erase",
                                       lambda task: gate.wait(5) and {},
                                       exclusive=True)
        with self.assertRaises(protocol.Busy) as caught:
            self.registry.start("t2", "fake.write",
                                lambda task: {}, exclusive=True)
        self.assertIn("t1", caught.exception.msg)
        self.assertEqual("t1", caught.exception.details["task_id"])
        # A non-exclusive task may run beside it.
        other, _ = self.registry.start("t3", "fake.read", lambda task: {})
        wait_terminal(other)
        gate.set()
        wait_terminal(first)
        later, _ = self.registry.start("t4", "x", lambda task: {},
                                       exclusive=True)
        wait_terminal(later)

    def test_progress_is_monotonic_and_below_100_until_done(self):
        gate = threading.Event()
        reported = threading.Event()

        def body(task):
            task.progress(percent=50)
            task.progress(percent=20)
            task.progress(done=1000, total=1000)
            reported.set()
            gate.wait(5)
            return {}
        task, _ = self.registry.start("t1", "x", body)
        reported.wait(5)
        self.assertEqual(99.9, task.percent)
        gate.set()
        wait_terminal(task)
        wait_for(lambda: self.changes[-1]["state"] == "complete")
        self.assertEqual(100.0, task.percent)
        percents = [c["percent"] for c in self.changes
                    if c["state"] == "running"]
        self.assertEqual(sorted(percents), percents)

    def test_no_running_update_after_terminal(self):
        holder = {}

        def body(task):
            holder["task"] = task
            return {}
        task, _ = self.registry.start("t1", "x", body)
        wait_terminal(task)
        version = task.version
        task.progress(percent=10)
        self.assertEqual(version, task.version)
        self.assertEqual("complete", task.status()["state"])

    def test_history_is_bounded_but_keeps_unacknowledged(self):
        for i in range(6):
            task, _ = self.registry.start("t%d" % i, "x", lambda task: {})
            wait_terminal(task)
        # None acknowledged yet: all kept for re-delivery.
        self.assertEqual(6, len(self.registry.statuses()))
        for task, version, _ in self.registry.undelivered():
            self.registry.acknowledge(task.task_id, version)
        ids = [s["task_id"] for s in self.registry.statuses()]
        self.assertEqual(["t3", "t4", "t5"], ids)
        self.assertEqual([], self.registry.undelivered())

    def test_acknowledge_older_version_does_not_release(self):
        task, _ = self.registry.start("t1", "x", lambda task: {})
        wait_terminal(task)
        self.registry.acknowledge("t1", task.version - 1)
        self.assertFalse(task.acknowledged.is_set())
        self.registry.acknowledge("t1", task.version)
        self.assertTrue(task.acknowledged.is_set())

    def test_after_delivery_waits_for_acknowledgement(self):
        actions = []
        task, _ = self.registry.start(
            "t1", "x", lambda task: tasks.AfterDelivery(
                {"boot": "kexec"}, lambda: actions.append("kexec"), 5))
        wait_terminal(task)
        time.sleep(0.05)
        self.assertEqual([], actions)
        self.registry.acknowledge("t1", task.version)
        deadline = time.monotonic() + 5
        while not actions and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(["kexec"], actions)
        self.assertEqual({"boot": "kexec"}, task.result)

    def test_after_delivery_times_out(self):
        actions = []
        task, _ = self.registry.start(
            "t1", "x", lambda task: tasks.AfterDelivery(
                {}, lambda: actions.append("reboot"), 0.05))
        deadline = time.monotonic() + 5
        while not actions and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(["reboot"], actions)


class SubscriberTest(base.TestCase):
    """Change callbacks are a list: a second user does not silence the
    first."""

    def test_every_subscriber_hears_every_change(self):
        registry = tasks.TaskRegistry()
        first, second = [], []
        registry.subscribe(lambda task: first.append(task.state))
        registry.subscribe(lambda task: second.append(task.state))
        task, _ = registry.start("t1", "x", lambda task: {})
        wait_terminal(task)
        wait_for(lambda: second[-1:] == ["complete"])
        self.assertEqual(["running", "complete"], first)
        self.assertEqual(["running", "complete"], second)

    def test_unsubscribed_callback_is_not_called(self):
        registry = tasks.TaskRegistry()
        heard, kept = [], []

        def listener(task):
            heard.append(task.state)
        registry.subscribe(listener)
        registry.subscribe(lambda task: kept.append(task.state))
        registry.unsubscribe(listener)
        task, _ = registry.start("t1", "x", lambda task: {})
        wait_terminal(task)
        wait_for(lambda: kept[-1:] == ["complete"])
        self.assertEqual([], heard)
        with self.assertRaises(ValueError):
            registry.unsubscribe(listener)

    def test_a_failing_subscriber_does_not_stop_the_others(self):
        registry = tasks.TaskRegistry()
        heard = []

        def broken(task):
            raise RuntimeError("subscriber bug")
        registry.subscribe(broken)
        registry.subscribe(lambda task: heard.append(task.state))
        with self.assertLogs("teeth_agent.tasks", "ERROR"):
            task, _ = registry.start("t1", "x", lambda task: {})
            wait_terminal(task)
            wait_for(lambda: heard[-1:] == ["complete"])
        self.assertEqual("complete", task.state)

    def test_progress_goes_through_the_registry(self):
        registry = tasks.TaskRegistry()
        heard = []
        registry.subscribe(lambda task: heard.append(task.percent))
        gate = threading.Event()
        task, _ = registry.start("t1", "x", lambda task: gate.wait(5) and {})
        registry.record_progress(task, 0.25, eta=7.0)
        self.assertEqual(25.0, task.percent)
        self.assertEqual(7.0, task.eta)
        self.assertIn(25.0, heard)
        gate.set()
        wait_terminal(task)
        version = task.version
        registry.record_progress(task, 0.5)
        self.assertEqual(version, task.version)


class PersistenceTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.state_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.state_dir)

    def test_running_task_is_reported_lost_after_restart(self):
        # Made-up methods (stand-in bodies), as above.
        gate = threading.Event()
        first = tasks.TaskRegistry(state_dir=self.state_dir)
        task, _ = first.start("t1", "fake.erase",
                              lambda task: gate.wait(5) and {})
        done, _ = first.start("t2", "fake.read", lambda task: {"ok": True})
        wait_terminal(done)
        first.acknowledge("t2", done.version)
        # The "restart": a new registry over the same state directory.
        second = tasks.TaskRegistry(state_dir=self.state_dir)
        lost = second.get("t1")
        self.assertEqual("error", lost.state)
        self.assertIn("stopped while this task was running", lost.msg)
        self.assertFalse(lost.acknowledged.is_set())
        kept = second.get("t2")
        self.assertEqual({"ok": True}, kept.result)
        self.assertTrue(kept.acknowledged.is_set())
        self.assertEqual(["t1"], [t.task_id for t, _, _ in
                                  second.undelivered()])
        gate.set()
        wait_terminal(task)

    def test_unreadable_record_is_ignored(self):
        with open(os.path.join(self.state_dir, "task-x.json"), "w") as f:
            f.write("{broken")
        with open(os.path.join(self.state_dir, "task-y.json"), "w") as f:
            json.dump({"task_id": "y", "method": "m", "state": "complete",
                       "result": {}, "acknowledged": False}, f)
        registry = tasks.TaskRegistry(state_dir=self.state_dir)
        self.assertEqual(["y"], [s["task_id"] for s in registry.statuses()])


class EstimatorTest(base.TestCase):
    def test_eta_from_rate(self):
        now = [0.0]
        estimator = tasks.ProgressEstimator(clock=lambda: now[0])
        now[0] = 10.0
        self.assertAlmostEqual(90.0, estimator.update(0.1))
        now[0] = 20.0
        # 10% more in 10 s: 80% left at 1%/s.
        self.assertAlmostEqual(80.0, estimator.update(0.2))
        self.assertEqual(0.0, estimator.update(1.0))

    def test_no_progress_no_eta(self):
        estimator = tasks.ProgressEstimator(clock=lambda: 5.0)
        self.assertIsNone(estimator.update(0.0))
