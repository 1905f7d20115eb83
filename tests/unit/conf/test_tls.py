"""TLS by default: the consistency rules, the warnings and the versions.

Every refused combination is checked twice: :mod:`teeth_agent.conf.tls`
raises :class:`TLSConfigError` naming the options, and the console script
exits 2 printing that one line.
"""

import io
import os
import shutil
import ssl
import tempfile
from unittest import mock

from teeth_agent.cmd import agent as agent_cmd
from teeth_agent.cmd import endpoint as endpoint_cmd
from teeth_agent.conf import tls as conf_tls
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import pki
from teeth_agent import transport
from tests import base


class Material:
    """A throwaway CA with a server certificate and a combined PEM."""

    def __init__(self, directory):
        self.dir = directory
        self.ca, self.server = pki.make_throwaway(directory)
        self.combined = os.path.join(directory, "combined.pem")
        with open(self.combined, "wb") as out:
            for path in (self.server.cert_path, self.server.key_path):
                with open(path, "rb") as stream:
                    out.write(stream.read())


class TLSTestCase(base.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = tempfile.mkdtemp(prefix="teeth-tls-unit-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.pem = Material(cls.dir)

    def write_config(self, text):
        fd, path = tempfile.mkstemp(dir=self.dir, suffix=".conf")
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        return path


class TestDefaults(TLSTestCase):
    def test_tls_is_on_by_default_on_both_sides(self):
        conf = base.make_conf()
        self.assertTrue(conf.tls.enabled)
        self.assertTrue(conf.tls.check_hostname)
        self.assertEqual("1.2", conf.tls.minimum_version)
        self.assertTrue(conf.endpoint.tls_enabled)
        self.assertEqual("1.2", conf.endpoint.tls_minimum_version)

    def test_agent_settings(self):
        conf = base.make_conf(**{"tls.ca_file": self.pem.ca.cert_path,
                                 "tls.minimum_version": "1.3"})
        self.assertEqual({"ca_file": self.pem.ca.cert_path,
                          "cert_file": None, "key_file": None,
                          "check_hostname": True,
                          "minimum_version": "1.3"},
                         conf_tls.agent_settings(conf))

    def test_agent_never_uses_the_system_store(self):
        # The old code loaded the default trust store without ca_file.
        self.assertRaises(transport.TLSContextError,
                          transport.client_tls_context, None)


class TestAgentRefusals(TLSTestCase):
    def assert_refused(self, pattern, **overrides):
        conf = base.make_conf(**overrides)
        with self.assertRaisesRegex(conf_tls.TLSConfigError, pattern) as ctx:
            conf_tls.agent_settings(conf)
        self.assertNotIn("\n", str(ctx.exception))

    def test_tls_without_ca_file(self):
        self.assert_refused(r"\[tls\] enabled needs \[tls\] ca_file")

    def test_cert_without_key(self):
        self.assert_refused(
            r"\[tls\] cert_file .* holds no private key and \[tls\] "
            r"key_file is not set",
            **{"tls.ca_file": self.pem.ca.cert_path,
               "tls.cert_file": self.pem.server.cert_path})

    def test_cert_with_its_key_in_the_same_file_is_accepted(self):
        conf = base.make_conf(**{"tls.ca_file": self.pem.ca.cert_path,
                                 "tls.cert_file": self.pem.combined})
        settings = conf_tls.agent_settings(conf)
        self.assertEqual(self.pem.combined, settings["cert_file"])
        transport.client_tls_context(**settings)

    def test_key_without_cert(self):
        self.assert_refused(
            r"\[tls\] key_file is set but \[tls\] cert_file is not",
            **{"tls.ca_file": self.pem.ca.cert_path,
               "tls.key_file": self.pem.server.key_path})

    def test_client_certificate_without_tls(self):
        self.assert_refused(
            r"\[tls\] cert_file is set but \[tls\] enabled is false",
            **{"tls.enabled": False,
               "tls.cert_file": self.pem.server.cert_path,
               "tls.key_file": self.pem.server.key_path})

    def test_unreadable_cert_file(self):
        self.assert_refused(
            "cannot read",
            **{"tls.ca_file": self.pem.ca.cert_path,
               "tls.cert_file": os.path.join(self.dir, "missing.pem")})

    def test_a_ca_file_that_is_not_pem_is_one_clear_error(self):
        with self.assertRaisesRegex(transport.TLSContextError,
                                    "cannot load the CA file"):
            transport.client_tls_context(self.write_config("not a cert\n"))


class TestAgentWarnings(TLSTestCase):
    def test_plaintext_is_announced(self):
        conf = base.make_conf(**{"tls.enabled": False})
        with self.assertLogs(conf_tls.LOG, "WARNING") as logs:
            self.assertIsNone(conf_tls.agent_settings(conf))
        self.assertIn("PLAINTEXT", logs.output[0])

    def test_hostname_check_off_is_announced(self):
        conf = base.make_conf(**{"tls.ca_file": self.pem.ca.cert_path,
                                 "tls.check_hostname": False})
        with self.assertLogs(conf_tls.LOG, "WARNING") as logs:
            settings = conf_tls.agent_settings(conf)
        self.assertFalse(settings["check_hostname"])
        self.assertIn("check_hostname is false", logs.output[0])
        self.assertFalse(transport.client_tls_context(
            **settings).check_hostname)

    def test_tls_with_hostname_checks_is_silent(self):
        conf = base.make_conf(**{"tls.ca_file": self.pem.ca.cert_path})
        with mock.patch.object(conf_tls.LOG, "warning") as warning:
            conf_tls.agent_settings(conf)
        warning.assert_not_called()


class TestEndpointRefusals(TLSTestCase):
    def assert_refused(self, pattern, **overrides):
        options = {"endpoint." + name: value
                   for name, value in overrides.items()}
        conf = base.make_conf(**options)
        with self.assertRaisesRegex(conf_tls.TLSConfigError, pattern) as ctx:
            endpoint_mod.Endpoint.from_conf(conf)
        self.assertNotIn("\n", str(ctx.exception))

    def test_tls_without_certificate(self):
        self.assert_refused(r"tls_enabled needs tls_cert_file and "
                            r"tls_key_file")

    def test_certificate_without_key(self):
        self.assert_refused(r"tls_cert_file .* holds no private key",
                            tls_cert_file=self.pem.server.cert_path)

    def test_key_without_certificate(self):
        self.assert_refused(r"tls_key_file is set but \[endpoint\] "
                            r"tls_cert_file is not",
                            tls_key_file=self.pem.server.key_path)

    def test_client_certificates_required_without_tls(self):
        self.assert_refused(r"tls_require_client_cert is true but "
                            r"tls_enabled is false",
                            tls_enabled=False, tls_require_client_cert=True,
                            tls_ca_file=self.pem.ca.cert_path)

    def test_client_certificates_required_without_ca(self):
        self.assert_refused(r"tls_require_client_cert needs tls_ca_file",
                            tls_cert_file=self.pem.server.cert_path,
                            tls_key_file=self.pem.server.key_path,
                            tls_require_client_cert=True)

    def test_certificate_given_with_tls_off(self):
        self.assert_refused(r"tls_cert_file is set but tls_enabled is "
                            r"false", tls_enabled=False,
                            tls_cert_file=self.pem.server.cert_path,
                            tls_key_file=self.pem.server.key_path)

    def test_combined_pem_is_accepted(self):
        conf = base.make_conf(**{"endpoint.tls_cert_file":
                                 self.pem.combined})
        endpoint = endpoint_mod.Endpoint.from_conf(conf)
        self.assertIsNotNone(endpoint.tls_context)

    def test_plaintext_is_announced(self):
        conf = base.make_conf(**{"endpoint.tls_enabled": False})
        with self.assertLogs(conf_tls.LOG, "WARNING") as logs:
            endpoint = endpoint_mod.Endpoint.from_conf(conf)
        self.assertIsNone(endpoint.tls_context)
        self.assertIn("PLAINTEXT", logs.output[0])

    def test_client_ca_without_requirement_asks_for_optional_certs(self):
        context = transport.server_tls_context(
            self.pem.server.cert_path, self.pem.server.key_path,
            ca_file=self.pem.ca.cert_path)
        self.assertEqual(ssl.CERT_OPTIONAL, context.verify_mode)
        context = transport.server_tls_context(
            self.pem.server.cert_path, self.pem.server.key_path,
            ca_file=self.pem.ca.cert_path, require_client_cert=True)
        self.assertEqual(ssl.CERT_REQUIRED, context.verify_mode)


class TestConsoleScripts(TLSTestCase):
    """The console scripts exit 2 with one line for each refused setting.
    """

    def run_agent(self, config):
        stderr = io.StringIO()
        cmdline = self.write_config("BOOT_IMAGE=/vmlinuz ro\n")
        with mock.patch.object(agent_cmd.log, "setup"), \
                mock.patch.object(agent_cmd.hardware,
                                  "load_managers") as managers, \
                mock.patch("sys.stderr", stderr):
            conf = agent_cmd.prepare(["--config-file", config],
                                     kernel_cmdline_path=cmdline)
            with mock.patch.object(agent_cmd, "prepare",
                                   return_value=conf):
                code = agent_cmd.main([])
        managers.assert_not_called()
        return code, stderr.getvalue()

    def run_endpoint(self, config):
        stderr = io.StringIO()
        with mock.patch.object(endpoint_cmd.log, "setup"), \
                mock.patch.object(endpoint_cmd, "raise_file_limit",
                                  return_value=1024), \
                mock.patch("sys.stderr", stderr):
            code = endpoint_cmd.main(["--config-file", config, "serve"])
        return code, stderr.getvalue()

    def assert_one_line(self, expected, output):
        lines = output.strip().splitlines()
        self.assertEqual(1, len(lines), output)
        self.assertIn(expected, lines[0])

    def test_agent_refusals(self):
        cases = [
            ("[tls]\n", "[tls] enabled needs [tls] ca_file"),
            ("[tls]\nca_file = %s\ncert_file = %s\n"
             % (self.pem.ca.cert_path, self.pem.server.cert_path),
             "holds no private key"),
            ("[tls]\nca_file = %s\nkey_file = %s\n"
             % (self.pem.ca.cert_path, self.pem.server.key_path),
             "[tls] key_file is set but [tls] cert_file is not"),
            ("[tls]\nenabled = false\ncert_file = %s\nkey_file = %s\n"
             % (self.pem.server.cert_path, self.pem.server.key_path),
             "[tls] cert_file is set but [tls] enabled is false"),
            ("[tls]\nca_file = %s\n" % os.path.join(self.dir, "none.pem"),
             "cannot load the CA file"),
        ]
        for text, expected in cases:
            with self.subTest(expected=expected):
                code, err = self.run_agent(self.write_config(
                    "[DEFAULT]\nendpoints = 127.0.0.1:1\n" + text))
                self.assertEqual(2, code)
                self.assert_one_line(expected, err)

    def test_endpoint_refusals(self):
        cert, key = self.pem.server.cert_path, self.pem.server.key_path
        cases = [
            ("", "tls_enabled needs tls_cert_file and tls_key_file"),
            ("tls_cert_file = %s\n" % cert, "holds no private key"),
            ("tls_key_file = %s\n" % key,
             "tls_key_file is set but [endpoint] tls_cert_file is not"),
            ("tls_enabled = false\ntls_require_client_cert = true\n",
             "tls_require_client_cert is true but tls_enabled is false"),
            ("tls_cert_file = %s\ntls_key_file = %s\n"
             "tls_require_client_cert = true\n" % (cert, key),
             "tls_require_client_cert needs tls_ca_file"),
            ("tls_cert_file = %s\ntls_key_file = %s\ntls_ca_file = %s\n"
             % (cert, key, os.path.join(self.dir, "none.pem")),
             "cannot load the client CA file"),
            ("tls_cert_file = %s\ntls_key_file = %s\n" % (key, cert),
             "cannot load the server certificate"),
        ]
        for text, expected in cases:
            with self.subTest(expected=expected):
                code, err = self.run_endpoint(self.write_config(
                    "[endpoint]\nlisten_port = 0\n" + text))
                self.assertEqual(2, code)
                self.assert_one_line(expected, err)


class TestMinimumVersion(TLSTestCase):
    """A TLS 1.2-only client is refused by a 1.3-minimum endpoint."""

    def serve(self, minimum_version):
        listener = transport.listen("127.0.0.1", 0)
        self.addCleanup(listener.close)
        context = transport.server_tls_context(
            self.pem.server.cert_path, self.pem.server.key_path,
            minimum_version=minimum_version)
        self.assertEqual(transport.TLS_VERSIONS[minimum_version],
                         context.minimum_version)
        accepted = []
        acceptor = transport.spawn(
            transport.accept_loop, listener,
            lambda sock, address: accepted.append(sock), context, 5.0)
        self.addCleanup(acceptor.kill)
        return listener.getsockname()[1], accepted

    def client(self, maximum):
        context = transport.client_tls_context(self.pem.ca.cert_path)
        context.maximum_version = maximum
        return context

    def test_tls_1_2_client_refused_by_1_3_endpoint(self):
        port, accepted = self.serve("1.3")
        with self.assertRaises(ssl.SSLError):
            transport.connect("127.0.0.1", port,
                              self.client(ssl.TLSVersion.TLSv1_2),
                              timeout=5)
        transport.sleep(0.1)
        self.assertEqual([], accepted)

    def test_tls_1_3_client_accepted_by_1_3_endpoint(self):
        port, accepted = self.serve("1.3")
        sock = transport.connect("127.0.0.1", port,
                                 self.client(ssl.TLSVersion.TLSv1_3),
                                 timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual("TLSv1.3", sock.version())

    def test_tls_1_2_accepted_by_default(self):
        port, accepted = self.serve("1.2")
        sock = transport.connect("127.0.0.1", port,
                                 self.client(ssl.TLSVersion.TLSv1_2),
                                 timeout=5)
        self.addCleanup(sock.close)
        self.assertEqual("TLSv1.2", sock.version())

    def test_agent_minimum_refuses_an_older_server(self):
        context = transport.client_tls_context(self.pem.ca.cert_path,
                                               minimum_version="1.3")
        self.assertEqual(ssl.TLSVersion.TLSv1_3, context.minimum_version)
        listener = transport.listen("127.0.0.1", 0)
        self.addCleanup(listener.close)
        server = transport.server_tls_context(self.pem.server.cert_path,
                                              self.pem.server.key_path)
        server.maximum_version = ssl.TLSVersion.TLSv1_2
        acceptor = transport.spawn(transport.accept_loop, listener,
                                   lambda sock, address: None, server, 5.0)
        self.addCleanup(acceptor.kill)
        with self.assertRaises(ssl.SSLError):
            transport.connect("127.0.0.1", listener.getsockname()[1],
                              context, timeout=5)


class TestPeerSettings(TLSTestCase):
    def settings(self, **overrides):
        options = {"endpoint.tls_cert_file": self.pem.server.cert_path,
                   "endpoint.tls_key_file": self.pem.server.key_path,
                   "endpoint.tls_ca_file": self.pem.ca.cert_path}
        options.update({"endpoint." + name: value
                        for name, value in overrides.items()})
        return conf_tls.peer_settings(base.make_conf(**options))

    def assert_refused(self, pattern, **overrides):
        with self.assertRaisesRegex(conf_tls.TLSConfigError, pattern) as ctx:
            self.settings(**overrides)
        self.assertNotIn("\n", str(ctx.exception))

    def test_off_by_default(self):
        self.assertIsNone(self.settings())

    def test_listen_advertise_and_the_ca_default(self):
        settings = self.settings(peer_listen="10.0.0.11:9998")
        self.assertEqual(("10.0.0.11", 9998, "10.0.0.11", None),
                         (settings["host"], settings["port"],
                          settings["advertise_host"],
                          settings["advertise_port"]))
        self.assertEqual(self.pem.ca.cert_path, settings["ca_file"])
        settings = self.settings(peer_listen="[::]:9998",
                                 peer_advertise="ep1.example:443",
                                 peer_ca_file="/other/ca.pem")
        self.assertEqual(("::", "ep1.example", 443, "/other/ca.pem"),
                         (settings["host"], settings["advertise_host"],
                          settings["advertise_port"], settings["ca_file"]))
        settings = self.settings(peer_listen="0.0.0.0:0",
                                 peer_advertise="fd00::11")
        self.assertEqual(("fd00::11", None), (settings["advertise_host"],
                                              settings["advertise_port"]))

    def test_typos_and_missing_pieces_are_one_line_each(self):
        for text in ("9998", "host:", "host:port", "h:70000", "[::]9998"):
            self.assert_refused("peer_listen .* is not host:port",
                                peer_listen=text)
        self.assert_refused("listens on every address: set peer_advertise",
                            peer_listen="0.0.0.0:9998")
        self.assert_refused("peer_advertise '0.0.0.0' is no address",
                            peer_listen="0.0.0.0:9998",
                            peer_advertise="0.0.0.0")
        self.assert_refused("peer_advertise is set but peer_listen is empty",
                            peer_advertise="ep1.example")
        self.assert_refused("peer_ca_file is set but peer_listen is empty",
                            peer_ca_file="/x.pem")
        self.assert_refused("peer_listen needs tls_cert_file .* never "
                            "plaintext", peer_listen="127.0.0.1:9998",
                            tls_cert_file="", tls_key_file="")
        self.assert_refused("peer_listen needs peer_ca_file or tls_ca_file",
                            peer_listen="127.0.0.1:9998", tls_ca_file="")
