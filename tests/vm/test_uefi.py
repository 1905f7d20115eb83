"""UEFI with Secure Boot on, end to end, under OVMF (see ``tests.vm.uefi``).

The firmware is Debian's OVMF 4M Secure Boot build with Microsoft's keys
enrolled, a fresh variable store per test; the ramdisk boots from the
media ``build-ramdisk --uefi`` makes (shim signed by Microsoft, grub and
the kernel signed by Debian). The console shows what ran: OVMF names the
boot option it starts (``BdsDxe: starting Boot0003 "label"``), the kernel's
EFI stub says ``UEFI Secure Boot is enabled``, the tenant image's
initramfs prints its marker and command line.

``test_own_loader_boot_entry``: the ISO on a CD-ROM boots; the agent
reports ``boot_mode: uefi``, ``secure_boot: true``, lockdown
``integrity``. An image whose ESP holds its own shim and grub in
``\\EFI\\teethtest\\`` (and no removable-path loader, so only a boot entry
can boot it) is written; ``run_image`` leaves the loader alone, creates a
boot entry labelled from the image's os-release first in ``BootOrder`` and
kexecs the image's signed kernel with ``kexec_file_load``; that kernel
boots (the marker, the BLS command line, no ``BOOT_IMAGE``) and reboots
the VM; OVMF then starts that very entry, the image's own shim and grub
boot its kernel (its grub.cfg's token, ``BOOT_IMAGE=``).

``test_agent_loader``: the ESP image on a read-only disk boots the ramdisk;
an image with an empty ESP gets the agent's signed shim and grub
(``\\EFI\\debian\\``, the bytes of the ramdisk's), a boot entry first in
``BootOrder``, a ``kexec -s``; after the reboot OVMF starts that entry and
the agent's grub boots the image's kernel.

``test_unsigned_kernel_reboots``: the image's kernel has no signature; the
agent does not try kexec, answers ``boot.method: reboot`` with the reason
``kernel_unsigned``, sets BootNext to the new entry and reboots (qemu
ends: ``-no-reboot``).
"""

import os
import re
import subprocess
import uuid

import pytest

from teeth_agent import transport
from tests.functional import standbye_images
from tests.vm import conftest
from tests.vm import images
from tests.vm import test_cycle as cycle
from tests.vm import uefi
from tests.vm import uefi_images

