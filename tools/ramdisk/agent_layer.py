"""The agent layer of the ramdisk: this checkout's agent, rebuilt each time.

A small uncompressed cpio put in front of the cached base: the
``teeth_agent`` package, byte-compiled, an installed-package record
(``dist-info``) with the entry points of ``setup.cfg``, and any extra
packages (a vendor's hardware manager) installed with pip.
"""

import configparser
import os
import shutil
import subprocess
import sys
import tempfile

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


def build_agent_layer(output, extra_packages):
    """The small cpio with this checkout's agent and the extra packages."""
    workdir = tempfile.mkdtemp(prefix="agent-")
    try:
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
