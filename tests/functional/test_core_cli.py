"""The ``teeth-endpoint`` operator commands against real processes.

A real ``teeth-endpoint serve`` and a real ``teeth-agent`` (with the
``testing`` extension) run on 127.0.0.1; the tests run ``teeth-endpoint
agents`` and ``teeth-endpoint call`` as separate processes, the way an
operator would, and check their output and exit codes.
"""

import errno
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import unittest
import urllib.request

from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from tests.functional import harness

AGENT_ID = "cli-test-agent"
PING_LINE = b'{"version":"v1","id":"c1","method":"ping","params":{"x":1}}\n'


def nobody_ids():
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise unittest.SkipTest("there is no user nobody")
    return entry.pw_uid, entry.pw_gid


class TestEndpointCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = harness.make_workdir(cls, cls_level=True)
        cls.endpoint = harness.start_endpoint(cls, workdir=cls.workdir,
                                              cls_level=True)
        cls.agent = harness.start_agent(
            cls, [cls.endpoint.address], {"DEFAULT": {"agent_id": AGENT_ID}},
            workdir=cls.workdir, cls_level=True)
        harness.wait_until(
            lambda: any(a["agent_id"] == AGENT_ID
                        for a in cls.endpoint.agents()),
            harness.START_TIMEOUT, interval=0.2, what="agent connected")

    def call(self, *args, timeout=60):
        return self.endpoint.cli("call", *args, timeout=timeout)

    def test_agents_lists_the_connected_agent(self):
        done = self.endpoint.cli("agents")
        self.assertEqual(0, done.returncode, done.stderr)
        row = [line for line in done.stdout.splitlines()
               if line.startswith(AGENT_ID)]
        self.assertEqual(1, len(row), done.stdout)
        self.assertIn("connected", row[0])

    def test_agents_json_describes_the_agent(self):
        done = self.endpoint.cli("agents", "--json")
        self.assertEqual(0, done.returncode, done.stderr)
        agents = {a["agent_id"]: a
                  for a in harness.parse_json_lines(done.stdout)}
        self.assertIn(AGENT_ID, agents)
        agent = agents[AGENT_ID]
        self.assertTrue(agent["connected"])
        self.assertEqual(
            ["testing.disk", "testing.echo", "testing.sleep"],
            agent["extensions"]["testing"])

    def test_call_ping_prints_the_echo(self):
        done = self.call(AGENT_ID, "ping", '{"a":1}')
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertEqual({"a": 1}, json.loads(done.stdout))

    def test_call_status(self):
        done = self.call(AGENT_ID, "status")
        self.assertEqual(0, done.returncode, done.stderr)
        status = json.loads(done.stdout)
        self.assertEqual(AGENT_ID, status["agent_id"])
        self.assertIn("uptime", status)

    def test_call_task_follows_progress_and_exits_zero(self):
        done = self.call(AGENT_ID, "testing.sleep",
                         '{"task_id":"t1","seconds":2,"steps":10}')
        self.assertEqual(0, done.returncode, done.stderr)
        progress = re.findall(r"^t1 \[[#.]+\]\s+([0-9.]+)%\s+ETA (\S+)",
                              done.stderr, re.M)
        self.assertTrue(progress, done.stderr)
        percents = [float(p) for p, _ in progress]
        self.assertEqual(sorted(percents), percents)
        self.assertTrue(any(p > 0 for p in percents), done.stderr)
        self.assertTrue(any(re.fullmatch(r"\d\d:\d\d", eta)
                            for _, eta in progress), done.stderr)
        final = json.loads(done.stdout)
        self.assertEqual("complete", final["state"])
        self.assertEqual("t1", final["task_id"])
        self.assertEqual({"slept": 2, "steps": 10}, final["result"])

    def test_failing_task_exits_one(self):
        done = self.call(AGENT_ID, "testing.sleep",
                         '{"task_id":"t-fail","seconds":0.3,"steps":3,'
                         '"fail":true}')
        self.assertEqual(1, done.returncode, done.stdout + done.stderr)
        self.assertIn("failed on request", done.stderr)
        self.assertEqual("error", json.loads(done.stdout)["state"])

    def test_no_follow_returns_at_once(self):
        done = self.call(AGENT_ID, "testing.sleep",
                         '{"task_id":"t-nofollow","seconds":0.2,"steps":2}',
                         "--no-follow")
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertEqual({"task_id": "t-nofollow", "state": "running"},
                         json.loads(done.stdout))

    def test_agent_error_is_reported_with_its_type(self):
        done = self.call(AGENT_ID, "no.such_method", "{}")
        self.assertEqual(1, done.returncode)
        self.assertIn("UnknownMethod", done.stderr)
        done = self.call(AGENT_ID, "testing.sleep", '{"task_id":"../x"}')
        self.assertEqual(1, done.returncode)
        self.assertIn("InvalidParams", done.stderr)
        self.assertIn("task_id", done.stderr)

    def test_unknown_agent_exits_nonzero(self):
        done = self.call("no-such-agent", "ping", "{}")
        self.assertEqual(1, done.returncode)
        self.assertIn("no-such-agent", done.stderr)

    def test_params_that_are_not_a_json_object_are_refused(self):
        for text in ("{not json", "[1, 2]"):
            with self.subTest(text=text):
                done = self.call(AGENT_ID, "ping", text)
                self.assertEqual(2, done.returncode, done.stderr)
                self.assertEqual("", done.stdout)

    def test_control_socket_is_private(self):
        mode = os.stat(self.endpoint.control_socket).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(0, mode & 0o077, oct(mode))

    def test_root_client_is_served(self):
        # The control for the refusals below: the same raw exchange works
        # for the server's own user.
        outcome = harness.unix_exchange_as(0, 0, self.endpoint.control_socket,
                                           PING_LINE)
        answer = json.loads(outcome["data"])
        self.assertEqual({"x": 1}, answer["result"])

    def test_cli_as_nobody_is_refused(self):
        uid, gid = nobody_ids()
        runner = shutil.which("setpriv")
        if runner:
            prefix = [runner, "--reuid=%d" % uid, "--regid=%d" % gid,
                      "--clear-groups"]
        elif shutil.which("runuser"):
            prefix = [shutil.which("runuser"), "-u", "nobody", "--"]
        else:
            raise unittest.SkipTest("neither setpriv nor runuser exists")
        # A config nobody can read, naming the real control socket.
        public = tempfile.mkdtemp(prefix="teeth-cli-nobody-")
        self.addCleanup(shutil.rmtree, public, True)
        os.chmod(public, 0o755)
        config = harness.write_config(
            os.path.join(public, "endpoint.conf"),
            {"endpoint": {"control_socket": self.endpoint.control_socket}})
        os.chmod(config, 0o644)
        probe = harness.run_command(
            prefix + harness.endpoint_cli_argv(config, "--help"))
        if probe.returncode != 0:
            raise unittest.SkipTest(
                "user nobody cannot run this Python with teeth_agent (%s); "
                "test_other_user_is_refused_by_the_server covers the "
                "refusal" % (probe.stderr.strip().splitlines() or ["?"])[-1])
        done = harness.run_command(
            prefix + harness.endpoint_cli_argv(config, "agents", "--json"))
        self.assertNotEqual(0, done.returncode, done.stdout)
        self.assertNotIn(AGENT_ID, done.stdout)


