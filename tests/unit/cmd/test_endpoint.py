"""teeth_agent.cmd.endpoint: ``issue-ca`` and ``issue-cert``, and how
``agents`` and ``call`` show what the server answers (the server itself is
faked)."""

import argparse
import io
import json
import os
import shutil
import tempfile
from unittest import mock

from cryptography import x509

from teeth_agent.cmd import endpoint as endpoint_cmd
from teeth_agent.cmd import usage
from teeth_agent.endpoint.web import auth
from teeth_agent import pki
from teeth_agent import transport
from tests import base
from tests.unit.cmd import samples


class FakeServer:
    """The control connection: answers ``agents`` from ``pages``; an
    exception in ``pages`` is raised instead of answering."""

    def __init__(self, pages):
        self.pages = list(pages)
        self.calls = []
        self.closed = False

    def call(self, method, params, timeout=None):
        self.calls.append((method, params))
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    def close(self):
        self.closed = True


def read_cert(path):
    with open(path, "rb") as stream:
        return x509.load_pem_x509_certificate(stream.read())


def agents_conf(json_lines=False, limit=None):
    return mock.Mock(command=argparse.Namespace(json=json_lines, limit=limit,
                                                forget=None))


class ListAgentsTest(base.TestCase):
    def list_agents(self, pages, stdout, **conf):
        server = FakeServer(pages)
        with mock.patch.object(endpoint_cmd, "_connect",
                               return_value=server), \
                mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", io.StringIO()) as stderr:
            code = endpoint_cmd.list_agents(agents_conf(**conf))
        self.assertTrue(server.closed)
        return code, stdout.getvalue(), stderr.getvalue(), server

    def test_plain_table_over_pages(self):
        pages = [{"agents": [samples.agent("a-1")], "next": "a-1"},
                 {"agents": [samples.agent("a-2", tls=False)]}]
        code, out, _, server = self.list_agents(pages, io.StringIO())
        self.assertEqual(0, code)
        lines = out.splitlines()
        self.assertEqual(3, len(lines), out)
        self.assertTrue(lines[0].startswith("AGENT "))
        self.assertTrue(lines[1].startswith("a-1 "))
        self.assertIn("PLAINTEXT", lines[2])
        self.assertEqual([("agents", {}), ("agents", {"after": "a-1"})],
                         server.calls)

    def test_no_agents(self):
        code, out, _, _ = self.list_agents([{"agents": []}], io.StringIO())
        self.assertEqual((0, "no agents\n"), (code, out))

    def test_json_lines(self):
        pages = [{"agents": [samples.agent("a-\x1b")]}]
        code, out, _, _ = self.list_agents(pages, io.StringIO(),
                                           json_lines=True)
        self.assertEqual(0, code)
        self.assertNotIn("\x1b", out)
        self.assertEqual("a-\x1b", json.loads(out)["agent_id"])

    def test_a_partial_listing_is_warned_about_once(self):
        held = dict(samples.agent("a-2"), source="database",
                    process="host-b:4242")
        pages = [{"agents": [samples.agent("a-1")], "next": "a-1",
                  "partial": "the database could not be read: \x1b"},
                 {"agents": [held], "partial": "the database could not be "
                  "read: \x1b"}]
        code, out, err, _ = self.list_agents(pages, io.StringIO())
        self.assertEqual(0, code)
        self.assertEqual(1, err.count("teeth-endpoint: warning: "), err)
        self.assertIn("the database could not be read", err)
        self.assertNotIn("\x1b", err)
        self.assertIn("on host-b:4242", out.splitlines()[2])

    def test_terminal_table_is_drawn_before_an_error(self):
        pages = [{"agents": [samples.agent("a-1")], "next": "a-1"},
                 transport.ConnectionLost("server went away")]
        code, out, err, _ = self.list_agents(pages, samples.Terminal())
        self.assertEqual(1, code)
        self.assertIn("a-1", out)
        self.assertNotIn("no agents", out)
        self.assertIn("server went away", err)


