"""TLS by default, and TLS and mutual TLS between a real agent and a real
endpoint.

Certificates are made for each test run with :mod:`teeth_agent.pki` in a
temporary directory: a CA, an endpoint certificate for 127.0.0.1 signed by
it, a per-machine client certificate, a certificate with a name the agent
does not connect to, and a second, unrelated CA with its own endpoint
certificate. The tests of :class:`TestTlsByDefault` use nothing but the
harness's defaults (its session CA), as every other functional test does.
"""

import os
import ssl
import unittest

from teeth_agent import pki
from tests.functional import harness

# The agent logs one of these for every refused attempt.
FAILED_ATTEMPT = r"cannot connect to endpoint|handshake with .* failed"
PLAINTEXT_WARNING = r"WARNING .*PLAINTEXT"


class CertificateFactory:
    """Keys and certificates made with teeth_agent.pki."""

    def __init__(self, directory):
        self.directory = directory

    def authority(self, name):
        ca = pki.make_ca(os.path.join(self.directory, name), common_name=name)
        return ca.cert_path, ca.key_path

    def server(self, name, ca, hosts):
        made = pki.make_server_certificate(
            pki.load(*ca), hosts, os.path.join(self.directory, name))
        return made.cert_path, made.key_path

    def agent(self, agent_id, ca):
        made = pki.make_agent_certificate(
            pki.load(*ca), agent_id, os.path.join(self.directory, agent_id))
        return made.cert_path, made.key_path


class TlsTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.certdir = harness.make_workdir(cls, cls_level=True)
        factory = CertificateFactory(cls.certdir)
        cls.ca = factory.authority("teeth-test-ca")
        cls.other_ca = factory.authority("unrelated-ca")
        cls.server = factory.server("endpoint", cls.ca,
                                    ["127.0.0.1", "localhost"])
        cls.server_other_ca = factory.server("endpoint-other-ca",
                                             cls.other_ca,
                                             ["127.0.0.1", "localhost"])
        cls.server_wrong_name = factory.server("endpoint-wrong-name", cls.ca,
                                               ["other.example"])
        cls.client = factory.agent("mtls-agent-2", cls.ca)

    def start_tls_endpoint(self, certificate, require_client_cert=False,
                           **options):
        cert, key = certificate
        options.update({
            "tls_enabled": True, "tls_cert_file": cert,
            "tls_key_file": key, "tls_ca_file": self.ca[0],
            "tls_require_client_cert": require_client_cert})
        return harness.start_endpoint(self, {"endpoint": options})

    def start_tls_agent(self, address, agent_id, client_cert=None, **tls):
        tls.update({"enabled": True, "ca_file": self.ca[0]})
        if client_cert is not None:
            tls.update(cert_file=client_cert[0], key_file=client_cert[1])
        return harness.start_agent(self, [address], {
            "DEFAULT": {"agent_id": agent_id}, "tls": tls})

    def wait_connected(self, endpoint, agent_id):
        return harness.wait_until(
            lambda: [a for a in endpoint.agents()
                     if a["agent_id"] == agent_id],
            harness.START_TIMEOUT, interval=0.2,
            what="agent %s connected" % agent_id)

    def assert_refused(self, endpoint, agent, agent_id, reason=None):
        """The agent tried (at least twice) and never got through."""
        agent.wait_for_output(FAILED_ATTEMPT, count=2)
        self.assertEqual([], [a for a in endpoint.agents()
                              if a["agent_id"] == agent_id])
        self.assertIsNone(agent.process.poll(), "the agent gave up")
        if reason is not None:
            self.assertRegex(agent.output(), reason)

    def client_context(self, cert=None):
        context = ssl.create_default_context(cafile=self.ca[0])
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