class TestCleanStdout(unittest.TestCase):
    """stdout carries what a command prints and nothing else: ``serve
    --json`` is one JSON object (logs go to stderr), and a reader that
    goes away ends a command quietly with exit status 141."""

    def test_serve_json_is_one_object_and_logs_go_to_stderr(self):
        workdir = harness.make_workdir(self)
        socket_path = os.path.join(workdir, "control", "control.sock")
        config = harness.write_config(
            os.path.join(workdir, "serve.conf"), harness.endpoint_sections(
                socket_path, {"dashboard": {"enabled": True,
                                            "listen": "127.0.0.1:0"}}))
        err_path = os.path.join(workdir, "serve.err")
        with open(err_path, "wb") as err:
            process = subprocess.Popen(
                harness.endpoint_cli_argv(config, "serve", "--json"),
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                env=harness.plugin_env(), cwd=workdir)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        first = process.stdout.readline()
        self.assertTrue(first, "serve --json printed nothing")
        shown = json.loads(first)
        self.assertEqual({"host", "port", "control_socket", "dashboard"},
                         set(shown))
        self.assertEqual(("127.0.0.1", socket_path),
                         (shown["host"], shown["control_socket"]))
        self.assertRegex(shown["dashboard"], r"^http://127\.0\.0\.1:\d+/$")
        with urllib.request.urlopen(shown["dashboard"] + "api/state",
                                    timeout=10) as response:
            self.assertEqual(200, response.status)
        listed = harness.run_command(harness.endpoint_cli_argv(
            config, "agents", "--json"), cwd=workdir)
        self.assertEqual((0, ""), (listed.returncode, listed.stdout),
                         listed.stderr)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        self.assertEqual(0, process.returncode)
        # Nothing after the object: the shutdown was logged to stderr.
        self.assertEqual(b"", rest)
        with open(err_path, encoding="utf-8") as stream:
            logs = stream.read()
        self.assertIn("teeth-endpoint started (pid %d)" % process.pid, logs)
        self.assertIn("teeth-endpoint stopped", logs)

    def test_a_closed_stdout_ends_quietly_with_141(self):
        workdir = harness.make_workdir(self)
        url = "sqlite:///" + os.path.join(workdir, "tasks.sqlite")
        config = harness.write_config(
            os.path.join(workdir, "report.conf"), harness.endpoint_sections(
                os.path.join(workdir, "none", "control.sock"),
                {"database": {"connection": url}}))
        upgraded = harness.run_command(harness.endpoint_cli_argv(
            config, "db", "upgrade", "--json"))
        self.assertEqual(0, upgraded.returncode, upgraded.stderr)
        self.assertEqual(schema.head(),
                         json.loads(upgraded.stdout)["revision"])
        current = harness.run_command(harness.endpoint_cli_argv(
            config, "db", "current", "--json"))
        self.assertEqual(0, current.returncode, current.stderr)
        self.assertTrue(json.loads(current.stdout)["current"])
        # Far more than a pipe holds (64 KiB), so writes meet the closed
        # pipe while the command still lists.
        store = store_mod.Store.from_url(url, flush_interval=0.01)
        store.open()
        for number in range(2000):
            store.task_sent("agent-%d" % (number % 7), "task-%05d" % number,
                            "decom.qc", {"spec": {"note": "x" * 100}})
        store.flush(60)
        store.close()
        listed = harness.run_command(harness.endpoint_cli_argv(
            config, "tasks", "--json"), timeout=120)
        self.assertEqual(0, listed.returncode, listed.stderr)
        self.assertGreater(len(listed.stdout), 256 * 1024)
        argv = " ".join(shlex.quote(word) for word in
                        harness.endpoint_cli_argv(config, "tasks", "--json"))
        done = subprocess.run(
            ["bash", "-c", '%s 2>"$0" | head -c 10; '
             'echo " ${PIPESTATUS[0]}"' % argv,
             os.path.join(workdir, "tasks.err")],
            capture_output=True, text=True, timeout=120,
            env=harness.plugin_env(), stdin=subprocess.DEVNULL)
        self.assertEqual('{"agent_id 141\n', done.stdout, done.stderr)
        with open(os.path.join(workdir, "tasks.err")) as stream:
            self.assertEqual("", stream.read())


