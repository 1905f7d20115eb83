"""The agent layer of the ramdisk: this checkout's agent, rebuilt each time.

A small uncompressed cpio put in front of the cached base: the
``teeth_agent`` package, byte-compiled, an installed-package record
(``dist-info``) with the entry points of ``setup.cfg``, and any extra
packages (a vendor's hardware manager) installed with pip, and the TLS
material of :class:`TLSInputs`: the CA the agent trusts
(``/etc/teeth-agent/tls/ca.pem``), optionally one machine's client
certificate (``agent.pem``, ``agent-key.pem`` mode 0600, named by
``/etc/teeth-agent/teeth-agent.conf.d/50-tls-client.conf``), or, for an
explicitly plaintext image, ``00-plaintext.conf``. The TLS material lives
in this layer, not the cached base, so changing a CA never rebuilds the
base.
"""

import configparser
import os
import shutil
import subprocess
import sys
import tempfile

from tools.ramdisk.base import BuildError
from tools.ramdisk.base import log
from tools.ramdisk.base import pack
from tools.ramdisk.base import PYTHON_SITE
from tools.ramdisk.base import REPO_ROOT
from tools.ramdisk.base import run


def agent_version():
    """The checkout's version as pbr computes it from git and setup.cfg
    (what ``pip install .`` would record), else setup.cfg's version."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
    declared = parser.get("metadata", "version", fallback="0")
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pbr import packaging; "
         "print(packaging.get_version('teeth-agent', sys.argv[1]))",
         declared], cwd=REPO_ROOT, capture_output=True, text=True,
        check=False)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1]
    return declared


def write_dist_info(site, version):
    """An installed-package record for ``teeth-agent`` so that
    ``importlib.metadata`` (stevedore's plugin discovery, the version in
    the handshake) sees this checkout's entry points."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
    dist_info = os.path.join(site, "teeth_agent-%s.dist-info" % version)
    os.makedirs(dist_info)
    with open(os.path.join(dist_info, "METADATA"), "w") as stream:
        stream.write("Metadata-Version: 2.1\nName: teeth-agent\n"
                     "Version: %s\n" % version)
    with open(os.path.join(dist_info, "entry_points.txt"), "w") as stream:
        for group in parser.options("entry_points"):
            stream.write("[%s]\n" % group)
            for line in parser.get("entry_points", group).splitlines():
                if line.strip():
                    stream.write(line.strip() + "\n")
            stream.write("\n")
    with open(os.path.join(dist_info, "top_level.txt"), "w") as stream:
        stream.write("teeth_agent\n")
    with open(os.path.join(dist_info, "INSTALLER"), "w") as stream:
        stream.write("build-ramdisk\n")


TLS_DIR = "etc/teeth-agent/tls"
CONF_D = "etc/teeth-agent/teeth-agent.conf.d"


class TLSInputs:
    """What the image's agent trusts and presents; see :func:`check_tls`.

    ``ca_file``: the PEM CA(s) that sign the endpoint's certificate.
    ``agent_cert``/``agent_key``: a client certificate baked into the image
    (every machine booting it presents it: for an image made for one
    machine). ``plaintext``: no TLS at all (explicit; nothing else set).
    """

    def __init__(self, ca_file=None, agent_cert=None, agent_key=None,
                 plaintext=False):
        self.ca_file = ca_file
        self.agent_cert = agent_cert
        self.agent_key = agent_key
        self.plaintext = plaintext