class TestTlsByDefault(TlsTestCase):
    """Nothing but the defaults (and a CA file): TLS, and no warning."""

    def test_default_agent_and_endpoint_talk_tls(self):
        endpoint = harness.start_endpoint(self)
        agent = harness.start_agent(self, [endpoint.address], {
            "DEFAULT": {"agent_id": "default-tls"}})
        self.wait_connected(endpoint, "default-tls")
        self.assertRegex(endpoint.output(), r"listening on .* \(TLS\)")
        for output in (endpoint.output(), agent.output()):
            self.assertNotRegex(output, PLAINTEXT_WARNING)
        # The port really speaks TLS: a plaintext line gets no answer.
        plain = harness.connect_peer(endpoint.port, tls=False)
        self.addCleanup(plain.close)
        plain.send_command("ping", {}, command_id="p")
        self.assertTrue(plain.wait_closed())
        self.assertEqual([], [m for m in plain.received if "_raw" not in m])

    def test_harness_peers_speak_tls_by_default(self):
        # What every raw-socket functional test gets without asking.
        endpoint = harness.start_endpoint(self)
        peer = harness.connect_peer(endpoint.port)
        self.addCleanup(peer.close)
        self.assertIsInstance(peer.sock, ssl.SSLSocket)
        self.assertEqual({"n": 1}, peer.call("ping", {"n": 1})["result"])
        server = harness.start_server(self)
        harness.start_agent(self, [server.address])
        agent_peer, _ = harness.accept_handshake(server)
        self.addCleanup(agent_peer.close)
        self.assertEqual([True], server.accepted_tls)
        self.assertIsInstance(agent_peer.sock, ssl.SSLSocket)

    def test_explicit_plaintext_is_announced_on_both_sides(self):
        endpoint = harness.start_endpoint(self, harness.PLAINTEXT_ENDPOINT)
        agent = harness.start_agent(
            self, [endpoint.address], harness.merge_sections(
                harness.PLAINTEXT_AGENT,
                {"DEFAULT": {"agent_id": "plain-agent"}}))
        self.wait_connected(endpoint, "plain-agent")
        self.assertRegex(endpoint.output(),
                         r"WARNING .*tls_enabled is false.*PLAINTEXT")
        self.assertRegex(agent.output(),
                         r"WARNING .*\[tls\] enabled is false.*PLAINTEXT")

    def test_agent_without_ca_file_does_not_start(self):
        agent = harness.start_agent(self, ["127.0.0.1:1"],
                                    {"tls": {"ca_file": ""}})
        self.assertEqual(2, agent.wait_exit())
        lines = [line for line in agent.output().splitlines()
                 if line.startswith("teeth-agent:")]
        self.assertEqual(1, len(lines), agent.output())
        self.assertIn("[tls] enabled needs [tls] ca_file", lines[0])

    def test_endpoint_without_certificate_does_not_start(self):
        workdir = harness.make_workdir(self)
        config = harness.write_config(
            os.path.join(workdir, "endpoint.conf"),
            {"endpoint": {"listen_host": harness.HOST, "listen_port": 0,
                          "control_socket": os.path.join(workdir, "c.sock")}})
        done = harness.run_command(harness.endpoint_cli_argv(config, "serve"),
                                   timeout=harness.START_TIMEOUT)
        self.assertEqual(2, done.returncode, done.stderr)
        lines = [line for line in done.stderr.splitlines()
                 if line.startswith("teeth-endpoint:")]
        self.assertEqual(1, len(lines), done.stderr)
        self.assertIn("tls_enabled needs tls_cert_file", lines[0])

    def test_endpoint_refuses_client_certs_without_tls(self):
        endpoint = harness.EndpointProcess(
            harness.make_workdir(self), {"endpoint": {
                "tls_enabled": "false", "tls_require_client_cert": "true"}})
        self.addCleanup(endpoint.stop)
        self.assertEqual(2, endpoint.wait_exit())
        self.assertIn("tls_require_client_cert is true but tls_enabled is "
                      "false", endpoint.output())


class TestMinimumVersion(TlsTestCase):
    def test_tls_1_2_client_refused_by_a_1_3_endpoint(self):
        endpoint = self.start_tls_endpoint(self.server,
                                           tls_minimum_version="1.3")
        old = self.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises((ssl.SSLError, OSError)):
            peer = harness.connect_peer(endpoint.port, tls=old)
            peer.close()
        modern = harness.connect_peer(endpoint.port,
                                      tls=self.client_context())
        self.addCleanup(modern.close)
        self.assertEqual("TLSv1.3", modern.sock.version())
        self.assertEqual({"v": 3}, modern.call("ping", {"v": 3})["result"])

    def test_agent_with_1_3_minimum_connects_to_a_1_3_endpoint(self):
        endpoint = self.start_tls_endpoint(self.server,
                                           tls_minimum_version="1.3")
        self.start_tls_agent(endpoint.address, "tls13-agent",
                             minimum_version="1.3")
        self.wait_connected(endpoint, "tls13-agent")


class TestHostnameCheck(TlsTestCase):
    def test_check_hostname_off_accepts_another_name_with_a_warning(self):
        endpoint = self.start_tls_endpoint(self.server_wrong_name)
        agent = self.start_tls_agent(endpoint.address, "no-name-check",
                                     check_hostname=False)
        self.wait_connected(endpoint, "no-name-check")
        self.assertRegex(agent.output(), r"WARNING .*check_hostname is false")