class TestControlSocketPermissions(unittest.TestCase):
    def test_other_user_is_refused_by_the_server(self):
        uid, gid = nobody_ids()
        endpoint = harness.start_endpoint(self)
        # By default the file system alone keeps other users out.
        outcome = harness.unix_exchange_as(uid, gid, endpoint.control_socket,
                                           PING_LINE)
        self.assertEqual(errno.EACCES, outcome.get("connect_errno"),
                         outcome)
        # Opened up on purpose, the server itself still refuses them: the
        # connection is closed without an answer.
        os.chmod(endpoint.workdir, 0o711)
        os.chmod(os.path.dirname(endpoint.control_socket), 0o711)
        os.chmod(endpoint.control_socket, 0o666)
        outcome = harness.unix_exchange_as(uid, gid, endpoint.control_socket,
                                           PING_LINE)
        self.assertNotIn("connect_errno", outcome)
        self.assertTrue(outcome.get("closed"), outcome)
        self.assertEqual("", outcome["data"])
        # The server is unharmed and still serves root.
        outcome = harness.unix_exchange_as(0, 0, endpoint.control_socket,
                                           PING_LINE)
        self.assertEqual({"x": 1}, json.loads(outcome["data"])["result"])


if __name__ == "__main__":
    unittest.main()
