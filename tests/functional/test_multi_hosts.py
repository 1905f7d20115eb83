"""Two ``serve`` processes on two "machines"; commands routed between
them over the peer link (TLS with endpoint certificates both ways).

Endpoint processes A and B run in two network namespaces joined by a veth
pair the test creates, each with a host name of its own, and share one
database: a SQLite file (the default database under one state_dir), and a
throwaway PostgreSQL cluster reached over its Unix socket. Each listens for
peers on its veth address (``[endpoint] peer_listen``) with a certificate
of the session CA that names that address. An agent in B's namespace is
held by B; ``teeth-endpoint call`` and ``watch`` given to A reach it
through B's peer port, and the answer and the progress come back.

Also here: what ``serve`` says for peer-link settings that cannot work
(one line, exit 2), which needs no namespace.
"""

import json
import os
import socket
import sqlite3
import unittest

from teeth_agent import pki
from tests.functional import harness
from tests.functional import multi
from tests.functional import postgres

TASK = {"task_id": "far-1", "seconds": 2, "steps": 20}


#: The pid of the process holding an agent (its id is checked by the
#: callers to be a plain word).
HOLDER_SQL = ("SELECT p.pid FROM agents a JOIN endpoint_processes p ON "
              "a.process_id = p.id WHERE a.agent_id = '%s' AND a.connected")


class _AcrossHosts:
    """The scenarios; subclasses say which database A and B share."""

    def database(self):
        """The ``[database] connection`` of both processes (None: the
        SQLite file under the shared state_dir)."""
        raise NotImplementedError

    def holder_pids(self, agent_id):
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.hosts = multi.Hosts(self)
        self.workdir = harness.make_workdir(self)
        self.url = self.database()

    def serve(self, index, name, peer=True):
        """Endpoint process ``name`` in namespace ``index``, its peer port
        (unless not ``peer``) on the veth address that its own certificate
        names."""
        workdir = os.path.join(self.workdir, name)
        os.mkdir(workdir)
        overrides = {"endpoint": {
            "state_dir": os.path.join(self.workdir, "state")}}
        if self.url:
            overrides["database"] = {"connection": self.url}
        if peer:
            address = self.hosts.address(index)
            certificate = pki.make_server_certificate(
                harness.tls_material().ca,
                [address, "127.0.0.1", "localhost"],
                os.path.join(workdir, "pki"))
            overrides["endpoint"].update({
                "tls_cert_file": certificate.cert_path,
                "tls_key_file": certificate.key_path,
                "tls_ca_file": harness.tls_material().ca_file,
                "peer_listen": "%s:0" % address})
        process = multi.start_serve(
            self, workdir, overrides,
            self.hosts.run(index, "teeth-host-%s" % name))
        if peer:
            process.peer_address = process.wait_for_output(
                r"teeth-endpoint peer port (\S+)").group(1)
        return process

    def wait_held_in_database(self, process, agent_id):
        """Until the shared database names ``process`` as the holder."""
        self.assertRegex(agent_id, r"^[\w-]+$")
        harness.wait_until(
            lambda: self.holder_pids(agent_id) == [process.pid], 15,
            what="the holder in the database")

    def cli(self, process, *args):
        return harness.run_command(
            harness.endpoint_cli_argv(process.own_config(), *args),
            timeout=90, cwd=self.workdir)

    def test_call_and_watch_through_a_reach_the_agent_held_by_b(self):
        first = self.serve(0, "a")
        second = self.serve(1, "b")
        self.assertEqual("tls:%s:" % self.hosts.address(1),
                         second.peer_address.rsplit(":", 1)[0] + ":")
        agent = multi.AgentIn(self.workdir, [second.address],
                              argv_prefix=self.hosts.run(1, "teeth-host-b"))
        self.addCleanup(agent.stop)

        def held_by_b():
            done = self.cli(second, "agents", "--json")
            return [entry for entry in harness.parse_json_lines(done.stdout)
                    if entry["connected"] and entry["source"] == "process"]
        try:
            agent_id = harness.wait_until(
                held_by_b, harness.START_TIMEOUT, what="the agent on B"
            )[0]["agent_id"]
        except AssertionError:
            raise AssertionError("agent:\n%s" % agent.output()[-3000:])
        self.wait_held_in_database(second, agent_id)

        done = self.cli(first, "call", agent_id, "testing.sleep",
                        json.dumps(TASK), "--json", "--timeout", "60")
        self.assertEqual(0, done.returncode, done.stderr + first.output()
                         [-3000:])
        # One JSON line per update, the final state last.
        updates = harness.parse_json_lines(done.stdout)
        self.assertEqual("complete", updates[-1]["state"])
        self.assertEqual({"slept": 2, "steps": 20}, updates[-1]["result"])
        self.assertTrue(any(update.get("state") == "running" and
                            update.get("percent") for update in updates),
                        done.stdout)

        second_task = dict(TASK, task_id="far-2", seconds=3)
        started = self.cli(first, "call", agent_id, "testing.sleep",
                           json.dumps(second_task), "--no-follow", "--json")
        self.assertEqual(0, started.returncode, started.stderr)
        watched = self.cli(first, "watch", agent_id, "far-2", "--json",
                           "--timeout", "60")
        self.assertEqual(0, watched.returncode, watched.stderr)
        updates = harness.parse_json_lines(watched.stdout)
        self.assertEqual("complete", updates[-1]["state"])
        self.assertTrue(any(update.get("state") == "running"
                            for update in updates), watched.stdout)
        # Over the peer link, not a control socket: B served A's peer
        # connection, and A never said it could not reach B.
        self.assertNotIn("cannot reach", first.output())
        self.assertNotIn("refusing the peer link", second.output())

    def test_a_holder_whose_peer_port_is_off_is_refused_by_name(self):
        first = self.serve(0, "a")
        second = self.serve(1, "b", peer=False)
        agent = multi.AgentIn(self.workdir, [second.address],
                              argv_prefix=self.hosts.run(1, "teeth-host-b"))
        self.addCleanup(agent.stop)
        agent_id = harness.wait_until(
            lambda: [entry for entry in harness.parse_json_lines(self.cli(
                second, "agents", "--json").stdout)
                if entry["connected"] and entry["source"] == "process"],
            harness.START_TIMEOUT, what="the agent on B")[0]["agent_id"]
        self.wait_held_in_database(second, agent_id)
        done = self.cli(first, "call", agent_id, "ping")
        self.assertEqual(1, done.returncode, done.stderr)
        self.assertIn("on host teeth-host-b", done.stderr)
        self.assertIn("no peer port", done.stderr)