MIB = 1024 * 1024
IMAGES_GUEST_PORT = cycle.IMAGES_GUEST_PORT
# Bounds, not expectations: OVMF, shim, grub reading a 280 MiB initramfs
# and the kernel's own decompression, all emulated on shared cores.
BOOT_TIMEOUT = 600
# Each test boots the ramdisk and then the image twice under OVMF: past
# pytest.ini's 300 s when the cores are shared.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def uefi_requirements(vm_requirements):
    reason = uefi.missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail("CI must run the UEFI VM tests, but " + reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def uefi_test_images(uefi_requirements, ramdisk):
    cache = os.environ.get("TEETH_RAMDISK_CACHE") or os.path.join(
        conftest.REPO_ROOT, ".ramdisk-cache")
    kernel = ramdisk["files"]["vmlinuz"]
    release = ramdisk["kernel_release"]
    loaders = ramdisk["uefi"]["loaders"]
    return {
        "own_loader": uefi_images.build(cache, "own_loader", kernel,
                                        release, loaders),
        "no_loader": uefi_images.build(cache, "no_loader", kernel, release,
                                       loaders),
        "unsigned": uefi_images.build(cache, "own_loader", kernel, release,
                                      loaders, signed=False),
    }


def zero_disk(directory, size=128 * MIB):
    path = os.path.join(directory, "target.img")
    with open(path, "wb") as stream:
        stream.truncate(size)
    return path


def boot_ramdisk(machines, name, directory, medium, target, server,
                 image_server, reboot):
    """A UEFI machine booting the ramdisk from ``medium`` (``(kind,
    path)``) with ``target`` as its install disk; returns it once the
    agent connected, with the agent."""
    vm = machines.create(
        name, cls=uefi.UefiMachine,
        disks=[(medium[0], medium[1], "RAMDISK0001"),
               ("virtio", target, "VDISK0001")],
        forwards={uefi.ENDPOINT_GUEST_PORT: server.port,
                  IMAGES_GUEST_PORT: image_server.server_address[1]},
        variables=uefi.fresh_variables(directory), reboot=reboot)
    vm.start()
    agent = server.wait_for_agent(None, timeout=BOOT_TIMEOUT)
    assert agent is not None, "no agent connected:\n" + vm.console_tail()
    cycle.log("%s: firmware to handshake %.1f s", name,
              transport.monotonic() - vm.started_at)
    console = vm.console()
    assert "EFI stub: UEFI Secure Boot is enabled." in console
    hardware = agent.handshake["hardware"]
    assert hardware["boot_mode"] == "uefi", hardware
    assert hardware["secure_boot"] is True, hardware
    assert hardware["setup_mode"] is False, hardware
    assert hardware["lockdown"] == "integrity", hardware
    return vm, agent


def install(server, agent_id, image_server, image, name):
    image_server.add("/" + name, image["path"])
    image_id = str(uuid.uuid4())
    final = cycle.run_task(server, agent_id, "standbye.prepare_image", {
        "task_id": "prepare", "image": {
            "id": image_id, "urls": [cycle.guest_url(server, "/" + name)],
            "hashes": {"sha256": standbye_images.sha256_of(image["path"])}},
        "root_device_hints": {"serial": "VDISK0001"}})
    assert final["state"] == "complete", final
    final = cycle.run_task(server, agent_id, "standbye.run_image", {
        "task_id": "run", "image_id": image_id,
        "config_drive": {"meta_data": {"uuid": str(uuid.uuid4())}}})
    assert final["state"] == "complete", final
    return final["result"]


def check_entry_first(result):
    entries = result["boot_entries"]
    assert entries["label"] == uefi_images.LABEL, entries
    assert entries["boot_order"][0] == entries["entry"], entries
    assert result["boot_loader"]["entry"] == entries["entry"], result
    return entries["entry"]


def check_kexec_then_firmware(vm, start, entry, grub_token):
    """The kexec'd kernel boots and reboots; then OVMF starts ``entry``
    and grub boots the image's kernel with ``grub_token``."""
    booted = vm.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT,
                                 start=start)
    words = booted.group(1).split()
    assert uefi_images.BLS_TOKEN in words, words
    assert not any(w.startswith("BOOT_IMAGE=") for w in words), words
    rebooted = vm.wait_for_console(re.escape(uefi_images.KEXEC_REBOOT),
                                   BOOT_TIMEOUT, start=booted.end())
    firmware = vm.wait_for_console(uefi.FIRMWARE_BOOT, BOOT_TIMEOUT,
                                   start=rebooted.end())
    assert firmware.group(1).upper() == "BOOT%s" % entry.upper(), \
        firmware.group(0)
    assert firmware.group(2) == uefi_images.LABEL, firmware.group(0)
    after = firmware.end()
    booted = vm.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT,
                                 start=after)
    assert "EFI stub: UEFI Secure Boot is enabled." in \
        vm.console()[after:booted.start()]
    words = booted.group(1).split()
    assert grub_token in words, words
    assert any(w.startswith("BOOT_IMAGE=") for w in words), words
    assert images.BOOTED_MARKER in vm.console()[after:]
    vm.wait_for_exit(BOOT_TIMEOUT)
    cycle.log("kexec -s, reboot, OVMF -> %s -> shim -> grub -> kernel",
              firmware.group(1))


