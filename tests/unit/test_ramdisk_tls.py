"""The ramdisk build's TLS inputs (tools/ramdisk/agent_layer.py)."""

import configparser
import os
import shutil
import stat
import tempfile

from teeth_agent import pki
from tests import base
from tools.ramdisk import agent_layer
from tools.ramdisk.base import BuildError


class TestRamdiskTLS(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="teeth-rd-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = pki.make_ca(os.path.join(self.dir, "ca"))
        self.agent = pki.make_agent_certificate(
            self.ca, "node-1", os.path.join(self.dir, "node-1"))
        self.root = os.path.join(self.dir, "root")

    def inputs(self, **kwargs):
        return agent_layer.TLSInputs(**kwargs)

    def test_a_ca_is_required(self):
        self.assertRaisesRegex(BuildError, "--ca-file",
                               agent_layer.check_tls, self.inputs())

    def test_plaintext_contradicts_tls_inputs(self):
        self.assertRaisesRegex(
            BuildError, "--plaintext contradicts", agent_layer.check_tls,
            self.inputs(plaintext=True, ca_file=self.ca.cert_path))

    def test_cert_and_key_go_together(self):
        self.assertRaisesRegex(
            BuildError, "go together", agent_layer.check_tls,
            self.inputs(ca_file=self.ca.cert_path,
                        agent_cert=self.agent.cert_path))

    def test_foreign_key_is_refused(self):
        other = pki.make_agent_certificate(
            self.ca, "node-2", os.path.join(self.dir, "node-2"))
        self.assertRaisesRegex(
            BuildError, "does not belong", agent_layer.check_tls,
            self.inputs(ca_file=self.ca.cert_path,
                        agent_cert=self.agent.cert_path,
                        agent_key=other.key_path))

    def test_certificate_of_another_ca_is_refused(self):
        other_ca = pki.make_ca(os.path.join(self.dir, "other-ca"))
        self.assertRaisesRegex(
            BuildError, "not signed by", agent_layer.check_tls,
            self.inputs(ca_file=other_ca.cert_path,
                        agent_cert=self.agent.cert_path,
                        agent_key=self.agent.key_path))

    def test_ca_that_is_not_pem_is_refused(self):
        self.assertRaisesRegex(
            BuildError, "TLS input", agent_layer.check_tls,
            self.inputs(ca_file=self.agent.key_path))

    def test_layout_with_a_client_certificate(self):
        tls = self.inputs(ca_file=self.ca.cert_path,
                          agent_cert=self.agent.cert_path,
                          agent_key=self.agent.key_path)
        agent_layer.check_tls(tls)
        agent_layer.install_tls(self.root, tls)
        tls_dir = os.path.join(self.root, agent_layer.TLS_DIR)
        key = os.path.join(tls_dir, "agent-key.pem")
        self.assertEqual(0o600, stat.S_IMODE(os.stat(key).st_mode))
        with open(os.path.join(tls_dir, "ca.pem"), "rb") as stream, \
                open(self.ca.cert_path, "rb") as original:
            self.assertEqual(original.read(), stream.read())
        parser = configparser.ConfigParser()
        parser.read(os.path.join(self.root, agent_layer.CONF_D,
                                 "50-tls-client.conf"))
        self.assertEqual("/%s/agent.pem" % agent_layer.TLS_DIR,
                         parser.get("tls", "cert_file"))
        self.assertEqual("/%s/agent-key.pem" % agent_layer.TLS_DIR,
                         parser.get("tls", "key_file"))

    def test_plaintext_layout(self):
        tls = self.inputs(plaintext=True)
        agent_layer.check_tls(tls)
        agent_layer.install_tls(self.root, tls)
        parser = configparser.ConfigParser()
        parser.read(os.path.join(self.root, agent_layer.CONF_D,
                                 "00-plaintext.conf"))
        self.assertEqual("false", parser.get("tls", "enabled"))
        self.assertFalse(os.path.exists(os.path.join(self.root,
                                                     agent_layer.TLS_DIR)))

    def test_builtin_config_defaults_to_tls(self):
        parser = configparser.ConfigParser()
        parser.read(os.path.join(os.path.dirname(agent_layer.__file__),
                                 "teeth-agent.conf"))
        self.assertEqual("true", parser.get("tls", "enabled"))
        self.assertEqual("/%s/ca.pem" % agent_layer.TLS_DIR,
                         parser.get("tls", "ca_file"))