class TestAcrossHostsSQLite(_AcrossHosts, unittest.TestCase):
    def database(self):
        return None

    def holder_pids(self, agent_id):
        path = os.path.join(self.workdir, "state", "endpoint.sqlite")
        with sqlite3.connect(path, timeout=10) as connection:
            return [row[0] for row in connection.execute(
                HOLDER_SQL % agent_id)]


class TestAcrossHostsPostgres(_AcrossHosts, unittest.TestCase):
    def database(self):
        self.cluster = postgres.start_postgres(self)
        # The Unix socket: it is on the file system every namespace
        # shares, so processes in both reach the one server.
        url = self.cluster.socket_url
        multi.migrate(url)
        return url

    def holder_pids(self, agent_id):
        return [int(line) for line in self.cluster.psql(
            HOLDER_SQL % agent_id).split()]


class TestPeerSettingsRefused(unittest.TestCase):
    """``serve`` with peer-link settings that cannot work: one line
    naming the problem, exit status 2, before it listens."""

    def serve(self, endpoint):
        workdir = harness.make_workdir(self)
        sections = harness.endpoint_sections(
            os.path.join(workdir, "control.sock"), {"endpoint": endpoint})
        config = harness.write_config(os.path.join(workdir, "e.conf"),
                                      sections)
        done = harness.run_command(harness.endpoint_cli_argv(
            config, "serve"), timeout=60)
        self.assertEqual(2, done.returncode, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn("teeth-endpoint listening", done.stdout)
        lines = [line for line in done.stderr.splitlines()
                 if line.startswith("teeth-endpoint:")]
        self.assertEqual(1, len(lines), done.stderr)
        return lines[0]

    def test_plaintext_is_never_a_peer_link(self):
        line = self.serve(dict(harness.PLAINTEXT_ENDPOINT["endpoint"],
                               peer_listen="127.0.0.1:0"))
        self.assertIn("peer_listen needs tls_cert_file", line)

    def test_an_agent_certificate_cannot_serve_peers(self):
        cert, key = harness.tls_material().agent_certificate("machine-p1")
        line = self.serve({"tls_cert_file": cert, "tls_key_file": key,
                           "tls_ca_file": harness.tls_material().ca_file,
                           "peer_listen": "127.0.0.1:0"})
        self.assertIn("is not an endpoint certificate", line)

    def test_typos(self):
        ca = harness.tls_material().ca_file
        self.assertIn("is not host:port", self.serve({
            "tls_ca_file": ca, "peer_listen": "127.0.0.1"}))
        self.assertIn("set peer_advertise", self.serve({
            "tls_ca_file": ca, "peer_listen": "0.0.0.0:0"}))
        self.assertIn("peer_listen needs peer_ca_file or tls_ca_file",
                      self.serve({"peer_listen": "127.0.0.1:0"}))

    def test_a_taken_peer_port(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        line = self.serve({"tls_ca_file": harness.tls_material().ca_file,
                           "peer_listen": "127.0.0.1:%d"
                           % taken.getsockname()[1]})
        self.assertIn("cannot listen for peers on 127.0.0.1:", line)


if __name__ == "__main__":
    unittest.main()