class TestAgentOverTls(TlsTestCase):
    def test_agent_connects_to_a_tls_endpoint(self):
        endpoint = self.start_tls_endpoint(self.server)
        self.start_tls_agent(endpoint.address, "tls-agent-1")
        self.wait_connected(endpoint, "tls-agent-1")
        done = endpoint.cli("call", "tls-agent-1", "ping", '{"over":"tls"}')
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertIn('"over": "tls"', done.stdout)

    def test_agent_refuses_an_endpoint_signed_by_another_ca(self):
        endpoint = self.start_tls_endpoint(self.server_other_ca)
        agent = self.start_tls_agent(endpoint.address, "tls-agent-2")
        self.assert_refused(endpoint, agent, "tls-agent-2",
                            r"(?i)certificate verify failed")

    def test_agent_refuses_an_endpoint_with_another_name(self):
        endpoint = self.start_tls_endpoint(self.server_wrong_name)
        agent = self.start_tls_agent(endpoint.address, "tls-agent-3")
        self.assert_refused(endpoint, agent, "tls-agent-3",
                            r"(?i)certificate verify failed.*mismatch")

    def test_agent_never_falls_back_to_plaintext(self):
        # A plaintext server: the agent must only ever open TLS there.
        server = harness.start_server(self, tls=False)
        self.start_tls_agent(server.address, "tls-agent-4")
        for _ in range(2):
            peer = server.accept()
            self.addCleanup(peer.close)
            peer.sock.settimeout(harness.MESSAGE_TIMEOUT)
            first = peer.sock.recv(5)
            # 0x16: a TLS handshake record (ClientHello), not JSON.
            self.assertEqual(0x16, first[0], first)
            peer.close()


class TestMutualTls(TlsTestCase):
    def test_agent_without_client_certificate_is_refused(self):
        endpoint = self.start_tls_endpoint(self.server,
                                           require_client_cert=True)
        agent = self.start_tls_agent(endpoint.address, "mtls-agent-1")
        self.assert_refused(endpoint, agent, "mtls-agent-1")

    def test_agent_with_client_certificate_is_accepted(self):
        endpoint = self.start_tls_endpoint(self.server,
                                           require_client_cert=True)
        self.start_tls_agent(endpoint.address, "mtls-agent-2",
                             client_cert=self.client)
        self.wait_connected(endpoint, "mtls-agent-2")
        done = endpoint.cli("call", "mtls-agent-2", "status")
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertIn("mtls-agent-2", done.stdout)

    def test_raw_tls_clients_with_and_without_certificate(self):
        endpoint = self.start_tls_endpoint(self.server,
                                           require_client_cert=True)
        with_cert = harness.connect_peer(
            endpoint.port, tls=self.client_context(self.client))
        self.addCleanup(with_cert.close)
        response = with_cert.call("ping", {"mtls": True})
        self.assertEqual({"mtls": True}, response["result"])
        try:
            without = harness.connect_peer(endpoint.port,
                                           tls=self.client_context())
        except (ssl.SSLError, OSError):
            return  # refused during the TLS handshake itself
        self.addCleanup(without.close)
        try:
            without.send_command("ping", {"mtls": False})
        except (ssl.SSLError, OSError):
            pass
        self.assertTrue(without.wait_closed())
        self.assertEqual([], without.received)


class TestPlaintextClientToTlsEndpoint(TlsTestCase):
    def test_plaintext_client_gets_no_protocol_answer(self):
        endpoint = self.start_tls_endpoint(self.server)
        peer = harness.connect_peer(endpoint.port, tls=False)
        self.addCleanup(peer.close)
        peer.send_raw(b'{"version":"v1","id":"plain","method":"handshake",'
                      b'"params":{"agent_id":"plain"}}\n', ignore_errors=True)
        self.assertTrue(peer.wait_closed(), "the TLS endpoint kept a "
                        "plaintext connection open")
        protocol_messages = [m for m in peer.received if "_raw" not in m]
        self.assertEqual([], protocol_messages)
        self.assertEqual([], [a for a in endpoint.agents()
                              if a["agent_id"] == "plain"])

    def test_raw_tls_client_is_answered(self):
        endpoint = self.start_tls_endpoint(self.server)
        peer = harness.connect_peer(endpoint.port,
                                    tls=self.client_context())
        self.addCleanup(peer.close)
        response = peer.call("handshake", {
            "agent_id": "raw-tls", "agent_version": "1",
            "protocol_versions": ["v1"], "hardware": {}, "extensions": {},
            "tasks": []})
        self.assertIsInstance(response.get("result"), dict, response)
        self.assertEqual({"x": 1}, peer.call("ping", {"x": 1})["result"])


if __name__ == "__main__":
    unittest.main()
