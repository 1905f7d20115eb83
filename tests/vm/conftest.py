"""Fixtures of the VM test: the ramdisk, test images, endpoint, machines.

The ramdisk's base is cached in ``.ramdisk-cache/`` of the checkout, or in
``$TEETH_RAMDISK_CACHE`` when set (so fresh clones can share one).

Everything runs over TLS, as the shipped defaults do: a session CA made
with :mod:`teeth_agent.pki` goes into the ramdisk (``build-ramdisk
--ca-file``), the endpoints serve a certificate for the address the guest
reaches them at (``10.0.2.100``) and ask for (optional, or with
``require_client_cert`` mandatory) client certificates signed by the same
CA, which a machine gets from virtual media (:func:`images.tls_media`).

The VM test needs root (device nodes in the initramfs, mmdebstrap) and
qemu. Without them it is skipped with the reason, except under CI
(``CI`` set), where ``tools/install-system-packages`` provides everything
and a missing piece is a failure, not a skip.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import pki
from teeth_agent import transport
from tests.functional import standbye_http
from tests.vm import images
from tests.vm import machine
from tests.vm import uefi

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD_RAMDISK = os.path.join(REPO_ROOT, "tools", "build-ramdisk")
TOOLS = ("qemu-system-x86_64", "mmdebstrap", "nc", "busybox", "cpio",
         "sgdisk", "mkfs.ext4", "debugfs", "xorriso", "depmod", "apt-get")


def _missing_requirements():
    if os.geteuid() != 0:
        return "the VM test needs root (mmdebstrap, device nodes)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return ("the VM test needs %s (tools/install-system-packages "
                "installs them)" % ", ".join(missing))
    return None


@pytest.fixture(scope="session")
def vm_requirements():
    reason = _missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail("CI must run the VM test, but " + reason)
        pytest.skip(reason)


class VMTLS:
    """The session's CA, the endpoint's certificate and per-machine
    client certificates."""

    def __init__(self, directory):
        self.directory = directory
        self.ca = pki.make_ca(directory, common_name="teeth VM test CA",
                              days=2)
        self.server = pki.make_server_certificate(
            self.ca, [machine.GUEST_SERVER, "127.0.0.1"],
            os.path.join(directory, "endpoint"), days=2)

    def agent_certificate(self, agent_id):
        return pki.make_agent_certificate(
            self.ca, agent_id, os.path.join(self.directory, agent_id),
            days=2)

    def server_context(self, require_client_cert=False):
        return transport.server_tls_context(
            self.server.cert_path, self.server.key_path,
            ca_file=self.ca.cert_path,
            require_client_cert=require_client_cert)


@pytest.fixture(scope="session")
def vm_tls(tmp_path_factory):
    return VMTLS(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def ramdisk(vm_requirements, vm_tls, tmp_path_factory):
    """The ramdisk built by tools/build-ramdisk (base from the cache when
    its inputs did not change) trusting the session CA: the manifest, with
    ``files``."""
    output = str(tmp_path_factory.mktemp("ramdisk"))
    argv = [sys.executable, BUILD_RAMDISK, "--output", output,
            "--ca-file", vm_tls.ca.cert_path,
            # The UEFI media too (tests/vm/test_uefi.py): ~20 s more.
            "--uefi", "--uefi-cmdline", uefi.media_cmdline()]
    if os.environ.get("TEETH_RAMDISK_CACHE"):
        argv += ["--cache", os.environ["TEETH_RAMDISK_CACHE"]]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)
    assert done.returncode == 0, "build-ramdisk failed:\n" + done.stderr
    manifest = json.loads(done.stdout)
    sys.stderr.write("ramdisk: base %s (%s), built in %.1f s\n" % (
        manifest["key"], "cached" if manifest["base_cached"] else "new",
        manifest["seconds"]))
    return manifest


@pytest.fixture(scope="session")
def test_images(ramdisk, tmp_path_factory):
    """The images the VM test installs: ``kexec`` (kernel, initrd and BLS
    entry), ``no_kernel`` (a root without any kernel) and ``grub`` (kernel,
    initrd and BLS entry, but no boot loader: an empty BIOS boot
    partition, no boot code, no grub.cfg)."""
    directory = str(tmp_path_factory.mktemp("images"))
    return {
        "kexec": images.build_disk_image(
            directory, "kexec.img", kernel=ramdisk["files"]["vmlinuz"],
            release=ramdisk["kernel_release"]),
        "no_kernel": images.build_disk_image(directory, "no-kernel.img"),
        "grub": images.build_disk_image(
            directory, "grub.img", kernel=ramdisk["files"]["vmlinuz"],
            release=ramdisk["kernel_release"], boot_loader=False,
            cmdline_token=images.GRUB_CMDLINE_TOKEN),
    }


@pytest.fixture
def image_server():
    with standbye_http.ImageServer() as server:
        yield server


@pytest.fixture
def endpoints(vm_tls):
    """Start TLS endpoints on 127.0.0.1 (``endpoints.start(port=0,
    require_client_cert=False)``); all are stopped at the end."""
    started = []

    class Endpoints:
        def start(self, port=0, require_client_cert=False):
            server = endpoint_mod.Endpoint(host="127.0.0.1", port=port,
                                           tls_context=vm_tls.server_context(
                                               require_client_cert),
                                           call_timeout=60.0,
                                           handshake_timeout=60.0,
                                           keepalive_interval=60.0,
                                           keepalive_timeout=60.0)
            server.start()
            started.append(server)
            return server

    yield Endpoints()
    for server in started:
        server.stop()


@pytest.fixture
def machines(tmp_path, request):
    """Create VMs with ``machines.create(...)``; every one is stopped at the
    end, and the console of a failed test's VM is printed."""
    created = []

    class Machines:
        def create(self, name, cls=machine.VirtualMachine, **kwargs):
            directory = os.path.join(str(tmp_path), name)
            os.makedirs(directory)
            vm = cls(directory, **kwargs)
            created.append(vm)
            return vm

    yield Machines()
    for vm in created:
        vm.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write("\n--- console of %s ---\n%s\n" % (
                vm.directory, vm.console_tail(200)))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
