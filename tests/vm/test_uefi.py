"""UEFI with Secure Boot on, end to end, under OVMF (see ``tests.vm.uefi``).

The firmware is Debian's OVMF 4M Secure Boot build with Microsoft's keys
enrolled; the ramdisk boots from the media ``build-ramdisk --uefi`` makes
(shim signed by Microsoft, grub and the kernel signed by Debian). The
console shows what ran: OVMF names the boot option it starts
(``BdsDxe: starting Boot0003 "label"``), the kernel's EFI stub says
``UEFI Secure Boot is enabled``, the tenant image's initramfs prints its
marker and command line. What the firmware holds is read from the
variable store file itself (``uefi.boot_variables``), before and after the
agent acts.

The three tests are one machine's life, in order: the first starts from a
fresh variable store and a zeroed target disk, each later one boots with
the store and the disk the one before left (the ``chain`` fixture; a test
whose predecessor left nothing fails, saying so). The later two boot the
ramdisk through a boot override (``bootindex``: its medium, the target
disk, the NIC), since the store they inherit boots a tenant from disk
first.

``test_own_loader_boot_entry``: the ISO on a CD-ROM boots; the agent
reports ``boot_mode: uefi``, ``secure_boot: true``, lockdown
``integrity``. An image whose ESP holds its own shim and grub in
``\\EFI\\teethtest\\`` (and no removable-path loader, so only a boot entry
can boot it) is written; ``run_image`` leaves the loader alone, creates a
boot entry labelled from the image's os-release first in ``BootOrder``
(removing nothing: the store is fresh) and kexecs the image's signed
kernel with ``kexec_file_load``; that kernel boots (the marker, the BLS
command line, no ``BOOT_IMAGE``) and reboots the VM; OVMF then starts that
very entry (the fresh store's order listed the CD-ROM first), the image's
own shim and grub boot its kernel (its grub.cfg's token, ``BOOT_IMAGE=``).

``test_agent_loader``: the ESP image on a read-only disk boots the ramdisk
with that store and disk; an image with an empty ESP (other partition
GUIDs) is written to the disk. ``run_image`` removes the earlier tenant's
entry (its partition is now on no disk), and only that one: every other
entry in the store (OVMF's UiApp, shell, network and media entries) is
byte for byte as it was, the BootOrder the old one without it. The image
gets the agent's signed shim and grub (``\\EFI\\debian\\``, the bytes of the
ramdisk's), a boot entry first in ``BootOrder``, a ``kexec -s``; the
ramdisk's medium is then taken away, and after the reboot OVMF starts
that entry and the agent's grub boots the image's kernel.

``test_unsigned_kernel_reboots``: the ISO boots the ramdisk with that
store and disk; ``decom.disk_erase`` of the target disk removes exactly
the entry the test before left (real ``efibootmgr -B``; the store
otherwise unchanged). Then an image whose kernel has no signature: the
agent does not try kexec, answers ``boot.method: reboot`` with the reason
``kernel_unsigned``, sets BootNext to the new entry and reboots; the
boot override still lists the CD-ROM first, and OVMF starts the new
entry: BootNext.
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


def boot_ramdisk(machines, name, variables, medium, target, server,
                 image_server, reboot, boot_order=()):
    """A UEFI machine with the variable store ``variables`` booting the
    ramdisk from ``medium`` (``(kind, path)``, disk 0) with ``target`` as
    its install disk; returns it once the agent connected, with the
    agent."""
    vm = machines.create(
        name, cls=uefi.UefiMachine,
        disks=[(medium[0], medium[1], "RAMDISK0001"),
               ("virtio", target, "VDISK0001")],
        forwards={uefi.ENDPOINT_GUEST_PORT: server.port,
                  IMAGES_GUEST_PORT: image_server.server_address[1]},
        variables=variables, reboot=reboot, boot_order=boot_order)
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


def check_started(vm, firmware, entry, option):
    """OVMF's ``firmware`` console line (a :data:`uefi.FIRMWARE_BOOT`
    match) starts ``entry``, the load option ``option`` the store held:
    its number, its label and the partition it boots (efibootmgr reuses
    the lowest free number, so the number alone may be an earlier
    entry's)."""
    assert firmware.group(1).upper() == "BOOT%s" % entry.upper(), \
        firmware.group(0)
    assert firmware.group(2) == uefi_images.LABEL, firmware.group(0)
    # The rest of the line (the serial console may not have it yet).
    rest = vm.wait_for_console(r" from ([^\r\n]*)[\r\n]", BOOT_TIMEOUT,
                               start=firmware.end())
    assert rest.start() == firmware.end(), rest.group(0)
    assert rest.group(1).startswith(
        "HD(1,GPT,%s," % option["partition_uuid"].upper()), rest.group(0)


def entry_option(vm, entry, loader):
    """The load option ``entry`` in the store: it boots ``loader`` from a
    GPT partition."""
    option = uefi.boot_variables(vm.variables)["options"][entry]
    assert option["partition_uuid"], option
    assert option["file"].lower() == loader.lower(), option
    return option


def check_kexec_then_firmware(vm, start, entry, option, grub_token):
    """The kexec'd kernel boots and reboots; then OVMF starts ``entry``
    (the load option ``option``) and grub boots the image's kernel with
    ``grub_token``."""
    booted = vm.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT,
                                 start=start)
    words = booted.group(1).split()
    assert uefi_images.BLS_TOKEN in words, words
    assert not any(w.startswith("BOOT_IMAGE=") for w in words), words
    rebooted = vm.wait_for_console(re.escape(uefi_images.KEXEC_REBOOT),
                                   BOOT_TIMEOUT, start=booted.end())
    firmware = vm.wait_for_console(uefi.FIRMWARE_BOOT, BOOT_TIMEOUT,
                                   start=rebooted.end())
    check_started(vm, firmware, entry, option)
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


