"""Routing between endpoint processes, in one test process.

Two real :class:`Endpoint` objects (A and B) with their control servers on
Unix sockets in a temp dir, a simulated agent connected over 127.0.0.1, and
a directory double standing for the database (which process holds which
agent, which final states are recorded).
"""

import ipaddress
import os
import shutil
import tempfile
from unittest import mock

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from teeth_agent.conf import tls as conf_tls
from teeth_agent.db import schema
from teeth_agent.endpoint import control
from teeth_agent.endpoint import peer_link
from teeth_agent.endpoint import peers
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import pki
from teeth_agent import protocol
from teeth_agent import transport
from tests import base

WAIT = 10.0


class FakeDirectory:
    """The database as routing sees it: holder per agent, finals."""

    def __init__(self, process_id, shared):
        self.process_id = process_id
        self.shared = shared

    def register(self):
        pass

    def unregister(self):
        pass

    def heartbeat(self):
        return []

    def holder(self, agent_id):
        process_id = self.shared["holders"].get(agent_id)
        return self.shared["processes"].get(process_id)

    def known(self, agent_id):
        return agent_id in self.shared["known"]

    def task_final(self, agent_id, task_id):
        return self.shared["finals"].get((agent_id, task_id))

    def agent_ids(self):
        if self.shared.get("unreadable"):
            raise schema.DatabaseError("cannot read the agents: gone")
        return sorted(self.shared["rows"])

    def agent_rows(self, agent_ids, task_history):
        self.shared["rows_read"].append(list(agent_ids))
        return {agent_id: self.shared["rows"][agent_id]
                for agent_id in agent_ids if agent_id in self.shared["rows"]}


class SimAgent:
    """An agent link: answers ``testing.sleep`` with running, sends the
    updates it is told to."""

    def __init__(self, port, agent_id="agent-1"):
        self.agent_id = agent_id
        self.calls = []
        self.link = transport.Connection(
            transport.connect("127.0.0.1", port), self.dispatch,
            name="sim agent").start()
        self.link.call("handshake", {"agent_id": agent_id,
                                     "protocol_versions": ["v1"]})

    def dispatch(self, connection, command):
        self.calls.append((command.method, command.params))
        if command.method == "ping":
            return command.params
        if command.method == "testing.sleep":
            return {"task_id": command.params["task_id"],
                    "state": "running"}
        raise protocol.UnknownMethod(command.method)

    def status(self, task_id, state, **fields):
        self.link.call("task_status", dict(fields, task_id=task_id,
                                           state=state))

    def close(self):
        self.link.close()


class Process:
    """One endpoint process: endpoint, control socket, router."""

    def __init__(self, name, tempdir, shared):
        self.name = name
        self.endpoint = endpoint_mod.Endpoint(port=0, keepalive_interval=60)
        self.endpoint.start()
        self.path = os.path.join(tempdir, "control.%s.sock" % name)
        self.directory = FakeDirectory(name, shared)
        self.router = self.make_router()
        self.control = control.ControlServer(self.endpoint, self.path,
                                             router=self.router)
        self.control.start()
        self.start_links()
        self.router.start()
        shared["processes"][name] = peers.Peer(
            name, "host:" + name, "this-host", 1, peers.unix_address(
                self.path), 0.0)

    def make_router(self):
        return peers.PeerRouter(self.endpoint, self.directory,
                                heartbeat_interval=60, host="this-host")

    def start_links(self):
        """What starts between the control socket and the router."""

    def stop(self):
        self.router.stop()
        self.control.stop()
        self.endpoint.stop()


class Client:
    """A control client of one process, keeping the pushed updates."""

    def __init__(self, path):
        self.pushed = []
        self.link = transport.Connection(transport.connect_unix(path),
                                         self.dispatch,
                                         name="client").start()

    def dispatch(self, connection, command):
        if command.method == "task_status":
            self.pushed.append(command.params)
            return {}
        raise protocol.UnknownMethod(command.method)

    def call(self, method, params, timeout=WAIT):
        return self.link.call(method, params, timeout=timeout)


