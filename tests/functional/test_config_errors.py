"""Operator mistakes in the configuration, against the real console scripts.

Each mistake used to be silent or a traceback: an unknown option or section
was ignored (``[power] simulat = true`` started an agent that really
reboots, ``[hardware] device_includes`` one that sees every disk,
``[endpoint] tls_enable = true`` an endpoint serving plaintext), a missing
file or a bad value printed a long traceback. Now ``teeth-agent``,
``teeth-agent inventory`` and every ``teeth-endpoint`` subcommand stop with
one line per problem and status 2, before doing anything.

The files keep ``[power] simulate = true`` and ``[hardware] device_include
= /nonexistent`` next to each typo, so that a regression (the typo ignored
again) starts a harmless agent, which the test then sees connect.
"""

import json
import os
import subprocess
import sys
import unittest

from tests.functional import harness

BIN_DIR = os.path.dirname(sys.executable)
SAMPLES_DIR = os.path.join(harness.REPO_ROOT, "etc", "teeth-agent")


def console_script(name, module):
    """The installed console script ``name``, else ``python -m module``."""
    path = os.path.join(BIN_DIR, name)
    if os.access(path, os.X_OK):
        return [path]
    return [sys.executable, "-m", module]


AGENT = console_script("teeth-agent", "teeth_agent.cmd.agent")
ENDPOINT = console_script("teeth-endpoint", "teeth_agent.cmd.endpoint")


