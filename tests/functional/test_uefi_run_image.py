"""run_image in UEFI mode on loop devices: the image's own loader gets a
boot entry, an image without one gets the agent's signed shim and grub
(in a new ESP when the table has room), kexec -s under Secure Boot and
the reboot fallback for an unsigned kernel; decom removes the entries of
the disks it erased.

The firmware is simulated by a vendor manager over the generic one: its
boot state says UEFI with Secure Boot, and its boot entries live in
memory (efibootmgr itself runs only in the OVMF VM tests). Everything
else is the generic manager on real loop devices, with simulated power.
"""

import inspect
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import uuid

from teeth_agent.disk import esp
from teeth_agent.disk import partitions
from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import decom
from teeth_agent.extensions import standbye
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import efi
from teeth_agent.hardware import generic
from teeth_agent.hardware import power
from teeth_agent.images import uefi
from teeth_agent import protocol
from teeth_agent import tasks
from tests.base import make_conf
from tests.functional import loopdev
from tests.functional import standbye_http
from tests.functional import standbye_images

MIB = 1024 * 1024
TASK_WAIT = 300
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLSRC="/dev/null")
SECURE = {"boot_mode": "uefi", "secure_boot": True, "setup_mode": False,
          "lockdown": "integrity"}
FOREIGN_GUID = "5c9a1e1d-2b3c-4d5e-8f90-a1b2c3d4e5f6"
DANGLING_GUID = "aaaaaaaa-bbbb-4ccc-9ddd-eeeeeeeeeeee"