class TwoProcessesTestCase(base.TestCase):
    """Processes A and B on one fake directory; :meth:`process` makes
    one, :meth:`agent_on` connects an agent to one, :meth:`client` opens
    a control client of one."""

    def setUp(self):
        super().setUp()
        self.tempdir = tempfile.mkdtemp(prefix="teeth-peers-")
        self.addCleanup(shutil.rmtree, self.tempdir, True)
        self.shared = {"holders": {}, "processes": {}, "known": set(),
                       "finals": {}, "rows": {}, "rows_read": []}
        self.a = self.process("A")
        self.b = self.process("B")

    def process(self, name):
        process = Process(name, self.tempdir, self.shared)
        self.addCleanup(process.stop)
        return process

    def agent_on(self, process, agent_id="agent-1"):
        agent = SimAgent(process.endpoint.port, agent_id)
        self.addCleanup(agent.close)
        self.assertTrue(process.endpoint.wait_for_agent(agent_id, WAIT))
        self.shared["holders"][agent_id] = process.name
        self.shared["known"].add(agent_id)
        return agent

    def client(self, process):
        client = Client(process.path)
        self.addCleanup(client.link.close)
        return client


class RoutingTest(TwoProcessesTestCase):
    def test_a_call_reaches_the_agent_through_the_holding_process(self):
        agent = self.agent_on(self.b)
        answer = self.client(self.a).call("call", {
            "agent_id": "agent-1", "method": "testing.sleep",
            "params": {"task_id": "t1"}})
        self.assertEqual({"task_id": "t1", "state": "running"},
                         answer["result"])
        self.assertEqual([("testing.sleep", {"task_id": "t1"})],
                         agent.calls)

    def test_the_agents_error_comes_back_with_its_type(self):
        self.agent_on(self.b)
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "agent-1",
                                              "method": "nope"})
        self.assertEqual("UnknownMethod", caught.exception.type)

    def test_a_forwarded_call_is_never_forwarded_again(self):
        # The directory is wrong (says B holds an agent that is on A and
        # B thinks A holds it): no ping-pong, a NotFound from B.
        self.agent_on(self.a)
        self.shared["holders"]["agent-1"] = "B"
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.b).call("call", {
                "agent_id": "agent-1", "method": "testing.sleep",
                "params": {"task_id": "t1"}, "forwarded": True})
        self.assertEqual("NotFound", caught.exception.type)

    def test_an_agent_held_nowhere_is_not_found(self):
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "ghost",
                                              "method": "ping"})
        self.assertEqual("NotFound", caught.exception.type)
        self.assertIn("not connected to any endpoint process",
                      caught.exception.msg)

    def test_a_holder_on_another_host_is_refused_with_its_name(self):
        self.shared["known"].add("far")
        self.shared["holders"]["far"] = "C"
        self.shared["processes"]["C"] = peers.Peer(
            "C", "other:7", "other-host", 7, "unix:/x", 0.0)
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "far",
                                              "method": "ping"})
        self.assertEqual("NotFound", caught.exception.type)
        self.assertIn("on host other-host", caught.exception.msg)

    def test_progress_and_final_state_come_back_through_another_process(
            self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        agent.status("t1", "running", percent=10.0)
        transport.sleep(0.3)
        agent.status("t1", "running", percent=50.0)
        agent.status("t1", "complete", result={"ok": True})
        answer = watching.wait()
        self.assertEqual("complete", answer["status"]["state"])
        self.assertEqual({"ok": True}, answer["status"]["result"])
        self.assertIn(50.0, [status.get("percent")
                             for status in client.pushed])

    def test_following_goes_on_when_the_holder_dies_and_the_agent_moves(
            self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        agent.status("t1", "running", percent=20.0)
        base_wait(lambda: any(s.get("percent") == 20.0
                              for s in client.pushed))
        # B goes away (its links drop); the agent reconnects to A.
        self.b.stop()
        agent.close()
        moved = self.agent_on(self.a)
        moved.status("t1", "running", percent=70.0)
        moved.status("t1", "complete", result={"moved": True})
        answer = watching.wait()
        self.assertEqual({"moved": True}, answer["status"]["result"])
        self.assertIn(70.0, [status.get("percent")
                             for status in client.pushed])

    def test_a_final_state_recorded_by_another_process_ends_the_follow(
            self):
        # The agent is held by nobody now; the database has the end.
        self.shared["known"].add("agent-9")
        watching = transport.spawn(self.client(self.a).call, "watch_task", {
            "agent_id": "agent-9", "task_id": "t9"}, 30)
        transport.sleep(0.2)
        self.shared["finals"][("agent-9", "t9")] = {
            "task_id": "t9", "state": "error", "msg": "disk gone"}
        answer = watching.wait()
        self.assertEqual("error", answer["status"]["state"])
        self.assertTrue(answer["terminal"])

    def test_following_an_unknown_agent_is_not_found(self):
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("watch_task", {"agent_id": "ghost",
                                                    "task_id": "t"})
        self.assertEqual("NotFound", caught.exception.type)

    def test_a_forwarded_watch_answers_gone_when_the_agent_is_not_here(
            self):
        self.shared["known"].add("agent-1")
        answer = self.client(self.b).call("watch_task", {
            "agent_id": "agent-1", "task_id": "t1", "forwarded": True})
        self.assertEqual({"status": None, "gone": True, "terminal": False},
                         answer)


def base_wait(predicate, timeout=WAIT):
    deadline = transport.monotonic() + timeout
    while not predicate():
        if transport.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        transport.sleep(0.02)


class Certificates:
    """A fleet CA with endpoint and agent certificates, a stranger's
    self-signed pair, and a server certificate of the fleet CA without the
    endpoint marker (an image server's)."""

    def __init__(self, directory):
        self.ca, self.endpoint = pki.make_throwaway(directory)
        self.agent = pki.make_agent_certificate(
            self.ca, "machine-1", os.path.join(directory, "agent"))
        stranger_dir = os.path.join(directory, "stranger")
        self.stranger_ca, self.stranger = pki.make_throwaway(stranger_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        unmarked = (pki._leaf_usage(pki._builder(
            pki._name("127.0.0.1"), self.ca.certificate.subject,
            key.public_key(), 1), self.ca)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH,
                 ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(self.ca.key, pki.hashes.SHA256()))
        self.unmarked = pki.write(
            pki.Issued(unmarked, key), os.path.join(directory, "u.pem"),
            os.path.join(directory, "u-key.pem"))

    def settings(self, issued=None, **changes):
        issued = issued or self.endpoint
        settings = {"host": "127.0.0.1", "port": 0,
                    "advertise_host": "127.0.0.1", "advertise_port": None,
                    "cert_file": issued.cert_path,
                    "key_file": issued.key_path,
                    "ca_file": self.ca.cert_path, "minimum_version": "1.2"}
        settings.update(changes)
        return settings

    def context(self, issued=None):
        """A client context trusting the fleet CA, presenting ``issued``."""
        if issued is None:
            return transport.client_tls_context(self.ca.cert_path)
        return transport.client_tls_context(
            self.ca.cert_path, issued.cert_path, issued.key_path)


class TLSProcess(Process):
    """A process on a host of its own whose peers reach it over its peer
    port (TLS) only."""

    def __init__(self, name, tempdir, shared, certificates, link=True):
        self.link = None
        if link:
            self.link = peer_link.PeerLink(certificates.settings())
        self.host = "host-" + name
        super().__init__(name, tempdir, shared)
        shared["processes"][name] = peers.Peer(
            name, "%s:1" % self.host, self.host, 1,
            peers.unix_address(self.path), 0.0,
            self.link.address if self.link else None)

    def make_router(self):
        return peers.PeerRouter(self.endpoint, self.directory,
                                heartbeat_interval=60, host=self.host,
                                peer_link=self.link)

    def start_links(self):
        if self.link is not None:
            self.link.start(self.control)

    def stop(self):
        if self.link is not None:
            self.link.stop()
        super().stop()


def stored_row(agent_id, process=None, last_seen=500.0):
    """An agent row as :meth:`ProcessDirectory.agent_rows` gives it."""
    return {"agent_id": agent_id, "first_seen_at": 100.0,
            "last_seen_at": last_seen, "connected": process is not None,
            "peer": "agent at 10.0.0.9:1" if process else None,
            "tls": True, "identity": "token", "agent_version": "9",
            "handshake": {"agent_version": "9"}, "process": process,
            "holder_heartbeat_at": 600.0 if process else None,
            "tasks": [{"task_id": "t1", "method": "decom.qc",
                       "state": "complete", "result": {"x": 1},
                       "msg": None, "details": None, "percent": None,
                       "eta": None}]}


class FleetListingTest(TwoProcessesTestCase):
    """``agents`` on one process lists the fleet the database records."""

    def listing(self, process, **params):
        return self.client(process).call("agents", params)

    def test_agents_held_elsewhere_and_gone_are_listed_from_the_database(
            self):
        self.agent_on(self.a, "agent-a")
        self.agent_on(self.b, "agent-b")
        self.shared["rows"].update({
            "agent-a": stored_row("agent-a", "host:A"),
            "agent-b": stored_row("agent-b", "host:B"),
            "agent-old": stored_row("agent-old")})
        answer = self.listing(self.a)
        self.assertNotIn("partial", answer)
        self.assertEqual(3, answer["total"])
        entries = {entry["agent_id"]: entry for entry in answer["agents"]}
        self.assertEqual(["agent-a", "agent-b", "agent-old"],
                         [entry["agent_id"] for entry in answer["agents"]])
        # Held here: seen live, not read from the database.
        self.assertEqual("process", entries["agent-a"]["source"])
        self.assertTrue(entries["agent-a"]["connected"])
        self.assertEqual([["agent-b", "agent-old"]],
                         self.shared["rows_read"])
        self.assertEqual(("database", True, "host:B", 600.0), (
            entries["agent-b"]["source"], entries["agent-b"]["connected"],
            entries["agent-b"]["process"], entries["agent-b"]["last_seen"]))
        self.assertEqual(("database", False, None, 500.0), (
            entries["agent-old"]["source"],
            entries["agent-old"]["connected"],
            entries["agent-old"]["process"],
            entries["agent-old"]["last_seen"]))
        self.assertEqual([{"task_id": "t1", "state": "complete",
                           "method": "decom.qc", "result": {"x": 1}}],
                         entries["agent-old"]["tasks"])

    def test_pages_run_over_the_union_of_both(self):
        self.agent_on(self.a, "agent-2")
        for agent_id in ("agent-1", "agent-3", "agent-4"):
            self.shared["rows"][agent_id] = stored_row(agent_id)
        first = self.listing(self.a, limit=2)
        self.assertEqual((["agent-1", "agent-2"], "agent-2", 4), (
            [entry["agent_id"] for entry in first["agents"]],
            first["next"], first["total"]))
        second = self.listing(self.a, limit=2, after="agent-2")
        self.assertEqual((["agent-3", "agent-4"], None), (
            [entry["agent_id"] for entry in second["agents"]],
            second["next"]))

    def test_a_row_forgotten_meanwhile_is_skipped(self):
        self.shared["rows"]["agent-1"] = stored_row("agent-1")
        self.shared["rows"]["agent-2"] = stored_row("agent-2")
        real = self.a.directory.agent_rows

        def forgotten(agent_ids, task_history):
            rows = real(agent_ids, task_history)
            rows.pop("agent-1", None)
            return rows
        self.a.directory.agent_rows = forgotten
        answer = self.listing(self.a)
        self.assertEqual(["agent-2"],
                         [entry["agent_id"] for entry in answer["agents"]])

    def test_an_agent_forgotten_here_is_not_listed_from_its_old_row(self):
        self.shared["rows"]["agent-1"] = stored_row("agent-1")
        self.shared["rows"]["agent-2"] = stored_row("agent-2")
        # The deletion of agent-1's row is queued, not committed yet.
        self.a.endpoint.persistence = mock.Mock(forgetting={"agent-1"})
        self.addCleanup(setattr, self.a.endpoint, "persistence", None)
        answer = self.listing(self.a)
        self.assertEqual((["agent-2"], 1), (
            [entry["agent_id"] for entry in answer["agents"]],
            answer["total"]))

    def test_an_unreadable_database_lists_this_process_and_says_why(self):
        self.agent_on(self.a, "agent-a")
        self.shared["rows"]["agent-b"] = stored_row("agent-b", "host:B")
        self.shared["unreadable"] = True
        answer = self.listing(self.a)
        self.assertEqual(["agent-a"],
                         [entry["agent_id"] for entry in answer["agents"]])
        self.assertIn("the database could not be read", answer["partial"])
        self.assertIn("cannot read the agents: gone", answer["partial"])


class PeerLinkTest(TwoProcessesTestCase):
    """Processes on two hosts: commands go over the peer port (TLS with
    endpoint certificates both ways), never a control socket."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.certdir = tempfile.mkdtemp(prefix="teeth-peer-tls-")
        cls.addClassCleanup(shutil.rmtree, cls.certdir, True)
        cls.certs = Certificates(cls.certdir)

    def setUp(self):
        super().setUp()
        # Were a control socket dialled, this would show it.
        self.a.router._connect = self.b.router._connect = _no_unix

    def process(self, name, link=True):
        process = TLSProcess(name, self.tempdir, self.shared, self.certs,
                             link=link)
        self.addCleanup(process.stop)
        return process

    def peer_port(self, process, issued=None, context=None):
        """A raw TLS client of ``process``'s peer port."""
        context = context or self.certs.context(issued or
                                                self.certs.endpoint)
        sock = transport.connect("127.0.0.1", process.link.port, context)
        link = transport.Connection(sock, _refuse_all, name="peer").start()
        self.addCleanup(link.close)
        return link

    def test_a_call_and_its_progress_go_over_the_peer_port(self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        answer = client.call("call", {
            "agent_id": "agent-1", "method": "testing.sleep",
            "params": {"task_id": "t1"}})
        self.assertEqual({"task_id": "t1", "state": "running"},
                         answer["result"])
        self.assertEqual([("testing.sleep", {"task_id": "t1"})],
                         agent.calls)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        base_wait(lambda: self.b.endpoint.agents["agent-1"].connected)
        transport.sleep(0.3)
        agent.status("t1", "running", percent=40.0)
        agent.status("t1", "complete", result={"ok": True})
        answer = watching.wait()
        self.assertEqual({"ok": True}, answer["status"]["result"])
        self.assertIn(40.0, [s.get("percent") for s in client.pushed])

    def test_a_process_without_a_peer_link_is_refused_with_the_reason(self):
        self.agent_on(self.b)
        lone = self.process("C", link=False)
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(lone).call("call", {"agent_id": "agent-1",
                                            "method": "ping"})
        self.assertEqual("NotFound", caught.exception.type)
        self.assertIn("this process has no peer link", caught.exception.msg)
        # And a holder on another host without a peer port: today's
        # refusal.
        self.agent_on(lone, "agent-2")
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "agent-2",
                                              "method": "ping"})
        self.assertIn("on host host-C", caught.exception.msg)
        self.assertIn("no peer port", caught.exception.msg)

    def test_a_command_over_the_link_is_never_routed_again(self):
        # The directory is wrong: it says B holds an agent that is on A,
        # and B would route it back to A. A peer claiming forwarded false
        # changes nothing.
        self.agent_on(self.a)
        self.shared["holders"]["agent-1"] = "A"
        link = self.peer_port(self.b)
        with self.assertRaises(transport.RemoteError) as caught:
            link.call("call", {"agent_id": "agent-1", "method": "ping",
                               "forwarded": False}, timeout=WAIT)
        self.assertEqual("NotFound", caught.exception.type)
        self.assertEqual({"status": None, "gone": True, "terminal": False},
                         link.call("watch_task", {
                             "agent_id": "agent-1", "task_id": "t1",
                             "forwarded": False}, timeout=WAIT))

    def test_only_routed_commands_are_served(self):
        link = self.peer_port(self.b)
        self.assertEqual({"x": 1}, link.call("ping", {"x": 1}, timeout=WAIT))
        for method in ("agents", "forget", "handshake"):
            with self.assertRaises(transport.RemoteError) as caught:
                link.call(method, {"agent_id": "agent-1"}, timeout=WAIT)
            self.assertEqual("UnknownMethod", caught.exception.type)

    def test_an_agent_certificate_is_refused_on_the_peer_port(self):
        with self.assertLogs(peer_link.LOG, "WARNING") as logs:
            link = self.peer_port(self.b, issued=self.certs.agent)
            link.wait_closed(WAIT)
        self.assertIn("not an endpoint certificate", logs.output[0])
        self.assertTrue(link.closed)

    def test_self_signed_plaintext_and_no_certificate_get_nothing(self):
        # The stranger trusts the peer port's certificate but shows a
        # self-signed one of its own.
        stranger = self.certs.context(self.certs.stranger)
        anonymous = self.certs.context()
        for context in (stranger, anonymous):
            # TLS 1.3: the refusal may come after the client's handshake,
            # at the first read.
            with self.assertRaises((OSError, transport.ConnectionLost)):
                link = self.peer_port(self.b, context=context)
                link.call("ping", {}, timeout=WAIT)
        plain = transport.connect("127.0.0.1", self.b.link.port)
        self.addCleanup(plain.close)
        plain.sendall(b'{"id": "1", "method": "ping", "params": {}}\n')
        plain.settimeout(2.0)
        try:
            received = plain.recv(4096)
        except TimeoutError:
            received = b""
        # A TLS alert at most, never a JSON answer.
        self.assertNotIn(b'"result"', received)

    def test_an_oversize_line_ends_the_link(self):
        link = self.peer_port(self.b)
        link.sock.sendall(b'{"x": "' + b"y" * (
            protocol.DEFAULT_MAX_LINE_LENGTH + 10))
        link.wait_closed(WAIT)
        self.assertTrue(link.closed)

    def test_connections_beyond_the_limit_are_closed_at_once(self):
        self.b.link.connection_limit = 1
        held = self.peer_port(self.b)
        self.assertEqual({}, held.call("ping", {}, timeout=WAIT))
        with self.assertLogs(peer_link.LOG, "WARNING") as logs:
            extra = transport.connect("127.0.0.1", self.b.link.port)
            self.addCleanup(extra.close)
            extra.settimeout(WAIT)
            self.assertEqual(b"", extra.recv(1))
        self.assertIn("1 peer connections are open", logs.output[0])
        held.close()
        base_wait(lambda: self.b.link._held == 0)
        self.assertEqual({}, self.peer_port(self.b).call("ping", {},
                                                         timeout=WAIT))

    def test_a_server_that_is_no_endpoint_is_not_dialled(self):
        for issued in (self.certs.unmarked, self.certs.agent):
            server = transport.server_tls_context(issued.cert_path,
                                                  issued.key_path)
            listener = transport.listen("127.0.0.1", 0)
            self.addCleanup(listener.close)
            acceptor = transport.spawn(transport.accept_loop, listener,
                                       lambda sock, address: sock.close(),
                                       tls_context=server)
            self.addCleanup(acceptor.kill)
            address = peer_link.tls_address(
                "127.0.0.1", listener.getsockname()[1])
            with self.assertRaises(OSError):
                self.a.link.dial(address)

    def test_a_certificate_that_is_no_endpoints_cannot_listen(self):
        for issued in (self.certs.agent, self.certs.unmarked):
            with self.assertRaisesRegex(conf_tls.TLSConfigError,
                                        "is not an endpoint certificate"):
                peer_link.PeerLink(self.certs.settings(issued))

    def test_addresses(self):
        self.assertEqual("tls:10.0.0.1:9998",
                         peer_link.tls_address("10.0.0.1", 9998))
        self.assertEqual("tls:[fd00::1]:9998",
                         peer_link.tls_address("fd00::1", 9998))
        self.assertEqual(("fd00::1", 9998),
                         peer_link.parse_tls_address("tls:[fd00::1]:9998"))
        for bad in ("unix:/x", "tls:host", "tls::9", "tls:h:0", "tls:h:x",
                    None):
            self.assertRaises(ValueError, peer_link.parse_tls_address, bad)


def _no_unix(path):
    raise AssertionError("dialled the control socket %s" % path)


def _refuse_all(connection, command):
    raise protocol.UnknownMethod(command.method)
