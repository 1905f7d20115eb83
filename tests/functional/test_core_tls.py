"""TLS and mutual TLS between a real agent and a real endpoint.

Certificates are made for each test run with the ``openssl`` command in a
temporary directory: a CA, an endpoint certificate for 127.0.0.1 signed by
it, a client certificate, a certificate with a name the agent does not
connect to, and a second, unrelated CA with its own endpoint certificate.
"""

import os
import shutil
import ssl
import subprocess
import unittest

from tests.functional import harness

# The agent logs one of these for every refused attempt.
FAILED_ATTEMPT = r"cannot connect to endpoint|handshake with .* failed"


class CertificateFactory:
    """Keys and certificates made with the openssl command line."""

    def __init__(self, directory):
        self.directory = directory

    def path(self, name):
        return os.path.join(self.directory, name)

    def _openssl(self, *args):
        done = subprocess.run(["openssl"] + list(args), capture_output=True,
                              text=True, timeout=60, cwd=self.directory)
        if done.returncode != 0:
            raise AssertionError("openssl %s failed: %s"
                                 % (" ".join(args), done.stderr))

    def _key(self, name):
        key = self.path(name + ".key")
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-out", key)
        return key

    def authority(self, name):
        """A self-signed CA; returns the paths ``(cert, key)``."""
        key = self._key(name)
        cert = self.path(name + ".pem")
        self._openssl("req", "-x509", "-new", "-key", key, "-out", cert,
                      "-days", "2", "-subj", "/CN=%s" % name,
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return cert, key

    def issue(self, name, authority, alt_names, usage):
        """A certificate signed by ``authority``, a ``(cert, key)`` pair.

        ``alt_names`` are subjectAltName entries such as "IP:127.0.0.1";
        ``usage`` is serverAuth or clientAuth. Returns ``(cert, key)``.
        """
        key = self._key(name)
        request = self.path(name + ".csr")
        self._openssl("req", "-new", "-key", key, "-out", request,
                      "-subj", "/CN=%s" % name)
        extensions = self.path(name + ".ext")
        with open(extensions, "w") as stream:
            stream.write("basicConstraints=CA:FALSE\n"
                         "keyUsage=critical,digitalSignature\n"
                         "extendedKeyUsage=%s\n" % usage)
            if alt_names:
                stream.write("subjectAltName=%s\n" % ",".join(alt_names))
        cert = self.path(name + ".pem")
        ca_cert, ca_key = authority
        self._openssl("x509", "-req", "-in", request, "-CA", ca_cert,
                      "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                      "-days", "2", "-extfile", extensions)
        return cert, key


class TlsTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("the openssl command is not installed")
        cls.certdir = harness.make_workdir(cls, cls_level=True)
        factory = CertificateFactory(cls.certdir)
        cls.ca = factory.authority("teeth-test-ca")
        cls.other_ca = factory.authority("unrelated-ca")
        cls.server = factory.issue("endpoint", cls.ca,
                                   ["IP:127.0.0.1", "DNS:localhost"],
                                   "serverAuth")
        cls.server_other_ca = factory.issue("endpoint-other-ca",
                                            cls.other_ca,
                                            ["IP:127.0.0.1", "DNS:localhost"],
                                            "serverAuth")
        cls.server_wrong_name = factory.issue("endpoint-wrong-name", cls.ca,
                                              ["DNS:other.example"],
                                              "serverAuth")
        cls.client = factory.issue("agent-client", cls.ca, [], "clientAuth")

    def start_tls_endpoint(self, certificate, require_client_cert=False):
        cert, key = certificate
        return harness.start_endpoint(self, {"endpoint": {
            "tls_enabled": True, "tls_cert_file": cert,
            "tls_key_file": key, "tls_ca_file": self.ca[0],
            "tls_require_client_cert": require_client_cert}})

    def start_tls_agent(self, address, agent_id, client_cert=None):
        tls = {"enabled": True, "ca_file": self.ca[0]}
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
        server = harness.start_server(self)
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
        peer = harness.connect_peer(endpoint.port)
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
