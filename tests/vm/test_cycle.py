"""The whole cycle on (virtual) hardware: the ramdisk under qemu, driven by
the endpoint library in this process over the protocol.

Every link is TLS (see ``conftest``). ``test_decommission_to_kexec``:
the machine's client certificate comes from virtual media (an ISO on a
CD-ROM, ``teeth_ramdisk.tls_media=LABEL=TEETHTLS``) and the endpoint
requires it; handshake, ``decom.qc`` (the three disks
with their real transports), ``decom.disk_erase`` across an endpoint
restart (NVMe by Format NVM, SATA by overwrite with the reasons recorded,
every disk file zero afterwards), ``standbye.cache_images``,
``prepare_image`` onto the virtio disk chosen by serial, ``run_image`` with
a config drive, then the real kexec: the image's own kernel and initrd
print their marker on the console. The disk file then holds the image's
root file system and a config drive with the metadata sent.

``test_reboot_fallback``: an image without a kernel (qcow2, written
straight from its URL, to the disk named by root-device hints given as
JSON on the kernel command line) and a prebuilt config drive: the agent
completes with ``boot.method = reboot`` and reboots, which ends qemu
(``-no-reboot``).

``test_grub_install``: an image with no boot loader (no MBR boot code, an
empty BIOS boot partition, no grub.cfg) written to a zeroed virtio disk;
``run_image`` installs the agent's grub (``boot_loader.action =
installed``) and kexecs. The disk file then holds grub's boot code in the
MBR, its core image in the BIOS boot partition and ``/boot/grub`` (modules
and the agent's grub.cfg) in the image's root, read with debugfs; then a
second qemu without ``-kernel`` boots the disk through SeaBIOS and grub,
and the image's initrd prints its marker and a command line starting with
grub's ``BOOT_IMAGE=``.
"""

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import uuid

from teeth_agent import transport
from tests.functional import standbye_images
from tests.vm import images
from tests.vm import machine

MIB = 1024 * 1024
ENDPOINT_GUEST_PORT = 9999
IMAGES_GUEST_PORT = 8080
# Bounds, not expectations: they only decide how long a broken build
# takes to fail (TCG emulation on two shared cores is slow and noisy).
BOOT_TIMEOUT = 240
TASK_TIMEOUT = 600
CALL_TIMEOUT = 60


def log(message, *args):
    sys.stderr.write("vm-test: " + (message % args) + "\n")


def make_disk(directory, name, size_bytes):
    """A disk file full of random bytes, so that zeroes later prove an
    erase."""
    path = os.path.join(directory, name)
    with open(path, "wb") as stream:
        remaining = size_bytes
        while remaining:
            chunk = os.urandom(min(remaining, 4 * MIB))
            stream.write(chunk)
            remaining -= len(chunk)
    return path


def nonzero_offset(path):
    """The offset of the first non-zero byte of the file, or None."""
    zeroes = bytes(4 * MIB)
    offset = 0
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(len(zeroes))
            if not chunk:
                return None
            if chunk != zeroes[:len(chunk)]:
                return offset + next(i for i, b in enumerate(chunk) if b)
            offset += len(chunk)


def guest_url(server, name):
    return "http://%s:%d%s" % (machine.GUEST_SERVER, IMAGES_GUEST_PORT,
                               name)


def call(server, agent_id, method, params):
    log("%s %s", method, json.dumps(params)[:200])
    return server.call(agent_id, method, params, timeout=CALL_TIMEOUT)


def run_task(server, agent_id, method, params, timeout=TASK_TIMEOUT):
    """Start a task command and wait for its final state."""
    answer = call(server, agent_id, method, params)
    assert answer["state"] in ("running", "complete"), answer
    final = server.wait_for_task(agent_id, params["task_id"],
                                 timeout=timeout)
    assert final is not None, "%s did not end within %ss" % (method, timeout)
    log("%s ended %s", method, final["state"])
    return final