class ConfigCase(unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.workdir = harness.make_workdir(self)
        self.server = harness.start_server(self)
        self.control_socket = os.path.join(self.workdir, "control.sock")

    def agent_config(self, overrides=None, name="agent.conf"):
        sections = harness.agent_sections(
            os.path.join(self.workdir, "state"), [self.server.address],
            overrides)
        return harness.write_config(os.path.join(self.workdir, name),
                                    sections)

    def endpoint_config(self, overrides=None, name="endpoint.conf"):
        return harness.write_config(
            os.path.join(self.workdir, name),
            harness.endpoint_sections(self.control_socket, overrides))

    def run_script(self, argv, timeout=30):
        try:
            return harness.run_command(argv, timeout=timeout,
                                       cwd=self.workdir)
        except subprocess.TimeoutExpired:
            self.fail("%s did not stop: the configuration was accepted"
                      % " ".join(argv))

    def assertRefused(self, done, *expected):
        """Exit status 2, exactly one line on stderr containing every
        ``expected`` piece, no traceback."""
        self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(2, done.returncode, done.stderr + done.stdout)
        lines = done.stderr.splitlines()
        self.assertEqual(1, len(lines), done.stderr)
        for piece in expected:
            self.assertIn(piece, lines[0])
        return lines[0]

    def assertNoAgentConnected(self):
        with self.assertRaises(harness.PeerTimeout):
            self.server.accept(timeout=0.5).close()


class TestAgent(ConfigCase):
    def test_misspelt_simulate_stops_before_connecting(self):
        path = self.agent_config({"power": {"simulat": True}})
        done = self.run_script(AGENT + ["--config-file", path], timeout=20)
        line = self.assertRefused(
            done, path, "[power] simulat is not a known option",
            "did you mean simulate?")
        self.assertTrue(line.startswith("teeth-agent: "), line)
        self.assertNoAgentConnected()

    def test_misspelt_device_include_stops_before_connecting(self):
        path = self.agent_config(
            {"hardware": {"device_includes": "/dev/loop*"}})
        done = self.run_script(AGENT + ["--config-file", path], timeout=20)
        self.assertRefused(done, path,
                           "[hardware] device_includes is not a known option",
                           "did you mean device_include?")
        self.assertNoAgentConnected()

    def test_unknown_section(self):
        path = self.agent_config({"powr": {"simulate": True}})
        done = self.run_script(AGENT + ["--config-file", path], timeout=20)
        self.assertRefused(done, path, "[powr] is not a known section",
                           "did you mean [power]?")
        self.assertNoAgentConnected()

    def test_typo_in_a_config_dir_file(self):
        path = self.agent_config()
        conf_dir = os.path.join(self.workdir, "agent.conf.d")
        os.mkdir(conf_dir)
        harness.write_config(os.path.join(conf_dir, "50-tls.conf"),
                             {"tls": {"enable": True}})
        done = self.run_script(AGENT + ["--config-file", path,
                                        "--config-dir", conf_dir],
                               timeout=20)
        self.assertRefused(done, "50-tls.conf: [tls] enable is not a known "
                           "option; did you mean enabled?")
        self.assertNoAgentConnected()

    def test_missing_config_file(self):
        missing = os.path.join(self.workdir, "absent.conf")
        done = self.run_script(AGENT + ["--config-file", missing])
        self.assertRefused(done, "configuration file not found", missing)

    def test_a_directory_or_binary_file_is_one_line(self):
        # oslo.config let both through as tracebacks; a --config-dir that
        # is a file was ignored, options and all.
        binary = os.path.join(self.workdir, "binary.conf")
        with open(binary, "wb") as stream:
            stream.write(b"\xff\xfe[power]\nsimulate = true\n")
        for argv, expected in (
                (["--config-file", self.workdir],
                 "configuration file %s is a directory" % self.workdir),
                (["--config-file", binary],
                 "cannot read %s: not UTF-8 text" % binary),
                (["--config-dir", binary],
                 "configuration directory %s is not a directory" % binary)):
            with self.subTest(argv):
                done = self.run_script(AGENT + argv, timeout=20)
                self.assertRefused(done, expected)
        self.assertNoAgentConnected()

    def test_bad_value(self):
        path = self.agent_config({"decom": {"erase_concurrency": "abc"}})
        done = self.run_script(AGENT + ["--config-file", path], timeout=20)
        self.assertRefused(done, path, "[decom] erase_concurrency = abc is "
                           "not valid: invalid literal for int()")
        self.assertNoAgentConnected()

    def test_bad_oslo_log_value(self):
        path = self.agent_config({"DEFAULT": {"debug": "maybe"}})
        done = self.run_script(AGENT + ["--config-file", path], timeout=20)
        self.assertRefused(done, path, "[DEFAULT] debug = maybe is not "
                           "valid")

    def test_valid_config_with_oslo_log_options_starts(self):
        log_file = os.path.join(self.workdir, "a.log")
        agent = harness.start_agent(
            self, [self.server.address], {"DEFAULT": {
                "debug": True, "log_file": log_file, "use_stderr": False,
                "log_date_format": "%H:%M:%S",
                "default_log_levels": "stevedore=WARN"}},
            workdir=self.workdir)
        peer, _ = harness.accept_handshake(self.server,
                                           timeout=harness.START_TIMEOUT)
        peer.close()
        self.assertIsNone(agent.process.poll())
        self.assertTrue(os.path.exists(log_file))


class TestInventory(ConfigCase):
    def test_misspelt_device_include(self):
        path = self.agent_config(
            {"hardware": {"device_includes": "/dev/loop*"}})
        done = self.run_script(AGENT + ["--config-file", path, "inventory"])
        self.assertRefused(done, "[hardware] device_includes",
                           "did you mean device_include?")
        self.assertEqual("", done.stdout)

    def inventory(self, *config_files):
        argv = list(AGENT)
        for path in config_files:
            argv += ["--config-file", path]
        done = self.run_script(argv + ["inventory"], timeout=60)
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        return json.loads(done.stdout)

    def test_harness_config_passes(self):
        report = self.inventory(self.agent_config())
        self.assertEqual([], report["inventory"]["disks"])

    def test_sample_config_passes(self):
        # The sample is all comments; the second file keeps the inventory
        # off the host's disks (and gives --config-file twice).
        sample = os.path.join(SAMPLES_DIR, "teeth-agent.conf.sample")
        override = harness.write_config(
            os.path.join(self.workdir, "override.conf"),
            {"hardware": {"device_include": "/nonexistent"}})
        report = self.inventory(sample, override, override)
        self.assertEqual([], report["inventory"]["disks"])

    def test_demo_config_passes(self):
        sys.path.insert(0, harness.REPO_ROOT)
        self.addCleanup(sys.path.remove, harness.REPO_ROOT)
        from tools import demo
        path = demo.Demo(self.workdir, full_cycle=False).agent_config(
            self.server.port, ["/nonexistent"],
            harness.tls_material().ca_file)
        report = self.inventory(path)
        self.assertEqual([], report["inventory"]["disks"])


class TestEndpoint(ConfigCase):
    def test_misspelt_tls_enabled_refused_by_every_subcommand(self):
        path = self.endpoint_config({"endpoint": {"tls_enable": True}})
        for args in (["serve"], ["agents"], ["call", "some-agent", "ping"]):
            done = self.run_script(ENDPOINT + ["--config-file", path] + args,
                                   timeout=20)
            line = self.assertRefused(
                done, path, "[endpoint] tls_enable is not a known option",
                "did you mean tls_enabled?")
            self.assertTrue(line.startswith("teeth-endpoint: "), line)
        self.assertFalse(os.path.exists(self.control_socket))

    def test_unknown_section(self):
        path = self.endpoint_config({"tls": {"enabled": True}})
        done = self.run_script(ENDPOINT + ["--config-file", path, "serve"],
                               timeout=20)
        self.assertRefused(done, path, "[tls] is not a known section")

    def test_missing_config_file(self):
        missing = os.path.join(self.workdir, "absent.conf")
        done = self.run_script(ENDPOINT + ["--config-file", missing,
                                           "agents"])
        self.assertRefused(done, "configuration file not found", missing)

    def test_a_binary_file_is_one_line(self):
        binary = os.path.join(self.workdir, "binary.conf")
        with open(binary, "wb") as stream:
            stream.write(b"[endpoint]\nlisten_port = \xff\n")
        done = self.run_script(ENDPOINT + ["--config-file", binary, "serve"],
                               timeout=20)
        self.assertRefused(done, "cannot read %s: not UTF-8 text (byte 0xff"
                           % binary)

    def test_bad_value(self):
        path = self.endpoint_config({"endpoint": {"listen_port": "http"}})
        done = self.run_script(ENDPOINT + ["--config-file", path, "serve"],
                               timeout=20)
        self.assertRefused(done, path, "[endpoint] listen_port = http is "
                           "not valid")

    def test_bad_task_retention(self):
        for value, reason in (("-1", "-1 is not valid"),
                              ("90 days", "90 days is not valid")):
            path = self.endpoint_config(
                {"database": {"task_retention": value}})
            for args in (["serve"], ["db", "prune"]):
                done = self.run_script(
                    ENDPOINT + ["--config-file", path] + args, timeout=20)
                self.assertRefused(done, path,
                                   "[database] task_retention = " + reason)
        path = self.endpoint_config({"database": {"task_retension": 30}})
        done = self.run_script(ENDPOINT + ["--config-file", path, "serve"],
                               timeout=20)
        self.assertRefused(done, "[database] task_retension is not a known "
                           "option", "did you mean task_retention?")

    def accepted(self, *config_files):
        argv = list(ENDPOINT)
        for path in config_files:
            argv += ["--config-file", path]
        done = self.run_script(argv + ["agents"])
        # No server is running: the configuration was accepted when the
        # command gets as far as trying to reach it.
        self.assertEqual(1, done.returncode, done.stderr)
        self.assertIn("the server is not running at", done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_harness_config_passes(self):
        self.accepted(self.endpoint_config(
            {"DEFAULT": {"debug": True, "log_file": os.path.join(
                self.workdir, "e.log")}}))

    def test_sample_config_passes(self):
        override = harness.write_config(
            os.path.join(self.workdir, "override.conf"),
            {"endpoint": {"control_socket": self.control_socket}})
        self.accepted(os.path.join(SAMPLES_DIR,
                                   "teeth-endpoint.conf.sample"), override)
