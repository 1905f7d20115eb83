"""Certificates made by teeth_agent.pki, read back with cryptography and ssl.
"""

import ipaddress
import os
import shutil
import ssl
import stat
import tempfile

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from teeth_agent import pki
from tests import base


def read_cert(path):
    with open(path, "rb") as stream:
        return x509.load_pem_x509_certificate(stream.read())


class PKITestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="teeth-pki-")
        self.addCleanup(shutil.rmtree, self.dir, True)


class TestMakeCA(PKITestCase):
    def test_ca_certificate(self):
        ca = pki.make_ca(self.dir)
        cert = read_cert(os.path.join(self.dir, pki.CA_CERT))
        self.assertEqual(ca.certificate, cert)
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual("secp256r1", cert.public_key().curve.name)
        constraints = cert.extensions.get_extension_for_class(
            x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertFalse(usage.digital_signature)
        self.assertEqual(cert.subject, cert.issuer)

    def test_key_is_private_and_certificate_readable(self):
        pki.make_ca(self.dir)
        key_mode = stat.S_IMODE(os.stat(os.path.join(
            self.dir, pki.CA_KEY)).st_mode)
        cert_mode = stat.S_IMODE(os.stat(os.path.join(
            self.dir, pki.CA_CERT)).st_mode)
        self.assertEqual(0o600, key_mode)
        self.assertEqual(0o644, cert_mode)
        self.assertEqual([], [name for name in os.listdir(self.dir)
                              if name.startswith(".tmp-")])

    def test_never_overwrites(self):
        pki.make_ca(self.dir)
        with open(os.path.join(self.dir, pki.CA_KEY), "rb") as stream:
            before = stream.read()
        self.assertRaisesRegex(pki.PKIError, "refusing to overwrite",
                               pki.make_ca, self.dir)
        with open(os.path.join(self.dir, pki.CA_KEY), "rb") as stream:
            self.assertEqual(before, stream.read())

    def test_load_refuses_a_foreign_key(self):
        pki.make_ca(self.dir)
        other = os.path.join(self.dir, "other")
        pki.make_ca(other)
        self.assertRaisesRegex(pki.PKIError, "does not belong", pki.load,
                               os.path.join(self.dir, pki.CA_CERT),
                               os.path.join(other, pki.CA_KEY))

    def test_load_reports_a_missing_file(self):
        self.assertRaisesRegex(pki.PKIError, "cannot load", pki.load,
                               os.path.join(self.dir, "nope.pem"),
                               os.path.join(self.dir, "nope-key.pem"))


class TestLeafCertificates(PKITestCase):
    def setUp(self):
        super().setUp()
        self.ca = pki.make_ca(self.dir)

    def test_server_certificate(self):
        server = pki.make_server_certificate(
            self.ca, ["127.0.0.1", "endpoint.example"], self.dir)
        cert = read_cert(server.cert_path)
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual([ipaddress.ip_address("127.0.0.1")],
                         san.get_values_for_type(x509.IPAddress))
        self.assertEqual(["endpoint.example"],
                         san.get_values_for_type(x509.DNSName))
        self.assertEqual(["teeth-endpoint:127.0.0.1"],
                         san.get_values_for_type(
                             x509.UniformResourceIdentifier))
        eku = cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        self.assertEqual([ExtendedKeyUsageOID.SERVER_AUTH,
                          ExtendedKeyUsageOID.CLIENT_AUTH], list(eku))
        self.assertTrue(pki.is_endpoint_certificate(cert))
        self.assertFalse(cert.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca)
        self.assertEqual(self.ca.certificate.subject, cert.issuer)
        cert.verify_directly_issued_by(self.ca.certificate)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(
            server.key_path).st_mode))

    def test_agent_certificate(self):
        out = os.path.join(self.dir, "machine-1")
        agent = pki.make_agent_certificate(self.ca, "machine-1", out)
        cert = read_cert(agent.cert_path)
        san = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        self.assertEqual(["teeth-agent:machine-1"],
                         san.get_values_for_type(
                             x509.UniformResourceIdentifier))
        eku = cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        self.assertEqual([ExtendedKeyUsageOID.CLIENT_AUTH], list(eku))
        self.assertFalse(pki.is_endpoint_certificate(cert))
        cert.verify_directly_issued_by(self.ca.certificate)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(
            agent.key_path).st_mode))

    def test_only_a_marked_certificate_with_both_usages_is_an_endpoints(
            self):
        key = ec.generate_private_key(ec.SECP256R1())

        def leaf(usages, uris):
            builder = pki._leaf_usage(pki._builder(
                pki._name("x"), self.ca.certificate.subject,
                key.public_key(), 1), self.ca)
            names = [x509.DNSName("x.example")] + [
                x509.UniformResourceIdentifier(uri) for uri in uris]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False)
            if usages:
                builder = builder.add_extension(
                    x509.ExtendedKeyUsage(usages), critical=False)
            return builder.sign(self.ca.key, pki.hashes.SHA256())
        both = [ExtendedKeyUsageOID.SERVER_AUTH,
                ExtendedKeyUsageOID.CLIENT_AUTH]
        marker = pki.endpoint_uri("x")
        self.assertTrue(pki.is_endpoint_certificate(leaf(both, [marker])))
        # An older endpoint certificate (serverAuth only, no marker), an
        # image server's, an agent's claiming the marker too, no usages.
        for usages, uris in (
                ([ExtendedKeyUsageOID.SERVER_AUTH], []),
                (both, []),
                ([ExtendedKeyUsageOID.SERVER_AUTH], [marker]),
                ([ExtendedKeyUsageOID.CLIENT_AUTH], [marker]),
                (both, [marker, pki.agent_uri("m-1")]),
                ([], [marker])):
            self.assertFalse(pki.is_endpoint_certificate(leaf(usages, uris)),
                             (usages, uris))

    def test_endpoint_certificate_from_der(self):
        server = pki.create_server_certificate(self.ca, ["h.example"])
        der = server.certificate.public_bytes(
            pki.serialization.Encoding.DER)
        self.assertTrue(pki.is_endpoint_certificate_der(der))
        self.assertFalse(pki.is_endpoint_certificate_der(None))
        self.assertFalse(pki.is_endpoint_certificate_der(b"not a cert"))

    def test_load_certificate(self):
        server = pki.make_server_certificate(self.ca, ["h.example"],
                                             self.dir)
        self.assertTrue(pki.is_endpoint_certificate(
            pki.load_certificate(server.cert_path)))
        self.assertRaisesRegex(pki.PKIError, "cannot load the certificate",
                               pki.load_certificate, server.key_path)

    def test_agent_id_must_be_a_word(self):
        for bad in ("", "two words", "tab\tid"):
            self.assertRaises(pki.PKIError, pki.create_agent_certificate,
                              self.ca, bad)

    def test_validity_must_be_positive(self):
        self.assertRaisesRegex(pki.PKIError, "at least one day",
                               pki.create_agent_certificate, self.ca, "m",
                               days=0)

    def test_server_needs_a_host(self):
        self.assertRaises(pki.PKIError, pki.create_server_certificate,
                          self.ca, [])

    def test_ssl_loads_them_and_they_verify(self):
        """The stdlib ssl module accepts every file, and a real handshake
        between contexts built from them succeeds."""
        server = pki.make_server_certificate(self.ca, ["127.0.0.1"],
                                             self.dir)
        agent = pki.make_agent_certificate(
            self.ca, "m-2", os.path.join(self.dir, "m-2"))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(server.cert_path, server.key_path)
        server_context.load_verify_locations(self.ca.cert_path)
        server_context.verify_mode = ssl.CERT_REQUIRED
        client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_context.load_verify_locations(self.ca.cert_path)
        client_context.load_cert_chain(agent.cert_path, agent.key_path)
        client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_context.wrap_bio(client_in, client_out,
                                         server_hostname="127.0.0.1")
        server_side = server_context.wrap_bio(server_in, server_out,
                                              server_side=True)
        done = {"client": False, "server": False}
        for _ in range(10):
            for name, tls in (("client", client), ("server", server_side)):
                if done[name]:
                    continue
                try:
                    tls.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
            if all(done.values()):
                break
        self.assertEqual({"client": True, "server": True}, done)
        peer = server_side.getpeercert()
        self.assertIn(("URI", "teeth-agent:m-2"), peer["subjectAltName"])
        self.assertIn(("IP Address", "127.0.0.1"),
                      client.getpeercert()["subjectAltName"])
