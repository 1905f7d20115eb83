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
import sqlite3
import subprocess
import unittest

from tests.functional import harness
from tests.functional import multi
from tests.functional import postgres

TASK = {"task_id": "failover-1", "seconds": 6, "steps": 120}


class _Failover:
    """The scenario; subclasses say which database the processes share
    and how the agent finds them."""

    def database(self):
        raise NotImplementedError

    def query(self, sql):
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.workdir = harness.make_workdir(self)
        self.url = self.database()

    def overrides(self):
        overrides = {"endpoint": {
            "state_dir": os.path.join(self.workdir, "state")}}
        if self.url:
            overrides["database"] = {"connection": self.url}
        return overrides

    def serve(self, name, overrides):
        workdir = os.path.join(self.workdir, name)
        os.mkdir(workdir)
        return multi.start_serve(self, workdir, overrides)

    def holder_pid(self, agent_id):
        return self.query("SELECT p.pid FROM agents a JOIN "
                          "endpoint_processes p ON a.process_id = p.id "
                          "WHERE a.agent_id = '%s'" % agent_id)

    def run_failover(self, processes, agent):
        """``processes``: the two serve processes; the agent is connected
        to one of them. Returns nothing; asserts the whole story."""
        def connected(process):
            return [entry for entry in harness.parse_json_lines(
                process.cli_on("agents", "--json").stdout)
                if entry["connected"] and entry["source"] == "process"]
        harness.wait_until(lambda: any(connected(p) for p in processes),
                           harness.START_TIMEOUT, what="the agent")
        second = [p for p in processes if connected(p)][0]
        first = [p for p in processes if p is not second][0]
        agent_id = connected(second)[0]["agent_id"]
        # Held by B, as A sees it through the database.
        harness.wait_until(lambda: self.holder_pid(agent_id)
                           == [(second.pid,)], 15,
                           what="B recorded as the holder")

        follow = subprocess.Popen(
            harness.endpoint_cli_argv(first.own_config(), "call",
                                      agent_id, "testing.sleep",
                                      json.dumps(TASK), "--timeout", "60"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=harness.plugin_env(), cwd=self.workdir)
        self.addCleanup(_stop, follow)
        # Progress followed through A while B holds the agent: a line of
        # the bar on A's call.
        progress = _Lines(follow.stderr)
        progress.wait_for(lambda line: "failover-1" in line and "%" in line)

        second.kill()
        try:
            harness.wait_until(lambda: connected(first),
                               harness.START_TIMEOUT,
                               what="the agent failed over to A")
        except AssertionError:
            raise AssertionError("no failover; agent:\n%s\nA:\n%s" % (
                agent.output()[-3000:], first.output()[-3000:]))

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
        self.assertEqual([(first.pid,)], self.holder_pid(agent_id))


class TestFailoverPostgres(_Failover, unittest.TestCase):
    """PostgreSQL; two ports in the agent's endpoints list (B first);
    mutual TLS with the agent's identity from its certificate, which
    every process checks by itself (token identity across two addresses
    is TestFailoverSQLiteTwoAddresses)."""

    def database(self):
        self.cluster = postgres.start_postgres(self)
        return self.cluster.url

    def query(self, sql):
        output = self.cluster.psql(sql)
        return [tuple(_typed(value) for value in line.split("|"))
                for line in output.splitlines() if line]

    def test_a_task_followed_through_a_survives_the_death_of_b(self):
        multi.migrate(self.url)
        overrides = self.overrides()
        overrides["endpoint"].update({
            "tls_ca_file": harness.tls_material().ca_file,
            "tls_require_client_cert": True,
            "agent_identity": "certificate"})
        first = self.serve("a", overrides)
        second = self.serve("b", overrides)
        cert, key = harness.tls_material().agent_certificate("machine-f1")
        agent = harness.start_agent(
            self, [second.address, first.address], workdir=self.workdir,
            overrides={"DEFAULT": {"agent_id": "machine-f1"},
                       "tls": {"cert_file": cert, "key_file": key}})
        self.run_failover([first, second], agent)


class TestFailoverSQLite(_Failover, unittest.TestCase):
    """Two processes on one host sharing one SQLite file (the default
    database under the shared state_dir) and one port (reuse_port): the
    agent's session token, issued by the process it met first, is checked
    by the other one in the database."""

    def database(self):
        return None

    def query(self, sql):
        path = os.path.join(self.workdir, "state", "endpoint.sqlite")
        with sqlite3.connect(path, timeout=10) as connection:
            return [tuple(row) for row in connection.execute(sql)]

    def test_a_task_followed_through_a_survives_the_death_of_b(self):
        overrides = self.overrides()
        overrides["endpoint"].update({"listen_port": harness.free_port(),
                                      "reuse_port": True})
        processes = [self.serve("a", overrides), self.serve("b", overrides)]
        agent = harness.start_agent(self, [processes[0].address],
                                    workdir=self.workdir)
        self.run_failover(processes, agent)


class TestFailoverSQLiteTwoAddresses(TestFailoverSQLite):
    """Two processes on one SQLite file at two addresses (two ports), in
    the agent's endpoints list, in token mode: the session token B issued
    is presented to A after the failover (the agent keeps tokens per
    address, and an address of its list without one of its own gets the
    newest of the others), so A lets the agent in."""

    def test_a_task_followed_through_a_survives_the_death_of_b(self):
        overrides = self.overrides()
        first = self.serve("a", overrides)
        second = self.serve("b", overrides)
        agent = harness.start_agent(self, [second.address, first.address],
                                    workdir=self.workdir)
        self.run_failover([first, second], agent)
        self.assertNotIn("session_token missing", first.output())


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