def wait_for_agent(server, vm, agent_id=None):
    agent = server.wait_for_agent(agent_id, timeout=BOOT_TIMEOUT)
    assert agent is not None, "no agent connected:\n" + vm.console_tail()
    return agent


def partitions_of(path):
    done = subprocess.run(["sfdisk", "--json", path], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)["partitiontable"]


def read_config_drive_file(disk_path, directory, name):
    """``name`` (a path inside the ISO) from the config-2 partition of the
    disk file, read with an offset and xorriso: no device is touched."""
    table = partitions_of(disk_path)
    drives = [p for p in table["partitions"] if p.get("name") == "config-2"]
    assert len(drives) == 1, table
    sector = table.get("sectorsize", 512)
    iso = os.path.join(directory, "config-drive.iso")
    with open(disk_path, "rb") as stream, open(iso, "wb") as out:
        stream.seek(drives[0]["start"] * sector)
        out.write(stream.read(drives[0]["size"] * sector))
    extracted = os.path.join(directory, os.path.basename(name))
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", iso,
                    "-extract", name, extracted], capture_output=True,
                   check=True)
    with open(extracted, "rb") as stream:
        return stream.read()


def by_serial(disks, serial):
    found = [disk for disk in disks if disk.get("serial") == serial]
    assert len(found) == 1, (serial, disks)
    return found[0]