class TestIssueCommands(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="teeth-pki-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def run_main(self, *argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch.object(endpoint_cmd.log, "setup"), \
                mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", stderr):
            code = endpoint_cmd.main(["--config-dir", self.dir] + list(argv))
        return code, stdout.getvalue(), stderr.getvalue()

    def test_issue_ca_then_certificates(self):
        ca_dir = os.path.join(self.dir, "ca")
        code, out, _ = self.run_main("issue-ca", ca_dir)
        self.assertEqual(0, code)
        self.assertIn(os.path.join(ca_dir, pki.CA_CERT), out)
        ca_args = ["--ca-cert", os.path.join(ca_dir, pki.CA_CERT),
                   "--ca-key", os.path.join(ca_dir, pki.CA_KEY)]
        code, _, _ = self.run_main("issue-cert", *ca_args, "--agent-id",
                                   "rack1-node7", "--out",
                                   os.path.join(self.dir, "node7"))
        self.assertEqual(0, code)
        cert = read_cert(os.path.join(self.dir, "node7", pki.AGENT_CERT))
        self.assertIn("teeth-agent:rack1-node7", cert.extensions
                      .get_extension_for_class(x509.SubjectAlternativeName)
                      .value.get_values_for_type(
                          x509.UniformResourceIdentifier))
        code, _, _ = self.run_main("issue-cert", *ca_args, "--server",
                                   "10.0.0.5", "--server", "ep.example",
                                   "--out", os.path.join(self.dir, "ep"))
        self.assertEqual(0, code)
        cert = read_cert(os.path.join(self.dir, "ep", pki.SERVER_CERT))
        self.assertEqual(["ep.example"], cert.extensions
                         .get_extension_for_class(
                             x509.SubjectAlternativeName)
                         .value.get_values_for_type(x509.DNSName))

    def test_issue_json_is_one_object_naming_the_files(self):
        ca_dir = os.path.join(self.dir, "ca")
        code, out, _ = self.run_main("issue-ca", ca_dir, "--json")
        self.assertEqual(0, code)
        self.assertEqual(1, len(out.splitlines()), out)
        self.assertEqual({"cert": os.path.join(ca_dir, pki.CA_CERT),
                          "key": os.path.join(ca_dir, pki.CA_KEY)},
                         json.loads(out))
        ca_args = ["--ca-cert", os.path.join(ca_dir, pki.CA_CERT),
                   "--ca-key", os.path.join(ca_dir, pki.CA_KEY)]
        for which, names in ((["--agent-id", "n1"],
                              (pki.AGENT_CERT, pki.AGENT_KEY)),
                             (["--server", "127.0.0.1"],
                              (pki.SERVER_CERT, pki.SERVER_KEY))):
            out_dir = os.path.join(self.dir, names[0])
            code, out, _ = self.run_main("issue-cert", *ca_args, *which,
                                         "--out", out_dir, "--json")
            self.assertEqual(0, code)
            shown = json.loads(out)
            self.assertEqual({"cert": os.path.join(out_dir, names[0]),
                              "key": os.path.join(out_dir, names[1])},
                             shown)
            self.assertTrue(os.path.exists(shown["cert"]))

    def test_dashboard_token_json(self):
        state = os.path.join(self.dir, "state")
        conf_dir = os.path.join(self.dir, "conf.d")
        os.mkdir(conf_dir)
        with open(os.path.join(conf_dir, "e.conf"), "w") as stream:
            stream.write("[endpoint]\nstate_dir = %s\n" % state)
        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch.object(endpoint_cmd.log, "setup"), \
                mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", stderr):
            code = endpoint_cmd.main(["--config-dir", conf_dir,
                                      "dashboard-token", "--json"])
        self.assertEqual(0, code, stderr.getvalue())
        self.assertEqual(1, len(stdout.getvalue().splitlines()))
        shown = json.loads(stdout.getvalue())
        self.assertEqual(auth.token_path(state), shown["hash_file"])
        self.assertEqual(auth.load_hash(state), auth.digest(shown["token"]))
        self.assertIn("shown only now", stderr.getvalue())
        self.assertNotIn(shown["token"], stderr.getvalue())

    def test_issue_cert_with_a_missing_ca_exits_2_with_one_line(self):
        code, _, err = self.run_main(
            "issue-cert", "--ca-cert", os.path.join(self.dir, "no.pem"),
            "--ca-key", os.path.join(self.dir, "no-key.pem"),
            "--agent-id", "x", "--out", self.dir)
        self.assertEqual(2, code)
        self.assertEqual(1, len(err.strip().splitlines()), err)
        self.assertIn("cannot load", err)