def test_own_loader_boot_entry(ramdisk, uefi_test_images, image_server,
                               endpoints, machines, tmp_path):
    directory = str(tmp_path)
    image = uefi_test_images["own_loader"]
    target = zero_disk(directory)
    server = endpoints.start()
    iso = ramdisk["uefi"]["files"]["teeth-ramdisk.iso"]
    vm, agent = boot_ramdisk(machines, "uefi-own", directory, ("cdrom", iso),
                             target, server, image_server, reboot=True)
    first = re.search(uefi.FIRMWARE_BOOT, vm.console())
    assert first and "DVD-ROM" in first.group(2), vm.console_tail()

    console_before = len(vm.console())
    result = install(server, agent.agent_id, image_server, image,
                     "own.img")
    assert result["boot_loader"]["action"] == "left alone", result
    assert result["boot_loader"]["found"].lower() == \
        "\\efi\\%s\\shimx64.efi" % uefi_images.VENDOR, result
    assert result["boot_loader"]["partition"] == 1, result
    entry = check_entry_first(result)
    boot = result["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["kexec_syscall"] == "kexec_file_load", boot
    assert boot["kernel_signed"] is True, boot
    assert boot["secure_boot"] is True and boot["mode"] == "uefi", boot
    check_kexec_then_firmware(vm, console_before, entry,
                              uefi_images.OWN_GRUB_TOKEN)


def esp_file(disk, name, directory):
    """The bytes of ``name`` (``::/EFI/...``) in the ESP at partition 1 of
    the disk file, read with mtools from an offset: no device touched."""
    out = os.path.join(directory, os.path.basename(name))
    subprocess.run(["mcopy", "-n", "-i", "%s@@%d" % (
        disk, uefi_images.ESP_START), name, out], check=True,
        capture_output=True)
    with open(out, "rb") as stream:
        return stream.read()


def test_agent_loader(ramdisk, uefi_test_images, image_server, endpoints,
                      machines, tmp_path):
    directory = str(tmp_path)
    image = uefi_test_images["no_loader"]
    target = zero_disk(directory)
    server = endpoints.start()
    esp = ramdisk["uefi"]["files"]["esp.img"]
    vm, agent = boot_ramdisk(machines, "uefi-agent-loader", directory,
                             ("virtio-ro", esp), target, server,
                             image_server, reboot=True)
    console_before = len(vm.console())
    result = install(server, agent.agent_id, image_server, image,
                     "no-loader.img")
    loader = result["boot_loader"]
    assert loader["action"] == "installed", loader
    assert loader["loader"] == "shim+grub", loader
    assert loader["path"] == "\\EFI\\debian\\shimx64.efi", loader
    assert loader["partition"] == 1 and loader["esp_created"] is False, \
        loader
    entry = check_entry_first(result)
    boot = result["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["kexec_syscall"] == "kexec_file_load", boot
    check_kexec_then_firmware(vm, console_before, entry,
                              uefi_images.BLS_TOKEN)
    # The ESP holds the ramdisk's own signed loaders: its shim byte for
    # byte, and a grub signed by Debian.
    with open(os.path.join(ramdisk["uefi"]["files"]["netboot"],
                           "shimx64.efi"), "rb") as stream:
        assert esp_file(target, "::/EFI/debian/shimx64.efi", directory) \
            == stream.read()
    grub = os.path.join(directory, "grubx64.efi")
    with open(grub, "wb") as stream:
        stream.write(esp_file(target, "::/EFI/debian/grubx64.efi",
                              directory))
    listed = subprocess.run(["sbverify", "--list", grub],
                            capture_output=True, text=True, check=True)
    assert "Debian Secure Boot" in listed.stdout, listed.stdout


def test_unsigned_kernel_reboots(ramdisk, uefi_test_images, image_server,
                                 endpoints, machines, tmp_path):
    directory = str(tmp_path)
    image = uefi_test_images["unsigned"]
    target = zero_disk(directory)
    server = endpoints.start()
    iso = ramdisk["uefi"]["files"]["teeth-ramdisk.iso"]
    vm, agent = boot_ramdisk(machines, "uefi-unsigned", directory,
                             ("cdrom", iso), target, server, image_server,
                             reboot=False)
    console_before = len(vm.console())
    result = install(server, agent.agent_id, image_server, image,
                     "unsigned.img")
    entry = check_entry_first(result)
    boot = result["boot"]
    assert boot["method"] == "reboot", boot
    assert boot["reason"] == "kernel_unsigned", boot
    assert boot["reason_text"], boot
    assert boot["kernel_signed"] is False, boot
    assert boot["kexec_syscall"] is None, boot
    assert boot.get("boot_next") == entry, boot
    # The agent reboots; with -no-reboot that ends qemu.
    assert vm.wait_for_exit(BOOT_TIMEOUT) == 0
    assert images.BOOTED_MARKER not in vm.console()[console_before:]