def test_decommission_to_kexec(ramdisk, test_images, image_server, endpoints,
                               machines, vm_tls, tmp_path):
    directory = str(tmp_path)
    disks = {
        "virtio": make_disk(directory, "virtio.img", 256 * MIB),
        "nvme": make_disk(directory, "nvme.img", 128 * MIB),
        "sata": make_disk(directory, "sata.img", 128 * MIB),
    }
    media = images.tls_media(directory,
                             vm_tls.agent_certificate("vm-cycle"))
    image = test_images["kexec"]
    image_server.add("/kexec.img", image["path"])
    server = endpoints.start(require_client_cert=True)
    port = server.port
    vm = machines.create(
        "cycle", kernel=ramdisk["files"]["vmlinux"],
        initrd=ramdisk["files"]["initrd.img"],
        # The cache lives in the guest's RAM: leave 64 MiB free, not 1 GiB.
        cmdline=machine.ramdisk_cmdline(
            ENDPOINT_GUEST_PORT,
            ["teeth_agent.standbye.cache_reserve=%d" % (64 * MIB),
             "teeth_agent.agent_id=vm-cycle",
             "teeth_ramdisk.tls_media=LABEL=%s" % images.TLS_MEDIA_LABEL]),
        disks=[("virtio", disks["virtio"], "VDISK0001"),
               ("nvme", disks["nvme"], "NVME0001"),
               ("sata", disks["sata"], "SATA0001"),
               ("cdrom", media, "TLSMEDIA01")],
        forwards={ENDPOINT_GUEST_PORT: port,
                  IMAGES_GUEST_PORT: image_server.server_address[1]})
    vm.start()

    # -- handshake, over TLS with the certificate from the media ------------
    agent = wait_for_agent(server, vm)
    agent_id = agent.agent_id
    log("boot to handshake: %.1f s", transport.monotonic() - vm.started_at)
    assert agent_id == "vm-cycle"
    assert "client certificate from TLS media" in vm.console()
    peer = agent.connection.sock.getpeercert()
    assert ("URI", "teeth-agent:vm-cycle") in peer["subjectAltName"], peer
    methods = json.dumps(agent.handshake["extensions"])
    for method in ("disk_erase", "qc", "cache_images", "run_image"):
        assert method in methods, agent.handshake["extensions"]

    # -- decom.qc: the three disks with their real transports ---------------
    final = run_task(server, agent_id, "decom.qc",
                     {"task_id": "qc", "spec": {"cpu": {"count": 1}}})
    assert final["state"] == "complete", final
    inventory = final["result"]["inventory"]
    found = inventory["disks"]
    assert by_serial(found, "VDISK0001")["transport"] == "virtio"
    assert by_serial(found, "NVME0001")["transport"] == "nvme"
    assert by_serial(found, "SATA0001")["transport"] == "sata"
    for serial, size in (("VDISK0001", 256), ("NVME0001", 128),
                         ("SATA0001", 128)):
        assert by_serial(found, serial)["size_bytes"] == size * MIB
        assert by_serial(found, serial)["eligible"] is True
    assert all(check["pass"] for check in final["result"]["checks"])

    # -- decom.qc's health checks with the ramdisk's tools ------------------
    # SMART on the drives qemu gives it (SATA and NVMe; virtio has none),
    # a small memtester and stress-ng run, and a fio read of every disk.
    smart_paths = [by_serial(found, serial)["path"]
                   for serial in ("SATA0001", "NVME0001")]
    final = run_task(server, agent_id, "decom.qc", {"task_id": "qc-health",
                     "spec": {
                         "smart": {"devices": smart_paths,
                                   "self_test": "if_supported"},
                         # Small: memtester and stress-ng run emulated (TCG).
                         "memory_test": {"size_bytes": 1 * MIB},
                         "stress": {"seconds": 1, "memory_bytes": 8 * MIB},
                         "disk_read": {"min_mbps": 1,
                                       "size_bytes": 16 * MIB}}})
    assert final["state"] == "complete", final
    checks = {check["name"]: check for check in final["result"]["checks"]}
    for path in smart_paths:
        assert checks["smart[%s].health" % path]["actual"] == "PASSED", checks
    assert checks["memory_test"]["pass"], checks
    assert checks["stress"]["actual"]["exit_status"] == 0, checks
    for disk in found:
        assert checks["disk_read[%s]" % disk["path"]]["actual"]["bytes"] \
            == 16 * MIB, checks

    # -- decom.disk_erase, with the endpoint restarted while it runs --------
    answer = call(server, agent_id, "decom.disk_erase", {"task_id": "erase"})
    assert answer["state"] == "running", answer
    server.stop()
    log("endpoint stopped while the erase runs; restarting on port %d", port)
    server = endpoints.start(port=port, require_client_cert=True)
    assert server.port == port
    agent = wait_for_agent(server, vm, agent_id)
    final = server.wait_for_task(agent_id, "erase", timeout=TASK_TIMEOUT)
    assert final is not None, "the erase's final state never arrived"
    assert final["state"] == "complete", final
    erased = {device["path"]: device for device in final["result"]["devices"]}
    nvme = by_serial(found, "NVME0001")["path"]
    sata = by_serial(found, "SATA0001")["path"]
    virtio = by_serial(found, "VDISK0001")["path"]
    assert set(erased) == {nvme, sata, virtio}, erased
    assert erased[nvme]["method"].startswith("nvme_format"), erased[nvme]
    assert erased[sata]["method"] == "overwrite", erased[sata]
    skipped = {entry["method"]: entry["reason"]
               for entry in erased[sata]["skipped_methods"]}
    assert any(name.startswith("ata_") for name in skipped), skipped
    assert all(reason for reason in skipped.values()), skipped
    assert all(device["verified"] for device in erased.values()), erased
    for kind, path in disks.items():
        offset = transport.run_in_thread(nonzero_offset, path)
        assert offset is None, "%s disk: byte %s is not zero" % (
            kind, offset)

    # -- standbye: cache, prepare on the virtio disk, run with kexec --------
    image_id = str(uuid.uuid4())
    digest = standbye_images.sha256_of(image["path"])
    final = run_task(server, agent_id, "standbye.cache_images", {
        "task_id": "cache", "images": [{
            "id": image_id, "urls": [guest_url(server, "/kexec.img")],
            "hashes": {"sha256": digest},
            "size": os.path.getsize(image["path"])}]})
    assert final["state"] == "complete", final
    assert final["result"]["images"][0]["status"] == "cached", final
    final = run_task(server, agent_id, "standbye.prepare_image", {
        "task_id": "prepare", "image": image_id,
        "root_device_hints": {"serial": "VDISK0001"}})
    assert final["state"] == "complete", final
    assert final["result"]["device"] == virtio, final

    meta_data = {"uuid": str(uuid.uuid4()), "hostname": "teeth-vm-test",
                 "name": "teeth-vm-test"}
    console_before = len(vm.console())
    final = run_task(server, agent_id, "standbye.run_image", {
        "task_id": "run", "image_id": image_id,
        "config_drive": {"meta_data": meta_data,
                         "user_data": "#cloud-config\n"}})
    assert final["state"] == "complete", final
    boot = final["result"]["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["kernel"].endswith("vmlinuz-" + ramdisk["kernel_release"])
    assert images.CMDLINE_TOKEN in boot["cmdline"], boot
    assert "root=UUID=%s" % image["root_uuid"] in boot["cmdline"], boot

    # -- the real kexec: the image's kernel boots and prints its marker -----
    vm.wait_for_console(images.BOOTED_MARKER, BOOT_TIMEOUT,
                        start=console_before)
    booted = vm.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT,
                                 start=console_before)
    assert images.CMDLINE_TOKEN in booted.group(1)
    assert "root=UUID=%s" % image["root_uuid"] in booted.group(1)
    vm.wait_for_exit(BOOT_TIMEOUT)
    log("kexec done; the test image powered the VM off")

    # -- the disk file: the image's root and the config drive ---------------
    with open(disks["virtio"], "rb") as stream, \
            open(image["path"], "rb") as original:
        assert stream.read(len(images.BOOT_CODE)) == images.BOOT_CODE
        stream.seek(image["root_offset"])
        original.seek(image["root_offset"])
        assert hashlib.sha256(stream.read(image["root_size"])).digest() == \
            hashlib.sha256(original.read(image["root_size"])).digest()
    written = json.loads(read_config_drive_file(
        disks["virtio"], directory, "/openstack/latest/meta_data.json"))
    assert written == meta_data
    assert read_config_drive_file(
        disks["virtio"], directory,
        "/openstack/latest/user_data") == b"#cloud-config\n"