#: The boot override of the chained tests: the ramdisk's medium first,
#: then the target disk, then the NIC (see ``tests.vm.uefi``).
CHAINED_BOOT_ORDER = ("RAMDISK0001", "VDISK0001", "net")


@pytest.fixture(scope="module")
def chain():
    """What each test leaves the next one in this module: ``{test name:
    {"variables", "target", "entry", "partition_uuid"}}``, the variable
    store and the target disk files (used in place) and the boot entry
    it left for the tenant."""
    return {}


def inherited(chain, earlier):
    """The state ``earlier`` left; fails the test when there is none (the
    chained test would otherwise prove nothing)."""
    state = chain.get(earlier)
    if state is None:
        pytest.fail("this test starts from the variable store and target "
                    "disk %s leaves, and it left none (it failed, was "
                    "skipped or was not selected): run the module's tests "
                    "in order" % earlier)
    return state


def leave(chain, name, vm, target, entry):
    """Record the store and disk of the ended ``vm`` for the next test,
    after checking the store holds ``entry``, a GPT disk entry."""
    options = uefi.boot_variables(vm.variables)["options"]
    assert entry in options, options
    assert options[entry]["label"] == uefi_images.LABEL, options[entry]
    assert options[entry]["partition_uuid"], options[entry]
    chain[name] = {"variables": vm.variables, "target": target,
                   "entry": entry,
                   "partition_uuid": options[entry]["partition_uuid"]}


def first_firmware_boot(vm):
    """The first ``(number, label)`` OVMF started on this machine."""
    first = re.search(uefi.FIRMWARE_BOOT, vm.console())
    assert first, vm.console_tail()
    return first.group(1)[4:].upper(), first.group(2)


