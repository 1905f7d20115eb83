"""Two ``serve`` processes on one database; one is killed mid-task.

Real processes on 127.0.0.1 (TLS with the session CA): endpoint processes A
and B share a database (a throwaway PostgreSQL cluster, and the same with
one SQLite file); an agent lists B first, then A, so it connects to B.
``teeth-endpoint call`` given to A sends a task to the agent on B and
follows its progress through A; B is killed with SIGKILL in the middle of
the task; the agent fails over to A, the task goes on there, and the
``call`` started on A ends with the final state. The database holds that
final state once: one task row, one ``complete`` event.
"""

import json
import os
import signal
import sqlite3
import subprocess
import unittest

from tests.functional import harness
from tests.functional import postgres

TASK = {"task_id": "failover-1", "seconds": 6, "steps": 120}


class _Failover:
    """The scenario; subclasses say which database the processes share."""

    def database(self):
        raise NotImplementedError

    def query(self, sql):
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.workdir = harness.make_workdir(self)
        self.url = self.database()

    def serve(self, name):
        workdir = os.path.join(self.workdir, name)
        os.mkdir(workdir)
        overrides = {"endpoint": {
            "state_dir": os.path.join(self.workdir, "state")}}
        if self.url:
            overrides["database"] = {"connection": self.url}
        return harness.start_endpoint(self, overrides, workdir=workdir)

    def test_a_task_followed_through_a_survives_the_death_of_b(self):
        first = self.serve("a")
        if self.url:
            done = first.cli("db", "upgrade")
            self.assertEqual(0, done.returncode, done.stderr)
        second = self.serve("b")
        agent = harness.start_agent(self, [second.address, first.address],
                                    workdir=self.workdir)
        harness.wait_until(lambda: second.agents(), harness.START_TIMEOUT,
                           what="the agent on B")
        agent_id = second.agents()[0]["agent_id"]
        # Held by B, as A sees it through the database.
        harness.wait_until(
            lambda: self.query("SELECT p.pid FROM agents a JOIN "
                               "endpoint_processes p ON a.process_id = p.id "
                               "WHERE a.agent_id = '%s'" % agent_id)
            == [(second.pid,)], 15, what="B recorded as the holder")

        follow = subprocess.Popen(
            harness.endpoint_cli_argv(first.config_path, "call", agent_id,
                                      "testing.sleep", json.dumps(TASK),
                                      "--timeout", "60"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=harness.plugin_env(), cwd=self.workdir)
        self.addCleanup(_stop, follow)
        # Progress followed through A while B holds the agent: a line of
        # the bar on A's call.
        progress = _Lines(follow.stderr)
        progress.wait_for(lambda line: "failover-1" in line and "%" in line)

        os.kill(second.pid, signal.SIGKILL)
        second.process.wait(harness.START_TIMEOUT)
        harness.wait_until(lambda: first.agents(), harness.START_TIMEOUT,
                           what="the agent failed over to A")

        out, err = follow.communicate(timeout=60)
        self.assertEqual(0, follow.returncode, progress.text() + err)
        final = json.loads(out)
        self.assertEqual("complete", final["state"])
        self.assertEqual({"slept": 6, "steps": 120}, final["result"])
        rows = self.query("SELECT state FROM tasks WHERE task_id = "
                          "'failover-1'")
        self.assertEqual([("complete",)], rows)
        events = self.query("SELECT state FROM task_events WHERE task_id = "
                            "'failover-1' AND state = 'complete'")
        self.assertEqual([("complete",)], events)
        # The agent is held by A now.
        holder = self.query("SELECT p.pid FROM agents a JOIN "
                            "endpoint_processes p ON a.process_id = p.id "
                            "WHERE a.agent_id = '%s'" % agent_id)
        self.assertEqual([(first.pid,)], holder)
        agent.stop()


class TestFailoverPostgres(_Failover, unittest.TestCase):
    def database(self):
        self.cluster = postgres.start_postgres(self)
        return self.cluster.url

    def query(self, sql):
        output = self.cluster.psql(sql)
        return [tuple(_typed(value) for value in line.split("|"))
                for line in output.splitlines() if line]


class TestFailoverSQLite(_Failover, unittest.TestCase):
    """Two processes on one host sharing one SQLite file (the default
    database under the shared state_dir)."""

    def database(self):
        return None

    def query(self, sql):
        path = os.path.join(self.workdir, "state", "endpoint.sqlite")
        with sqlite3.connect(path, timeout=10) as connection:
            return [tuple(row) for row in connection.execute(sql)]


def _typed(value):
    return int(value) if value.isdigit() else value


class _Lines:
    """The lines a child writes to a pipe, read as they come."""

    def __init__(self, stream):
        self.stream = stream
        self.lines = []

    def wait_for(self, predicate, timeout=harness.START_TIMEOUT):
        import select
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.stream], [], [], 0.2)
            if not ready:
                continue
            line = self.stream.readline()
            if not line:
                break
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError("no matching line; got:\n" + self.text())

    def text(self):
        return "".join(self.lines)


def _stop(process):
    if process.poll() is None:
        process.kill()
        process.wait(10)