def prebuilt_config_drive(directory, meta_data):
    """An ISO labelled config-2, gzip-compressed then base64-encoded, as a
    server that builds its own config drives sends it."""
    tree = os.path.join(directory, "config-drive-tree")
    latest = os.path.join(tree, "openstack", "latest")
    os.makedirs(latest)
    with open(os.path.join(latest, "meta_data.json"), "w") as stream:
        json.dump(meta_data, stream)
    iso = os.path.join(directory, "prebuilt.iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso,
                    "-V", "config-2", "-R", "-J", tree],
                   capture_output=True, check=True)
    with open(iso, "rb") as stream:
        return base64.b64encode(gzip.compress(stream.read())).decode()


def test_reboot_fallback(ramdisk, test_images, image_server, endpoints,
                         machines, tmp_path):
    directory = str(tmp_path)
    install = make_disk(directory, "virtio.img", 128 * MIB)
    qcow2 = os.path.join(directory, "no-kernel.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                    test_images["no_kernel"]["path"], qcow2],
                   capture_output=True, check=True)
    image_server.add("/no-kernel.qcow2", qcow2)
    server = endpoints.start()
    vm = machines.create(
        "reboot", kernel=ramdisk["files"]["vmlinux"],
        initrd=ramdisk["files"]["initrd.img"],
        # The disk is smaller than the default install device's 4 GiB:
        # name it in the ramdisk's configuration, a JSON option on the
        # kernel command line. The qcow2 is staged in the guest's RAM,
        # which must keep only 64 MiB free, not 1 GiB.
        cmdline=machine.ramdisk_cmdline(
            ENDPOINT_GUEST_PORT,
            ['teeth_agent.hardware.root_device_hints={"serial":"VDISK0001"}',
             "teeth_agent.standbye.cache_reserve=%d" % (64 * MIB)]),
        disks=[("virtio", install, "VDISK0001")],
        forwards={ENDPOINT_GUEST_PORT: server.port,
                  IMAGES_GUEST_PORT: image_server.server_address[1]})
    vm.start()
    agent_id = wait_for_agent(server, vm).agent_id

    image_id = str(uuid.uuid4())
    final = run_task(server, agent_id, "standbye.prepare_image", {
        "task_id": "prepare", "image": {
            "id": image_id, "urls": [guest_url(server, "/no-kernel.qcow2")],
            "hashes": {"sha256": standbye_images.sha256_of(qcow2)}}})
    assert final["state"] == "complete", final
    assert final["result"]["format"] == "qcow2", final

    meta_data = {"uuid": str(uuid.uuid4()), "hostname": "teeth-reboot"}
    final = run_task(server, agent_id, "standbye.run_image", {
        "task_id": "run", "image_id": image_id,
        "config_drive": prebuilt_config_drive(directory, meta_data)})
    assert final["state"] == "complete", final
    assert final["result"]["boot"]["method"] == "reboot", final
    # The agent reboots; with -no-reboot that ends qemu.
    assert vm.wait_for_exit(BOOT_TIMEOUT) == 0
    assert images.BOOTED_MARKER not in vm.console()
    assert json.loads(read_config_drive_file(
        install, directory, "/openstack/latest/meta_data.json")) == meta_data
    root = test_images["no_kernel"]
    with open(install, "rb") as stream, open(root["path"], "rb") as original:
        stream.seek(root["root_offset"])
        original.seek(root["root_offset"])
        assert stream.read(root["root_size"]) == \
            original.read(root["root_size"])