def check_store_change(before, after, removed=(), added=()):
    """The store changed by exactly ``removed`` and ``added`` (entry
    numbers; efibootmgr gives a new entry the lowest free number, so one
    may be both): every other boot entry is byte for byte as it was, and
    the BootOrder is the old one without ``removed`` and with ``added``
    first."""
    for number in removed:
        assert number in before["options"], (number, before)
        if number in added:
            assert after["options"][number] != before["options"][number], \
                (number, after)
        else:
            assert number not in after["options"], (number, after)
    for number in added:
        assert number in after["options"], (number, after)
        assert number not in before["options"] or number in removed, \
            (number, before)
    kept = {number: option for number, option in before["options"].items()
            if number not in removed}
    assert {number: option for number, option in after["options"].items()
            if number not in added} == kept
    assert after["boot_order"] == list(added) + [
        number for number in before["boot_order"] if number not in removed]


def check_firmware_entries(store):
    """The store holds OVMF's own entries (so that keeping them proves
    something): UiApp, the UEFI shell, a network boot entry, and the
    entry it made for the ramdisk's medium."""
    labels = [option["label"] for option in store["options"].values()
              if option["partition_uuid"] is None]
    assert "UiApp" in labels, labels
    assert "EFI Internal Shell" in labels, labels
    assert any(label.startswith(("UEFI PXE", "UEFI HTTP"))
               for label in labels), labels
    return labels


