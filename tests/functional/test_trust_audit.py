"""Attacks on the fleet link found or checked by the issue-10 audit.

A real ``teeth-endpoint serve`` (TLS, as by default) against raw-socket
agents: a certificate that names another machine in token mode, a stolen
token sent over plaintext, hostile handshake payloads and session tokens,
and a flood of fresh agent ids.
"""

import shutil
import ssl
import unittest

from tests.functional import harness
from tests.functional import test_trust_endpoint as trust


class TestCertificateInTokenMode(unittest.TestCase):
    """``agent_identity = token`` with client certificates required: a
    verified certificate is never ignored."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("the openssl command is not installed")
        certdir = harness.make_workdir(cls, cls_level=True)
        cls.ca = trust.openssl_authority(certdir, "audit-ca")
        server = trust.openssl_issue(certdir, "audit-endpoint", cls.ca,
                                     ["IP:127.0.0.1", "DNS:localhost"],
                                     "serverAuth")
        cls.machine_a = trust.openssl_issue(certdir, "machine-a", cls.ca,
                                            ["URI:teeth-agent:machine-a"],
                                            "clientAuth")
        cls.endpoint = harness.start_endpoint(cls, {"endpoint": {
            "tls_enabled": True, "tls_cert_file": server[0],
            "tls_key_file": server[1], "tls_ca_file": cls.ca[0],
            "tls_require_client_cert": True, "agent_identity": "token"}},
            cls_level=True)

    def connect(self, cert):
        context = ssl.create_default_context(cafile=self.ca[0])
        context.load_cert_chain(*cert)
        peer = harness.connect_peer(self.endpoint.port, tls=context)
        self.addCleanup(peer.close)
        return peer

    def test_certificate_of_another_machine_is_refused(self):
        peer = self.connect(self.machine_a)
        peer.send_command("handshake", trust.handshake_params("machine-z"))
        message = peer.take(lambda m: "fatal_error" in m)
        self.assertEqual("handshake refused: certificate names agent_id "
                         "machine-a, handshake claims machine-z",
                         message["fatal_error"])
        self.assertTrue(peer.wait_closed())
        self.assertEqual([], [a for a in self.endpoint.agents()
                              if a["agent_id"] == "machine-z"])

    def test_own_certificate_gets_a_token(self):
        peer = self.connect(self.machine_a)
        answer = peer.call("handshake", trust.handshake_params("machine-a"))
        self.assertIn("session_token", answer["result"])


class TestTokenAttacks(unittest.TestCase):
    """A TLS endpoint (the default) and a real owner of an agent_id."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.endpoint = harness.start_endpoint(cls, {"endpoint": {
            "handshake_timeout": 5.0}}, cls_level=True)

    def join(self, agent_id, token=None, **extra):
        peer = harness.connect_peer(self.endpoint.port,
                                    name="agent %s" % agent_id)
        self.addCleanup(peer.close)
        response = peer.call("handshake", trust.handshake_params(
            agent_id, token, **extra))
        return peer, response

    def owner(self, agent_id):
        peer, response = self.join(agent_id)
        return peer, response["result"]["session_token"]

    def assert_owner_kept(self, agent_id, peer):
        self.assertFalse(peer.closed)
        self.assertEqual("pong", peer.call("ping", {"p": "pong"})[
            "result"]["p"])
        (entry,) = [a for a in self.endpoint.agents()
                    if a["agent_id"] == agent_id]
        self.assertEqual("%s:%d" % peer.sock.getsockname()[:2],
                         entry["peer"].replace("agent at ", ""))

    def test_valid_token_over_plaintext_gets_nothing(self):
        owner, token = self.owner("audit-plain")
        thief = harness.connect_peer(self.endpoint.port, tls=False)
        self.addCleanup(thief.close)
        thief.send_raw(trust.line("handshake", trust.handshake_params(
            "audit-plain", token), "h1"), ignore_errors=True)
        self.assertTrue(thief.wait_closed(timeout=20))
        self.assertEqual([], [m for m in thief.received if "_raw" not in m])
        self.assert_owner_kept("audit-plain", owner)

    def test_session_tokens_that_are_not_strings_or_huge(self):
        owner, token = self.owner("audit-token")
        for number, bad in enumerate((12345, ["x"], {"token": token}, True,
                                      "x" * 1000000)):
            peer = harness.connect_peer(self.endpoint.port)
            self.addCleanup(peer.close)
            params = trust.handshake_params("audit-token", bad)
            peer.send_raw(trust.line("handshake", params, "b%d" % number),
                          ignore_errors=True)
            self.assertTrue(peer.wait_closed(timeout=20), number)
            if not isinstance(bad, str):
                (message,) = [m for m in peer.received if "fatal_error" in m]
                self.assertIn("held by a live connection",
                              message["fatal_error"])
        self.assert_owner_kept("audit-token", owner)

    def test_huge_hardware_and_extensions_are_not_kept(self):
        peer, response = self.join(
            "audit-huge", hardware={"pad": "h" * 400000},
            extensions={"e%d" % n: ["m"] * 20 for n in range(4000)})
        self.assertIn("result", response, response)
        (entry,) = [a for a in self.endpoint.agents()
                    if a["agent_id"] == "audit-huge"]
        self.assertIsNone(entry["hardware"])
        self.assertIsNone(entry["extensions"])


class TestFreshIdFlood(unittest.TestCase):
    def test_fresh_ids_within_limits_never_take_a_live_id(self):
        endpoint = harness.start_endpoint(self, {"endpoint": {
            "max_agents": 20, "max_connections_per_address": 8}})
        owner = harness.connect_peer(endpoint.port)
        self.addCleanup(owner.close)
        token = owner.call("handshake", trust.handshake_params(
            "audit-owner"))["result"]["session_token"]
        refused = 0
        for round_ in range(10):
            peers = [harness.connect_peer(endpoint.port) for _ in range(7)]
            for number, peer in enumerate(peers):
                response = peer.call("handshake", trust.handshake_params(
                    "flood-%d-%d" % (round_, number)))
                if "result" not in response:
                    refused += 1
            for peer in peers:
                peer.close()
            # The next round's seven connections fit the per-address
            # limit only once the endpoint has seen these seven close
            # (a loaded machine may take a while).
            harness.wait_until(
                lambda: not any(agent["agent_id"].startswith("flood-")
                                for agent in endpoint.agents()),
                harness.START_TIMEOUT, interval=0.1,
                what="the flood's connections seen closed")
        # The live owner was never forgotten to make room, and keeps its id.
        self.assertFalse(owner.closed)
        thief = harness.connect_peer(endpoint.port)
        self.addCleanup(thief.close)
        thief.send_command("handshake", trust.handshake_params(
            "audit-owner"))
        message = thief.take(lambda m: "fatal_error" in m)
        self.assertIn("held by a live connection", message["fatal_error"])
        again = harness.connect_peer(endpoint.port)
        self.addCleanup(again.close)
        self.assertIn("result", again.call("handshake", trust.handshake_params(
            "audit-owner", token)))
        self.assertLessEqual(len(endpoint.agents()), 20)