def ext4_listing(disk_path, offset, directory):
    """The names in ``directory`` of the ext4 file system at byte
    ``offset`` of the disk file, read with debugfs (read-only, from the
    file: no device is touched); empty when the directory is missing."""
    done = subprocess.run(
        ["debugfs", "-R", "ls -p %s" % directory,
         "%s?offset=%d" % (disk_path, offset)],
        capture_output=True, text=True, check=True)
    # -p: one "/inode/mode/uid/gid/name/size/" line per entry.
    return {line.split("/")[5] for line in done.stdout.splitlines()
            if line.count("/") >= 6} - {".", ".."}


def ext4_text(disk_path, offset, path):
    done = subprocess.run(
        ["debugfs", "-R", "cat %s" % path,
         "%s?offset=%d" % (disk_path, offset)],
        capture_output=True, text=True, check=True)
    return done.stdout


def test_grub_install(ramdisk, test_images, image_server, endpoints,
                      machines, tmp_path):
    """An image without a boot loader gets the agent's grub (BIOS), which
    then boots the disk on its own."""
    directory = str(tmp_path)
    image = test_images["grub"]
    with open(image["path"], "rb") as stream:
        mbr = stream.read(512)
        stream.seek(images.BIOS_BOOT_START)
        bios_boot = stream.read(images.BIOS_BOOT_SIZE)
    # What the checks below find must come from the agent, not the image.
    assert not any(mbr[:440]) and not any(bios_boot)
    assert ext4_listing(image["path"], image["root_offset"],
                        "/boot/grub") == set()
    # A zero disk: every non-zero byte outside the image's root and the
    # config drive was written by grub-install.
    install = os.path.join(directory, "virtio.img")
    with open(install, "wb") as stream:
        stream.truncate(128 * MIB)
    image_server.add("/grub.img", image["path"])
    server = endpoints.start()
    vm = machines.create(
        "grub", kernel=ramdisk["files"]["vmlinux"],
        initrd=ramdisk["files"]["initrd.img"],
        cmdline=machine.ramdisk_cmdline(ENDPOINT_GUEST_PORT),
        disks=[("virtio", install, "VDISK0001")],
        forwards={ENDPOINT_GUEST_PORT: server.port,
                  IMAGES_GUEST_PORT: image_server.server_address[1]})
    vm.start()
    agent_id = wait_for_agent(server, vm).agent_id

    image_id = str(uuid.uuid4())
    final = run_task(server, agent_id, "standbye.prepare_image", {
        "task_id": "prepare", "image": {
            "id": image_id, "urls": [guest_url(server, "/grub.img")],
            "hashes": {"sha256": standbye_images.sha256_of(image["path"])}},
        "root_device_hints": {"serial": "VDISK0001"}})
    assert final["state"] == "complete", final
    console_before = len(vm.console())
    final = run_task(server, agent_id, "standbye.run_image", {
        "task_id": "run", "image_id": image_id,
        "config_drive": {"meta_data": {"uuid": str(uuid.uuid4())}}})
    assert final["state"] == "complete", final
    assert final["result"]["boot_loader"] == {
        "action": "installed", "loader": "grub"}, final
    boot = final["result"]["boot"]
    assert boot["method"] == "kexec", boot
    assert boot["partition"] == image["root_number"], boot
    vm.wait_for_console(images.BOOTED_MARKER, BOOT_TIMEOUT,
                        start=console_before)
    booted = vm.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT,
                                 start=console_before)
    assert images.GRUB_CMDLINE_TOKEN in booted.group(1)
    vm.wait_for_exit(BOOT_TIMEOUT)
    log("kexec done after grub-install")

    # -- the disk file: grub in the MBR, the BIOS boot partition, /boot ----
    with open(install, "rb") as stream:
        mbr = stream.read(512)
        stream.seek(images.BIOS_BOOT_START)
        bios_boot = stream.read(images.BIOS_BOOT_SIZE)
    assert any(mbr[:440]), "no boot code in the MBR"
    assert mbr[510:512] == b"\x55\xaa", mbr[510:512].hex()
    assert any(bios_boot), "nothing embedded in the BIOS boot partition"
    table = partitions_of(install)
    roots = [p for p in table["partitions"] if p.get("name") == "root"]
    assert len(roots) == 1, table
    offset = roots[0]["start"] * table.get("sectorsize", 512)
    assert offset == image["root_offset"], table
    assert {"i386-pc", "grub.cfg"} <= ext4_listing(install, offset,
                                                   "/boot/grub")
    assert {"normal.mod", "core.img"} <= ext4_listing(
        install, offset, "/boot/grub/i386-pc")
    config = ext4_text(install, offset, "/boot/grub/grub.cfg")
    assert image["root_uuid"] in config, config
    assert "/boot/vmlinuz-%s" % ramdisk["kernel_release"] in config, config
    assert images.GRUB_CMDLINE_TOKEN in config, config

    # -- the firmware boots the disk: SeaBIOS, grub, the image's kernel -----
    started = transport.monotonic()
    firmware = machines.create("grub-boot", kernel=None, initrd=None,
                               cmdline=None,
                               disks=[("virtio", install, "VDISK0001")],
                               forwards={})
    firmware.start()
    booted = firmware.wait_for_console(r"cmdline: ([^\r\n]*)", BOOT_TIMEOUT)
    assert images.BOOTED_MARKER in firmware.console()
    cmdline = booted.group(1).split()
    # grub's linux command adds BOOT_IMAGE: the kernel came through grub.
    assert "BOOT_IMAGE=/boot/vmlinuz-%s" % ramdisk["kernel_release"] \
        in cmdline, cmdline
    assert images.GRUB_CMDLINE_TOKEN in cmdline, cmdline
    assert "root=UUID=%s" % image["root_uuid"] in cmdline, cmdline
    firmware.wait_for_exit(BOOT_TIMEOUT)
    log("firmware -> grub -> image kernel: %.1f s",
        transport.monotonic() - started)