def check_tls(tls):
    """Refuse TLS inputs that cannot work, before anything is built."""
    from cryptography import exceptions
    from cryptography.hazmat.primitives import serialization
    from cryptography import x509

    if tls.plaintext:
        if tls.ca_file or tls.agent_cert or tls.agent_key:
            raise BuildError("--plaintext contradicts --ca-file, "
                             "--agent-cert and --agent-key")
        return
    if not tls.ca_file:
        raise BuildError("the agent talks TLS: give the CA that signs the "
                         "endpoint's certificate with --ca-file (teeth-"
                         "endpoint issue-ca makes one), or --plaintext")
    if bool(tls.agent_cert) != bool(tls.agent_key):
        raise BuildError("--agent-cert and --agent-key go together")
    try:
        with open(tls.ca_file, "rb") as stream:
            cas = x509.load_pem_x509_certificates(stream.read())
        agent = None
        if tls.agent_cert:
            with open(tls.agent_cert, "rb") as stream:
                agent = x509.load_pem_x509_certificate(stream.read())
            with open(tls.agent_key, "rb") as stream:
                key = serialization.load_pem_private_key(stream.read(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise BuildError("TLS input: %s" % exc) from None
    if agent is not None:
        if key.public_key().public_numbers() != \
                agent.public_key().public_numbers():
            raise BuildError("--agent-key does not belong to --agent-cert")
        for ca in cas:
            try:
                agent.verify_directly_issued_by(ca)
                break
            except (ValueError, TypeError, exceptions.InvalidSignature):
                continue
        else:
            raise BuildError("--agent-cert is not signed by a CA of "
                             "--ca-file")


def install_tls(root, tls):
    """Put the TLS material of ``tls`` (checked) under ``root``."""
    conf_d = os.path.join(root, CONF_D)
    if tls.plaintext:
        os.makedirs(conf_d)
        with open(os.path.join(conf_d, "00-plaintext.conf"), "w") as stream:
            stream.write("# Built with --plaintext: no TLS to the endpoint.\n"
                         "[tls]\nenabled = false\nca_file =\n")
        return
    tls_dir = os.path.join(root, TLS_DIR)
    os.makedirs(tls_dir)
    shutil.copyfile(tls.ca_file, os.path.join(tls_dir, "ca.pem"))
    os.chmod(os.path.join(tls_dir, "ca.pem"), 0o644)
    if tls.agent_cert:
        shutil.copyfile(tls.agent_cert, os.path.join(tls_dir, "agent.pem"))
        os.chmod(os.path.join(tls_dir, "agent.pem"), 0o644)
        key_path = os.path.join(tls_dir, "agent-key.pem")
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600)
        with os.fdopen(descriptor, "wb") as out, \
                open(tls.agent_key, "rb") as stream:
            out.write(stream.read())
        os.makedirs(conf_d)
        with open(os.path.join(conf_d, "50-tls-client.conf"), "w") as stream:
            stream.write("# Baked in by build-ramdisk --agent-cert.\n"
                         "[tls]\ncert_file = /%s/agent.pem\n"
                         "key_file = /%s/agent-key.pem\n"
                         % (TLS_DIR, TLS_DIR))


def build_agent_layer(output, extra_packages, tls):
    """The small cpio with this checkout's agent, the extra packages and
    the TLS material."""
    workdir = tempfile.mkdtemp(prefix="agent-")
    try:
        install_tls(os.path.join(workdir, "root"), tls)
        site = os.path.join(workdir, "root", PYTHON_SITE)
        shutil.copytree(os.path.join(REPO_ROOT, "teeth_agent"),
                        os.path.join(site, "teeth_agent"),
                        ignore=shutil.ignore_patterns("__pycache__",
                                                      "*.pyc"))
        write_dist_info(site, agent_version())
        for package in extra_packages:
            log("pip install %s into the agent layer", package)
            run(sys.executable, "-m", "pip", "install", "--quiet",
                "--disable-pip-version-check", "--no-warn-script-location",
                "--no-deps", "--target", site,
                package)
        shutil.rmtree(os.path.join(site, "bin"), ignore_errors=True)
        # Byte-compile so the emulated guest does not parse every module at
        # each start; the guest's Python is 3.11 too, so the caches match.
        run(sys.executable, "-m", "compileall", "-q", site)
        pack(os.path.join(workdir, "root"), output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
