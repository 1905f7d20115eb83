"""The operator's CLI against real processes on 127.0.0.1: following tasks
(Ctrl-C, ``--timeout``, ``watch``, ``watch --all``, ``--json``), one-line
errors, ``serve`` refusing a held port or control socket, and both
processes logging their start-up and shutdown."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import unittest

from tests.functional import harness

AGENT_ID = "cli-follow-agent"


def assert_one_clean_line(testcase, text):
    """``text`` (stderr) is one line, without traceback or errno noise."""
    lines = [line for line in text.splitlines() if line.strip()]
    testcase.assertEqual(1, len(lines), text)
    for noise in ("Traceback", "CRITICAL", "Errno", "ENOENT",
                  "ECONNREFUSED", "KeyboardInterrupt"):
        testcase.assertNotIn(noise, text)


class TestFollow(unittest.TestCase):
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

    def cli(self, *args, timeout=60):
        return self.endpoint.cli(*args, timeout=timeout)

    def sleep_params(self, task_id, seconds, steps=10):
        return json.dumps({"task_id": task_id, "seconds": seconds,
                           "steps": steps})

    def test_call_help_explains_every_argument(self):
        done = self.cli("call", "--help")
        self.assertEqual(0, done.returncode, done.stderr)
        text = " ".join(done.stdout.split())
        for needle in ("AGENT", "METHOD", "PARAMS", "--timeout", "--json",
                       "--no-follow", "the agent's id", "task_id",
                       "non-removable disk of at least 4 GiB",
                       "3 stopped following"):
            self.assertIn(needle, text)

    def test_timeout_stops_following_with_exit_3(self):
        done = self.cli("call", AGENT_ID, "testing.sleep",
                        self.sleep_params("follow-timeout", 3), "--timeout",
                        "0.5")
        self.assertEqual(3, done.returncode, done.stdout + done.stderr)
        last = done.stderr.strip().splitlines()[-1]
        self.assertEqual(
            "teeth-endpoint: stopped following (--timeout 0.5s passed); "
            "task follow-timeout is still running, follow it with "
            "`teeth-endpoint watch %s follow-timeout`" % AGENT_ID, last)
        self.assertNotIn("InternalError", done.stderr)
        # The task went on; watch follows it to its end.
        watched = self.cli("watch", AGENT_ID, "follow-timeout", "--json")
        self.assertEqual(0, watched.returncode, watched.stderr)
        lines = harness.parse_json_lines(watched.stdout)
        self.assertEqual("complete", lines[-1]["state"])
        self.assertEqual({"slept": 3, "steps": 10}, lines[-1]["result"])

    def test_ctrl_c_stops_following_with_exit_3(self):
        argv = harness.endpoint_cli_argv(
            self.endpoint.config_path, "call", AGENT_ID, "testing.sleep",
            self.sleep_params("follow-sigint", 4, steps=40))
        process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env=harness.plugin_env(),
                                   cwd=self.endpoint.workdir,
                                   stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        # The first progress line: the task runs and is being followed.
        first = process.stderr.readline()
        self.assertIn("follow-sigint [", first)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        self.assertEqual(3, process.returncode, out + err)
        self.assertIn("stopped following (interrupted); task follow-sigint "
                      "is still running, follow it with `teeth-endpoint "
                      "watch %s follow-sigint`" % AGENT_ID, err)
        for noise in ("Traceback", "CRITICAL", "KeyboardInterrupt"):
            self.assertNotIn(noise, err)
        statuses = {agent["agent_id"]: agent for agent in
                    self.endpoint.agents()}[AGENT_ID]["tasks"]
        states = {status["task_id"]: status["state"] for status in statuses}
        self.assertIn(states["follow-sigint"], ("running", "complete"))

    def test_a_fast_task_bar_ends_at_100(self):
        done = self.cli("call", AGENT_ID, "testing.sleep",
                        self.sleep_params("fast-1", 0, steps=1))
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertRegex(done.stderr, r"(?m)^fast-1 \[#+\] 100\.0%  done$")
        self.assertEqual("complete", json.loads(done.stdout)["state"])

    def test_call_json_is_one_object_a_line(self):
        done = self.cli("call", AGENT_ID, "testing.sleep",
                        self.sleep_params("json-1", 1, steps=5), "--json")
        self.assertEqual(0, done.returncode, done.stderr)
        lines = harness.parse_json_lines(done.stdout)
        self.assertEqual("complete", lines[-1]["state"])
        self.assertEqual({AGENT_ID}, {line["agent_id"] for line in lines})
        self.assertTrue(all(line["state"] == "running"
                            for line in lines[:-1]), lines)
        self.assertEqual("", done.stderr)

    def test_call_json_into_a_closed_pipe_ends_quietly(self):
        # A thousand updates, more than a pipe holds: the reader (head)
        # is gone long before the task ends, and so is the call, exit 141
        # with nothing on stderr (the task goes on).
        argv = " ".join(shlex.quote(word) for word in
                        harness.endpoint_cli_argv(
                            self.endpoint.config_path, "call", AGENT_ID,
                            "testing.sleep",
                            self.sleep_params("pipe-1", 20, steps=1000),
                            "--json"))
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", '%s 2>"$0" | head -c 10; '
             'echo " ${PIPESTATUS[0]}"' % argv,
             os.path.join(self.workdir, "pipe-1.err")],
            capture_output=True, text=True, timeout=120,
            env=harness.plugin_env(), stdin=subprocess.DEVNULL)
        self.assertEqual('{"agent_id 141\n', done.stdout, done.stderr)
        self.assertLess(time.monotonic() - started, 20)
        with open(os.path.join(self.workdir, "pipe-1.err")) as stream:
            self.assertEqual("", stream.read())

    def test_watch_all_shows_every_running_task(self):
        # Long tasks and --timeout: the view is checked while both run,
        # whatever the load (their ends are unit-tested in test_follow).
        for task_id in ("all-1", "all-2"):
            started = self.cli("call", AGENT_ID, "testing.sleep",
                               self.sleep_params(task_id, 90, steps=900),
                               "--no-follow")
            self.assertEqual(0, started.returncode, started.stderr)
        done = self.cli("watch", "--all", "--json", "--timeout", "2")
        self.assertEqual(3, done.returncode, done.stderr)
        lines = harness.parse_json_lines(done.stdout)
        seen = {(line["agent_id"], line["task_id"]) for line in lines
                if line["state"] == "running"}
        self.assertLessEqual({(AGENT_ID, "all-1"), (AGENT_ID, "all-2")},
                             seen)
        self.assertRegex(done.stderr, r"stopped watching \(--timeout 2s "
                                      r"passed\); \d+ task\(s\) still "
                                      r"running")
        plain = self.cli("watch", "--all", "--timeout", "1")
        self.assertEqual(3, plain.returncode, plain.stderr)
        self.assertRegex(plain.stderr, r"(?m)^%s all-1 \[" % AGENT_ID)

    def test_watch_usage_errors_are_one_line(self):
        for args in (("watch", AGENT_ID), ("watch",),
                     ("watch", "--all", AGENT_ID),
                     ("watch", AGENT_ID, "t", "--timeout", "0"),
                     ("call", AGENT_ID, "ping", "[1]"),
                     ("call", AGENT_ID, "testing.sleep", "{"),
                     ("call", AGENT_ID, "ping", "{}", "--timeout", "0"),
                     ("call", AGENT_ID, "ping", "{}", "--timeout", "nan"),
                     ("agents", "--limit", "0")):
            with self.subTest(args=args):
                done = self.cli(*args)
                self.assertEqual(2, done.returncode, args)
                self.assertEqual("", done.stdout)
                assert_one_clean_line(self, done.stderr)
                self.assertTrue(done.stderr.startswith("teeth-endpoint: "),
                                done.stderr)

    def test_invalid_device_path_does_not_quote_a_regex(self):
        params = json.dumps({"task_id": "dev-1", "devices": ["sda"]})
        done = self.cli("call", AGENT_ID, "testing.disk", params)
        self.assertEqual(1, done.returncode, done.stdout + done.stderr)
        assert_one_clean_line(self, done.stderr)
        self.assertIn("devices[0]: is not a device path", done.stderr)
        self.assertNotIn("[A-Za-z", done.stderr)


class TestServeLifecycle(unittest.TestCase):
    def test_agents_without_a_server_says_so(self):
        workdir = harness.make_workdir(self)
        config = os.path.join(workdir, "none.conf")
        socket_path = os.path.join(workdir, "absent", "control.sock")
        harness.write_config(config, harness.endpoint_sections(socket_path))
        done = harness.run_command(harness.endpoint_cli_argv(
            config, "agents"))
        self.assertEqual(1, done.returncode)
        assert_one_clean_line(self, done.stderr)
        self.assertIn("the server is not running at %s (start it with "
                      "`teeth-endpoint serve`" % socket_path, done.stderr)

    def test_second_serve_is_refused_and_the_first_keeps_serving(self):
        workdir = harness.make_workdir(self)
        first = harness.start_endpoint(self, workdir=workdir)
        # The same port.
        same_port = harness.run_command(
            [sys.executable, "-m", "teeth_agent.cmd.endpoint",
             "--config-file", self._config(workdir, "same-port",
                                           first.port), "serve"])
        self.assertEqual(2, same_port.returncode, same_port.stderr)
        self.assertIn("cannot start: port %d on 127.0.0.1 is in use"
                      % first.port, same_port.stderr)
        self.assertNotIn("Traceback", same_port.stderr)
        # Another port, the same control socket.
        same_socket = harness.run_command(
            [sys.executable, "-m", "teeth_agent.cmd.endpoint",
             "--config-file", self._config(workdir, "same-socket", 0,
                                           first.control_socket), "serve"])
        self.assertEqual(2, same_socket.returncode, same_socket.stderr)
        self.assertIn("a running teeth-endpoint serve holds the control "
                      "socket %s" % first.control_socket, same_socket.stderr)
        self.assertNotIn("Traceback", same_socket.stderr)
        # The first server is still reached through its socket.
        listed = first.cli("agents", "--json")
        self.assertEqual(0, listed.returncode, listed.stderr)

    def _config(self, workdir, name, port, control_socket=None):
        path = os.path.join(workdir, name + ".conf")
        sections = harness.endpoint_sections(
            control_socket or os.path.join(workdir, name, "control.sock"))
        sections["endpoint"]["listen_port"] = port
        harness.write_config(path, sections)
        return path

    def test_sigterm_is_logged_and_the_socket_removed(self):
        workdir = harness.make_workdir(self)
        endpoint = harness.start_endpoint(self, workdir=workdir)
        agent = harness.start_agent(self, [endpoint.address],
                                    workdir=workdir)
        agent.wait_for_output(r"connected to endpoint")
        agent.process.send_signal(signal.SIGTERM)
        self.assertEqual(0, agent.wait_exit())
        self.assertIn("teeth-agent shutting down: SIGTERM received",
                      agent.output())
        self.assertIn("teeth-agent stopped", agent.output())
        endpoint.process.send_signal(signal.SIGTERM)
        self.assertEqual(0, endpoint.wait_exit())
        output = endpoint.output()
        self.assertRegex(output, r"teeth-endpoint started \(pid \d+\)")
        self.assertIn("teeth-endpoint shutting down: SIGTERM received",
                      output)
        self.assertIn("teeth-endpoint stopped", output)
        self.assertFalse(os.path.exists(endpoint.control_socket))

    def test_a_stale_socket_is_removed_at_start(self):
        workdir = harness.make_workdir(self)
        dead = harness.start_endpoint(self, workdir=workdir)
        dead.process.kill()
        dead.wait_exit()
        self.assertTrue(os.path.exists(dead.control_socket))
        again = harness.EndpointProcess(workdir)
        self.addCleanup(again.stop)
        # The same control socket as the dead one.
        self.assertEqual(dead.control_socket, again.control_socket)
        again.wait_ready()
        self.assertIn("removed the stale control socket", again.output())
        deadline = time.monotonic() + 30
        while True:
            listed = again.cli("agents")
            if listed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(0, listed.returncode, listed.stderr)
        self.assertTrue(re.search(r"no agents", listed.stdout))

    def test_agent_says_an_unreachable_endpoint_once(self):
        workdir = harness.make_workdir(self)
        sock, port = harness.refused_port()
        self.addCleanup(sock.close)
        agent = harness.start_agent(self, ["127.0.0.1:%d" % port],
                                    workdir=workdir)
        agent.wait_for_output(r"cannot connect to endpoint", count=2)
        lines = [line for line in agent.output().splitlines()
                 if "cannot connect to endpoint" in line]
        for line in lines:
            self.assertTrue(line.endswith(
                "cannot connect to endpoint 127.0.0.1:%d: connection "
                "refused" % port), line)
            for noise in ("ConnectionRefusedError", "ECONNREFUSED",
                          "Errno"):
                self.assertNotIn(noise, line)
        agent.process.send_signal(signal.SIGINT)
        self.assertEqual(0, agent.wait_exit())
        self.assertIn("teeth-agent shutting down: interrupted (SIGINT)",
                      agent.output())