def test_own_loader_boot_entry(ramdisk, uefi_test_images, image_server,
                               endpoints, machines, tmp_path, chain):
    directory = str(tmp_path)
    image = uefi_test_images["own_loader"]
    target = zero_disk(directory)
    server = endpoints.start()
    iso = ramdisk["uefi"]["files"]["teeth-ramdisk.iso"]
    vm, agent = boot_ramdisk(machines, "uefi-own",
                             uefi.fresh_variables(directory), ("cdrom", iso),
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
    # A fresh store: nothing to clean.
    assert result["boot_entries"]["removed"] == [], result
    boot = result["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["kexec_syscall"] == "kexec_file_load", boot
    assert boot["kernel_signed"] is True, boot
    assert boot["secure_boot"] is True and boot["mode"] == "uefi", boot
    option = entry_option(vm, entry, result["boot_loader"]["found"])
    check_kexec_then_firmware(vm, console_before, entry, option,
                              uefi_images.OWN_GRUB_TOKEN)
    leave(chain, "test_own_loader_boot_entry", vm, target, entry)


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
                      machines, tmp_path, chain):
    directory = str(tmp_path)
    earlier = inherited(chain, "test_own_loader_boot_entry")
    image = uefi_test_images["no_loader"]
    target = earlier["target"]
    server = endpoints.start()
    esp = ramdisk["uefi"]["files"]["esp.img"]
    vm, agent = boot_ramdisk(machines, "uefi-agent-loader",
                             earlier["variables"], ("virtio-ro", esp),
                             target, server, image_server, reboot=True,
                             boot_order=CHAINED_BOOT_ORDER)
    # The boot override, not the tenant's entry first in BootOrder.
    number, label = first_firmware_boot(vm)
    assert number != earlier["entry"] and label != uefi_images.LABEL, \
        vm.console_tail()
    before = uefi.boot_variables(vm.variables)
    old = before["options"].get(earlier["entry"])
    assert old is not None and \
        old["partition_uuid"] == earlier["partition_uuid"], before
    check_firmware_entries(before)

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
    # The earlier tenant's entry boots a partition no disk has now (the
    # image replaced the table): removed with efibootmgr -B, nothing else.
    assert result["boot_entries"]["removed"] == [{
        "entry": earlier["entry"], "label": uefi_images.LABEL,
        "partition_uuid": earlier["partition_uuid"],
        "mbr_signature": None}], result
    after = uefi.boot_variables(vm.variables)
    check_store_change(before, after, removed=[earlier["entry"]],
                       added=[entry])
    new = after["options"][entry]
    assert new["partition_uuid"] != earlier["partition_uuid"], new
    assert new["file"] == loader["path"], new
    boot = result["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["kexec_syscall"] == "kexec_file_load", boot
    # The ramdisk's medium goes away, as a boot override ends: after the
    # reset OVMF passes over it to the tenant's entry.
    vm.drop_drive(0)
    check_kexec_then_firmware(vm, console_before, entry, new,
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
    leave(chain, "test_agent_loader", vm, target, entry)


def test_unsigned_kernel_reboots(ramdisk, uefi_test_images, image_server,
                                 endpoints, machines, chain):
    earlier = inherited(chain, "test_agent_loader")
    image = uefi_test_images["unsigned"]
    target = earlier["target"]
    server = endpoints.start()
    iso = ramdisk["uefi"]["files"]["teeth-ramdisk.iso"]
    vm, agent = boot_ramdisk(machines, "uefi-unsigned",
                             earlier["variables"], ("cdrom", iso), target,
                             server, image_server, reboot=True,
                             boot_order=CHAINED_BOOT_ORDER)
    number, label = first_firmware_boot(vm)
    assert "DVD-ROM" in label and number != earlier["entry"], \
        vm.console_tail()
    before = uefi.boot_variables(vm.variables)
    assert before["options"][earlier["entry"]]["partition_uuid"] == \
        earlier["partition_uuid"], before
    check_firmware_entries(before)

    # -- decom.disk_erase of the target: its boot entry goes too ------------
    final = cycle.run_task(server, agent.agent_id, "decom.qc",
                           {"task_id": "qc", "spec": {"cpu": {"count": 1}}})
    assert final["state"] == "complete", final
    path = cycle.by_serial(final["result"]["inventory"]["disks"],
                           "VDISK0001")["path"]
    final = cycle.run_task(server, agent.agent_id, "decom.disk_erase",
                           {"task_id": "erase", "devices": [path]})
    assert final["state"] == "complete", final
    erased = final["result"]
    assert [(d["path"], d["outcome"]) for d in erased["devices"]] == \
        [(path, "erased")], erased
    assert erased["devices"][0]["verified"] is True, erased
    assert erased["boot_entries_removed"] == [{
        "entry": earlier["entry"], "label": uefi_images.LABEL,
        "partition_uuid": earlier["partition_uuid"],
        "mbr_signature": None}], erased
    assert "boot_entries_error" not in erased, erased
    erased_store = uefi.boot_variables(vm.variables)
    check_store_change(before, erased_store, removed=[earlier["entry"]])

    # -- run_image of an image whose kernel has no signature ----------------
    console_before = len(vm.console())
    result = install(server, agent.agent_id, image_server, image,
                     "unsigned.img")
    entry = check_entry_first(result)
    # decom left nothing to clean.
    assert result["boot_entries"]["removed"] == [], result
    boot = result["boot"]
    assert boot["method"] == "reboot", boot
    assert boot["reason"] == "kernel_unsigned", boot
    assert boot["reason_text"], boot
    assert boot["kernel_signed"] is False, boot
    assert boot["kexec_syscall"] is None, boot
    assert boot.get("boot_next") == entry, boot
    # Read at once: the firmware deletes BootNext when it takes it, and
    # the agent's reboot and OVMF's start take many seconds.
    after = uefi.boot_variables(vm.variables)
    assert after["boot_next"] == entry, after
    check_store_change(erased_store, after, added=[entry])
    option = after["options"][entry]
    assert option["partition_uuid"] != earlier["partition_uuid"], option
    assert option["file"].lower() == \
        result["boot_loader"]["found"].lower(), option
    # The agent reboots; the override still lists the ramdisk's CD-ROM
    # first, so only BootNext makes OVMF start the new entry.
    firmware = vm.wait_for_console(uefi.FIRMWARE_BOOT, BOOT_TIMEOUT,
                                   start=console_before)
    check_started(vm, firmware, entry, option)
    # No kexec happened before the reboot.
    assert images.BOOTED_MARKER not in \
        vm.console()[console_before:firmware.start()]
    vm.stop()
    cycle.log("reboot fallback: OVMF -> BootNext %s", firmware.group(1))