class TestUsageErrors(base.TestCase):
    """A command line that parses but cannot be run: one line on stderr,
    nothing on stdout, exit status 2 (as EXIT_STATUSES says), before any
    server or database is reached."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="teeth-usage-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.conf_dir = os.path.join(self.dir, "conf.d")
        os.mkdir(self.conf_dir)

    def run_main(self, *argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        connect = mock.Mock(side_effect=AssertionError("connected"))
        with mock.patch.object(endpoint_cmd.log, "setup"), \
                mock.patch.object(endpoint_cmd, "_connect", connect), \
                mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", stderr):
            code = endpoint_cmd.main(["--config-dir", self.conf_dir]
                                     + list(argv))
        self.assertFalse(connect.called)
        return code, stdout.getvalue(), stderr.getvalue()

    def test_each_is_one_line_and_exit_2(self):
        state = os.path.join(self.dir, "state")
        cases = (
            (("call", "a", "ping", "{"), "PARAMS is not JSON"),
            (("call", "a", "ping", "[1, 2]"), "PARAMS must be a JSON object"),
            (("call", "a", "ping", '"{}"'), "PARAMS must be a JSON object"),
            (("call", "a", "ping", "{}", "--timeout", "0"),
             "--timeout must be a positive number of seconds, not 0"),
            (("call", "a", "ping", "{}", "--timeout", "-1"), "--timeout"),
            (("call", "a", "ping", "{}", "--timeout", "nan"), "not nan"),
            (("call", "a", "ping", "{}", "--timeout", "inf"), "not inf"),
            (("watch",), "watch needs AGENT and TASK_ID, or --all"),
            (("watch", "a"), "watch needs AGENT and TASK_ID, or --all"),
            (("watch", "a", "t", "--timeout", "0"), "--timeout"),
            (("watch", "--all", "a"), "watch --all takes no AGENT"),
            (("agents", "--limit", "0"),
             "--limit must be a positive number, not 0"),
            (("agents", "--limit", "-5"), "--limit"),
            (("--config-file", self.write_conf(state), "tasks", "--limit",
              "0"), "--limit must be a positive number"),
            (("--config-file", self.write_conf(state), "db", "current",
              "--dry-run"), "go with db prune"),
            (("--config-file", self.write_conf(state), "db", "prune",
              "--older-than", "0"), "--older-than must be a positive"),
        )
        for argv, needle in cases:
            with self.subTest(argv=argv):
                code, out, err = self.run_main(*argv)
                self.assertEqual(2, code, err)
                self.assertEqual("", out)
                self.assertEqual(1, len(err.splitlines()), err)
                self.assertTrue(err.startswith("teeth-endpoint: "), err)
                self.assertIn(needle, err)
                self.assertNotIn("Traceback", err)
        # Nothing made a database for the refused db and tasks commands.
        self.assertFalse(os.path.exists(state))

    def write_conf(self, state):
        path = os.path.join(self.dir, "e.conf")
        with open(path, "w") as stream:
            stream.write("[endpoint]\nstate_dir = %s\n" % state)
        return path

    def test_a_message_with_a_newline_stays_one_line(self):
        err = io.StringIO()
        code = usage.report("prog", usage.UsageError("one\ntwo\r\nthree"),
                            err)
        self.assertEqual((2, "prog: one two three\n"), (code, err.getvalue()))
