"""Several ``serve`` processes on one port with ``[endpoint] reuse_port``.

Real processes on 127.0.0.1: two share a fixed port and the kernel spreads
agents over both; each opens its own control socket and ``agents`` finds
one; a process without the option cannot take a held port; when one of the
two is killed the other keeps taking agents on the port.
"""

import os
import unittest

from tests.functional import harness
from tests.functional import multi

#: Enough links that both processes get some (the kernel hashes each
#: connection's addresses; all of them on one process has odds 2**-23).
LINKS = 24


def handshake(port, agent_id):
    peer = harness.connect_peer(port, name=agent_id)
    answer = peer.call("handshake", {"agent_id": agent_id,
                                     "protocol_versions": ["v1"]})
    if "result" not in answer:
        raise AssertionError("handshake of %s refused: %r"
                             % (agent_id, answer))
    return peer


class TestSharedPort(unittest.TestCase):
    def setUp(self):
        self.workdir = harness.make_workdir(self)
        self.port = harness.free_port()
        self.overrides = {"endpoint": {"listen_port": self.port,
                                       "reuse_port": True,
                                       "tls_enabled": False}}

    def start(self, overrides=None):
        return multi.start_serve(self, self.workdir,
                                 overrides or self.overrides)

    def listing(self, process):
        done = process.cli_on("agents", "--json", timeout=30)
        self.assertEqual(0, done.returncode, done.stderr)
        return harness.parse_json_lines(done.stdout)

    def held_by(self, process):
        return {agent["agent_id"] for agent in self.listing(process)
                if agent["connected"] and agent["source"] == "process"}

    def test_two_processes_share_one_port_and_the_agents(self):
        first, second = self.start(), self.start()
        self.assertEqual(self.port, first.port)
        self.assertEqual(self.port, second.port)
        self.assertNotEqual(first.control_socket, second.control_socket)
        self.assertEqual(
            {"control.%d.sock" % first.pid, "control.%d.sock" % second.pid},
            {os.path.basename(first.control_socket),
             os.path.basename(second.control_socket)})
        peers = [handshake(self.port, "shared-%02d" % index)
                 for index in range(LINKS)]
        for peer in peers:
            self.addCleanup(peer.close)
        on_first, on_second = self.held_by(first), self.held_by(second)
        self.assertEqual(set(), on_first & on_second)
        self.assertEqual(LINKS, len(on_first | on_second))
        self.assertTrue(on_first and on_second,
                        "the kernel gave every agent to one process: %s / "
                        "%s" % (sorted(on_first), sorted(on_second)))
        # Either process lists the whole fleet: the agents the other holds
        # come from the database, connected, with the holder's name.
        for process, other, others in ((first, second, on_second),
                                       (second, first, on_first)):
            def fleet_seen(process=process, other=other, others=others):
                fleet = {agent["agent_id"]: agent
                         for agent in self.listing(process)}
                return set(fleet) == on_first | on_second and all(
                    (fleet[agent_id]["source"], fleet[agent_id]["connected"],
                     (fleet[agent_id]["process"] or "").rsplit(":", 1)[-1])
                    == ("database", True, str(other.pid))
                    for agent_id in others)
            # The holder writes its connects within [database]
            # flush_interval.
            harness.wait_until(fleet_seen, 30, interval=0.5,
                               what="the fleet as process %d lists it"
                               % process.pid)
        # The configured path names no process: a command finds one.
        done = harness.run_command(harness.endpoint_cli_argv(
            first.config_path, "agents", "--json"), timeout=30)
        self.assertEqual(0, done.returncode, done.stderr)

        first.kill()
        late = [handshake(self.port, "late-%02d" % index)
                for index in range(4)]
        for peer in late:
            self.addCleanup(peer.close)
        self.assertLessEqual({"late-%02d" % index for index in range(4)},
                             self.held_by(second))

    def test_a_process_without_reuse_port_cannot_take_the_port(self):
        self.start()
        workdir = harness.make_workdir(self)
        lone = harness.EndpointProcess(workdir, {"endpoint": {
            "listen_port": self.port, "tls_enabled": False}})
        self.addCleanup(lone.stop)
        self.assertNotEqual(0, lone.wait_exit())
        self.assertIn("port %d on 127.0.0.1 is in use" % self.port,
                      lone.output())