def run(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


class FirmwareManager(generic.GenericHardwareManager):
    """UEFI with Secure Boot and an in-memory NVRAM; the rest generic."""

    state = SECURE
    config = None
    visible = ()
    counter = 0x10

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def get_boot_mode(self):
        return dict(type(self).state)

    def list_boot_entries(self):
        return json.loads(json.dumps(type(self).config))

    def list_block_devices(self):
        # Only the loop devices of the test: no host disk is ever read.
        return [device for device in super().list_block_devices()
                if device["path"] in type(self).visible]

    def create_boot_entry(self, path, partition, loader, label):
        config = type(self).config
        table = partitions.read_table(path)
        guid = next(p["uuid"].lower() for p in table["partitions"]
                    if p["number"] == partition)
        number = "%04X" % type(self).counter
        type(self).counter += 1
        config["entries"].append({
            "entry": number, "label": label, "active": True,
            "device_path": "HD(%d,GPT,%s)/File(%s)"
            % (partition, guid, loader),
            "kind": "disk", "partition": partition, "partition_uuid": guid,
            "mbr_signature": None, "loader": loader})
        config["boot_order"].insert(0, number)
        return number

    def delete_boot_entry(self, entry):
        config = type(self).config
        config["entries"] = [e for e in config["entries"]
                             if e["entry"] != entry]
        config["boot_order"] = [n for n in config["boot_order"]
                                if n != entry]

    def set_boot_order(self, order):
        type(self).config["boot_order"] = list(order)

    def set_boot_next(self, entry):
        type(self).config["boot_next"] = entry


def nvram():
    """The firmware's entries before the agent runs: its own (setup,
    shell, PXE), another OS on a disk the agent does not manage, and a
    dangling tenant entry."""
    return efi.parse_efibootmgr(
        "BootCurrent: 0002\nBootOrder: 0002,0000,0001,0003,0004\n"
        "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/"
        "FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n"
        "Boot0001* EFI Internal Shell\tFvVol(7cb8bdc9-f8eb-4f34-aaea-"
        "3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\n"
        "Boot0002* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x2,0x0)"
        "/MAC(525400123456,1)/IPv4(0.0.0.00.0.0.0,0,0)N.....YM....R,Y.\n"
        "Boot0003* other OS\tHD(1,GPT,%s,0x800,0x1000)/File(\\EFI\\o\\"
        "o.efi)\n"
        "Boot0004* old tenant\tHD(1,GPT,%s,0x800,0x1000)/File(\\EFI\\t\\"
        "shimx64.efi)\n" % (FOREIGN_GUID, DANGLING_GUID))


_SHARED = {}


def _shared():
    """Build the test images and start their server, once per module
    (:func:`tearDownModule` stops and removes them)."""
    if _SHARED:
        return _SHARED
    loopdev.require_root()
    for tool in ("sgdisk", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy",
                 "mdir", "xorriso", "partx", "wipefs"):
        if shutil.which(tool) is None:
            raise unittest.SkipTest("%s is not installed" % tool)
    for path in (uefi.SHIM_PATH, uefi.GRUB_PATH):
        if not os.path.isfile(path):
            raise unittest.SkipTest("%s is not installed" % path)
    tmp = tempfile.mkdtemp(prefix="teeth-uefi-")
    images, layouts = {}, {}

    def add(key, layout):
        layouts[key] = layout
        images[key] = {"id": str(uuid.uuid4()), "path": layout["path"],
                       "sha256": standbye_images.sha256_of(layout["path"]),
                       "size": os.path.getsize(layout["path"])}

    def os_release(tree):
        with open(os.path.join(tree, "etc", "os-release"), "w") as out:
            out.write('NAME="Teeth Linux"\nPRETTY_NAME="Teeth Linux '
                      '1 (test)"\n')

    def unsigned_kernel(tree):
        os_release(tree)
        # A PE image without a signature table, as sbverify sees it;
        # random bytes after it keep mkfs.ext4 -d from making it mostly
        # holes.
        kernel = os.path.join(tree, "boot", "vmlinuz-%s"
                              % standbye_images.KERNEL_VERSION)
        shutil.copy("/usr/lib/shim/fbx64.efi", kernel)
        with open(kernel, "ab") as stream:
            stream.write(os.urandom(512 * 1024))
    try:
        add("with_loader", standbye_images.build_disk_image(
            tmp, size_mib=20, name="loader.img", tree_hook=os_release))
        add("no_esp", standbye_images.build_disk_image(
            tmp, size_mib=20, esp=False, name="noesp.img",
            tree_hook=os_release))
        if os.path.isfile("/usr/lib/shim/fbx64.efi"):
            add("unsigned", standbye_images.build_disk_image(
                tmp, size_mib=20, name="unsigned.img",
                tree_hook=unsigned_kernel))
        server = standbye_http.ImageServer().__enter__()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for key, image in images.items():
        image["url"] = server.add("/%s" % key, image["path"])
    _SHARED.update(tmp=tmp, images=images, layouts=layouts, server=server)
    return _SHARED


def tearDownModule():
    if _SHARED:
        _SHARED["server"].__exit__(None, None, None)
        shutil.rmtree(_SHARED["tmp"], ignore_errors=True)
        _SHARED.clear()


class UefiRunImageTestBase(unittest.TestCase):
    """The images and their server are built once per module
    (:func:`_shared`); loop devices per test."""

    @classmethod
    def setUpClass(cls):
        shared = _shared()
        cls.images = shared["images"]
        cls.layouts = shared["layouts"]

    def setUp(self):
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.work = tempfile.mkdtemp(prefix="teeth-uefi-work-")
        self.addCleanup(shutil.rmtree, self.work, True)
        FirmwareManager.state = SECURE
        FirmwareManager.config = nvram()
        FirmwareManager.counter = 0x10
        # Another OS on a disk of this machine the agent may not write.
        other = self.loops.create(8 * MIB)
        run("sgdisk", "-n", "1:2048:0", "-u", "1:%s" % FOREIGN_GUID, other,
            check=True)
        FirmwareManager.visible = [other]

    def make_context(self, devices):
        FirmwareManager.visible = sorted(set(FirmwareManager.visible)
                                         | set(devices))
        self.conf = make_conf(**{
            "hardware.device_include": list(devices),
            "standbye.image_cache_dir": os.path.join(self.work, "cache"),
            "standbye.work_dir": os.path.join(self.work, "state"),
            "power.simulate": True,
            "power.final_status_timeout": 60.0})
        dispatcher = hardware.build_dispatcher(
            [("firmware", FirmwareManager),
             ("generic", generic.GenericHardwareManager)], self.conf)
        self.registry = tasks.TaskRegistry()
        self.power = power.PowerController(simulate=True)
        return ext_base.ExtensionContext(self.conf, dispatcher,
                                         self.registry, self.power)

    def call(self, extension, group, method, **raw):
        spec, bound = extension.commands()["%s.%s" % (group, method)]
        raw = dict(raw, task_id="t-%s" % uuid.uuid4().hex[:8])
        checked = ext_base.check_params(spec, raw)
        validator = extension.validator(spec)
        task_id = checked.pop("task_id")
        if validator is not None:
            # standbye's validators take the task id, decom's do not.
            if "task_id" in inspect.signature(validator).parameters:
                checked = validator(task_id=task_id, **checked)
                checked.pop("task_id")
            else:
                checked = validator(**checked)
        # The wire name, as the agent starts it (its result is checked
        # against that command's schema: tests/result_schemas.py).
        task, _ = self.registry.start(
            task_id, "%s.%s" % (group, method),
            lambda task: bound(task, **checked),
            spec.exclusive)
        deadline = time.monotonic() + TASK_WAIT
        while not task.terminal and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(task.terminal, "task %s never ended" % method)
        return task

    def prepare_and_run(self, key, device, include=(), before_run=None,
                        **run_params):
        extension = standbye.StandbyeExtension(
            self.make_context([device] + list(include)))
        extension.name = "standbye"
        extension.start()
        image = self.images[key]
        task = self.call(extension, "standbye", "prepare_image", image={
            "id": image["id"], "urls": [image["url"]],
            "hashes": {"sha256": image["sha256"]}, "size": image["size"]},
            root_device_hints={"name": device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        if before_run is not None:
            before_run()
        return self.call(extension, "standbye", "run_image",
                         image_id=image["id"],
                         config_drive={"meta_data": {"uuid": "u"}},
                         **run_params)

    def read(self, node, path):
        out = os.path.join(self.work, "out-%s" % os.urandom(4).hex())
        result = run("mcopy", "-n", "-i", node, "::" + path, out, env=ENV)
        self.assertEqual(0, result.returncode, result.stderr)
        with open(out, "rb") as stream:
            return stream.read()

    def entries(self):
        return {e["entry"]: e for e in FirmwareManager.config["entries"]}

    def mbr_disk(self, label_id, size=16 * MIB):
        """A loop device with an MBR table of disk identifier
        ``label_id`` and one EFI system partition."""
        device = self.loops.create(size)
        run("sfdisk", "-q", device, check=True,
            input="label: dos\nlabel-id: %s\nstart=2048, size=8192, "
            "type=ef\n" % label_id)
        return device

    def add_entries(self, text):
        """Entries parsed from ``efibootmgr -v`` lines, added to the
        simulated NVRAM."""
        added = efi.parse_efibootmgr(text)["entries"]
        FirmwareManager.config["entries"].extend(added)
        FirmwareManager.config["boot_order"].extend(e["entry"] for e in added)


class UefiRunImageTest(UefiRunImageTestBase):

    def test_image_loader_gets_the_first_entry(self):
        device = self.loops.create(96 * MIB)
        task = self.prepare_and_run("with_loader", device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        result = task.result
        self.assertEqual({"action": "left alone",
                          "found": "\\EFI\\BOOT\\BOOTX64.EFI",
                          "partition": 1, "entry": "0010"},
                         result["boot_loader"])
        boot = result["boot"]
        self.assertEqual("uefi", boot["mode"])
        self.assertEqual("0010", boot["entry"])
        self.assertTrue(boot["secure_boot"])
        entry = self.entries()["0010"]
        self.assertEqual("Teeth Linux 1 (test)", entry["label"])
        self.assertEqual("\\EFI\\BOOT\\BOOTX64.EFI", entry["loader"])
        self.assertEqual(1, entry["partition"])
        self.assertEqual("0010", FirmwareManager.config["boot_order"][0])
        # The dangling tenant entry went; firmware, PXE and the other
        # OS's entries stayed.
        self.assertEqual(["0004"], [r["entry"] for r in
                                    result["boot_entries"]["removed"]])
        self.assertEqual({"0000", "0001", "0002", "0003", "0010"},
                         set(self.entries()))
        # A test kernel that is no PE image: sbverify cannot tell, the
        # signature-checked load is tried (simulated here).
        self.assertEqual("kexec", boot["method"])
        self.assertEqual("kexec_file_load", boot["kexec_syscall"])
        self.assertTrue(self.power.actions[0]["file_load"])
        # Run again: the entry of the first run is replaced, not added to.
        extension = standbye.StandbyeExtension(self.make_context([device]))
        extension.name = "standbye"
        extension.start()
        task = self.call(extension, "standbye", "run_image",
                         image_id=self.images["with_loader"]["id"],
                         config_drive={"meta_data": {"uuid": "u"}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["0010"], [r["entry"] for r in
                                    task.result["boot_entries"]["removed"]])
        self.assertEqual({"0000", "0001", "0002", "0003", "0011"},
                         set(self.entries()))

    def test_no_esp_gets_one_with_the_signed_loaders(self):
        device = self.loops.create(256 * MIB)
        task = self.prepare_and_run("no_esp", device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        loader = task.result["boot_loader"]
        self.assertEqual("installed", loader["action"])
        self.assertTrue(loader["esp_created"])
        self.assertEqual("shim+grub", loader["loader"])
        self.assertEqual("\\EFI\\debian\\shimx64.efi", loader["path"])
        table = partitions.read_table(device)
        esps = uefi.find_esps(table)
        self.assertEqual([loader["partition"]], [p["number"] for p in esps])
        self.assertEqual(esp.ESP_SIZE // 512, esps[0]["sectors"])
        node = partitions.partition_node(device, loader["partition"])
        with open(uefi.SHIM_PATH, "rb") as stream:
            self.assertEqual(stream.read(),
                             self.read(node, "/EFI/debian/shimx64.efi"))
        with open(uefi.GRUB_PATH, "rb") as stream:
            self.assertEqual(stream.read(),
                             self.read(node, "/EFI/BOOT/grubx64.efi"))
        grub_cfg = self.read(node, "/EFI/debian/grub.cfg").decode()
        layout = self.layouts["no_esp"]
        self.assertIn("search --no-floppy --fs-uuid --set=root %s"
                      % layout["root_uuid"], grub_cfg)
        self.assertIn("linux %s %s" % (layout["kernel"], layout["cmdline"]),
                      grub_cfg)
        self.assertIn("initrd %s" % layout["initrd"], grub_cfg)
        entry = self.entries()[task.result["boot"]["entry"]]
        self.assertEqual("\\EFI\\debian\\shimx64.efi", entry["loader"])
        self.assertEqual(loader["partition"], entry["partition"])

    def digest(self, device):
        """sha256 of the sparse file behind ``device``, after flushing
        what the loop device still buffers."""
        fd = os.open(device, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return standbye_images.sha256_of(self.loops.backing_file(device))

    def test_no_room_for_an_esp_is_refused_before_the_disk_changes(self):
        # 96 MiB: no 128 MiB range even with the backup GPT header moved
        # to the end. 149 MiB: the ESP would fit after the image, but not
        # next to the config drive at the end of the disk. Either way
        # nothing is written: not the backup header, not the config drive.
        for size in (96, 149):
            with self.subTest(size_mib=size):
                device = self.loops.create(size * MIB)
                before = []
                task = self.prepare_and_run(
                    "no_esp", device,
                    before_run=lambda: before.append(self.digest(device)))
                self.assertEqual(tasks.ERROR, task.state)
                self.assertIn("no free range of 128 MiB for an EFI system "
                              "partition", task.msg)
                self.assertEqual(before, [self.digest(device)])
                self.assertEqual([], self.power.actions)
                self.assertEqual({"0000", "0001", "0002", "0003", "0004"},
                                 set(self.entries()))
                table = partitions.read_table(device)
                # The backup header stayed where the image put it.
                self.assertEqual(20 * 2048 - 34, table["last_lba"])

    def test_unsigned_kernel_under_secure_boot_reboots_into_the_entry(self):
        if "unsigned" not in self.images:
            self.skipTest("/usr/lib/shim/fbx64.efi is not installed")
        if shutil.which("sbverify") is None:
            self.skipTest("sbverify is not installed")
        device = self.loops.create(96 * MIB)
        task = self.prepare_and_run("unsigned", device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        boot = task.result["boot"]
        self.assertEqual("reboot", boot["method"])
        self.assertEqual("kernel_unsigned", boot["reason"])
        self.assertFalse(boot["kernel_signed"])
        self.assertEqual(boot["entry"], FirmwareManager.config["boot_next"])
        self.assertEqual([], self.power.actions)
        task.acknowledged.set()
        deadline = time.monotonic() + TASK_WAIT
        while not self.power.actions and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([{"action": "reboot"}], self.power.actions)

    def test_bios_requested_on_a_uefi_machine_leaves_entries_alone(self):
        device = self.loops.create(96 * MIB)
        FirmwareManager.state = dict(SECURE, secure_boot=False,
                                     lockdown="none")
        task = self.prepare_and_run("with_loader", device, boot_mode="bios")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("bios", task.result["boot"]["mode"])
        self.assertIsNone(task.result["boot_entries"])
        self.assertEqual("kexec_load", task.result["boot"]["kexec_syscall"])
        self.assertEqual({"0000", "0001", "0002", "0003", "0004"},
                         set(self.entries()))

    def test_mbr_and_san_entries(self):
        # A writable MBR disk (signature 0x0001abcd, printed without its
        # leading zeros), a protected MBR disk, a signature on no disk and
        # an iSCSI SAN entry whose LUN partition no disk has.
        writable = self.mbr_disk("0x0001abcd")
        protected = self.mbr_disk("0x4e1f2a3b")
        FirmwareManager.visible = [FirmwareManager.visible[0], protected]
        self.add_entries(
            "Boot0005* old MBR tenant\tHD(1,MBR,0x1abcd,0x800,0x2000)/File("
            "\\EFI\\t\\shimx64.efi)\n"
            "Boot0006* protected MBR OS\tHD(1,MBR,0x4e1f2a3b,0x800,0x2000)/"
            "File(\\EFI\\o\\o.efi)\n"
            "Boot0007* gone MBR disk\tHD(1,MBR,0xdeadbeef,0x800,0x2000)/File("
            "\\EFI\\g\\shimx64.efi)\n"
            "Boot0008* iSCSI SAN boot\tPciRoot(0x0)/Pci(0x2,0x0)/MAC("
            "525400123456,1)/IPv4(192.168.0.10,6,Static,192.168.0.2,"
            "192.168.0.1,255.255.255.0)/iSCSI(iqn.2020-01.test:lun0,1,0x0,"
            "None,None,None,TCP)/HD(1,GPT,11111111-2222-4333-8444-"
            "555555555555,0x800,0x100000)/File(\\EFI\\redhat\\"
            "shimx64.efi)\n")
        device = self.loops.create(96 * MIB)
        task = self.prepare_and_run("with_loader", device,
                                    include=[writable])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["0004", "0005", "0007"], sorted(
            r["entry"] for r in task.result["boot_entries"]["removed"]))
        self.assertEqual({"0000", "0001", "0002", "0003", "0006", "0008",
                          "0010"}, set(self.entries()))

    def test_uefi_requested_on_a_bios_ramdisk_sets_up_the_disk_only(self):
        # No NVRAM to write: the agent's loaders go to the ESP and the
        # removable path, and no entry is touched.
        device = self.loops.create(256 * MIB)
        FirmwareManager.state = {"boot_mode": "bios", "secure_boot": False,
                                 "setup_mode": None, "lockdown": None}
        task = self.prepare_and_run("no_esp", device, boot_mode="uefi")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("uefi", task.result["boot"]["mode"])
        self.assertEqual("bios", task.result["boot"]["firmware_mode"])
        self.assertIsNone(task.result["boot_entries"])
        self.assertIsNone(task.result["boot"]["entry"])
        loader = task.result["boot_loader"]
        self.assertTrue(loader["removable"])
        node = partitions.partition_node(device, loader["partition"])
        with open(uefi.SHIM_PATH, "rb") as stream:
            self.assertEqual(stream.read(),
                             self.read(node, "/EFI/BOOT/BOOTX64.EFI"))
        self.assertEqual("kexec_load", task.result["boot"]["kexec_syscall"])
        self.assertEqual({"0000", "0001", "0002", "0003", "0004"},
                         set(self.entries()))

    def test_bad_boot_mode_is_refused_before_anything(self):
        extension = standbye.StandbyeExtension(self.make_context([]))
        extension.name = "standbye"
        spec, _ = extension.commands()["standbye.run_image"]
        with self.assertRaises(protocol.InvalidParams) as caught:
            ext_base.check_params(spec, {
                "task_id": "t", "image_id": str(uuid.uuid4()),
                "config_drive": {"meta_data": {}}, "boot_mode": "efi"})
        self.assertIn("boot_mode", str(caught.exception))


class DecomBootEntriesTest(UefiRunImageTestBase):

    def erase(self, device, **options):
        context = self.make_context([device])
        for key, value in options.items():
            self.conf.set_override(key, value, group="decom")
        extension = decom.DecomExtension(context)
        extension.name = "decom"
        return self.call(extension, "decom", "disk_erase",
                         devices=[device])

    def tenant_disk(self):
        """A disk whose ESP an earlier tenant's entry 0009 boots."""
        device = self.loops.create(16 * MIB)
        guid = str(uuid.uuid4())
        run("sgdisk", "-n", "1:2048:+8M", "-t", "1:ef00", "-u",
            "1:%s" % guid, device, check=True)
        FirmwareManager.config["entries"].append({
            "entry": "0009", "label": "tenant", "active": True,
            "device_path": "", "kind": "disk", "partition": 1,
            "partition_uuid": guid, "mbr_signature": None,
            "loader": "\\EFI\\t\\shimx64.efi"})
        FirmwareManager.config["boot_order"].insert(0, "0009")
        return device

    def test_entries_of_erased_disks_are_removed(self):
        device = self.tenant_disk()
        task = self.erase(device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["0009"], [r["entry"] for r in
                                    task.result["boot_entries_removed"]])
        # Only the erased disk's entry: even the dangling one stays (decom
        # removes what it erased, nothing else).
        self.assertEqual({"0000", "0001", "0002", "0003", "0004"},
                         set(self.entries()))
        self.assertNotIn("0009", FirmwareManager.config["boot_order"])

    def test_entries_of_an_erased_mbr_disk_are_removed(self):
        device = self.mbr_disk("0x0001abcd")
        self.add_entries(
            "Boot0009* MBR tenant\tHD(1,MBR,0x1abcd,0x800,0x2000)/File("
            "\\EFI\\t\\shimx64.efi)\n"
            "Boot000A* other MBR disk\tHD(1,MBR,0x1abce,0x800,0x2000)/File("
            "\\EFI\\o\\shimx64.efi)\n")
        task = self.erase(device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual([{"entry": "0009", "label": "MBR tenant",
                           "partition_uuid": None,
                           "mbr_signature": "0x1abcd"}],
                         task.result["boot_entries_removed"])
        self.assertEqual({"0000", "0001", "0002", "0003", "0004", "000A"},
                         set(self.entries()))

    def test_an_identifier_a_surviving_disk_shares_stays(self):
        # Both MBR disks kept signature 0: the entry may boot the one that
        # is not erased.
        device = self.mbr_disk("0x00000000")
        survivor = self.mbr_disk("0x00000000")
        FirmwareManager.visible = FirmwareManager.visible + [survivor]
        self.add_entries(
            "Boot0009* zero\tHD(1,MBR,0x0,0x800,0x2000)/File("
            "\\EFI\\z\\shimx64.efi)\n")
        task = self.erase(device)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual([], task.result["boot_entries_removed"])
        self.assertIn("0009", self.entries())

    def test_the_option_turns_it_off(self):
        device = self.tenant_disk()
        task = self.erase(device, remove_boot_entries=False)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertNotIn("boot_entries_removed", task.result)
        self.assertIn("0009", self.entries())
