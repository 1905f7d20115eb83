"""standbye end to end on loop devices, with a local HTTP image server.

Real images (GPT, ext4 root with a kernel, initrd and grub.cfg or BLS
entries) are built by the test, served from 127.0.0.1 as raw, qcow2, gzip,
xz and zstd, written by prepare_image, configured by run_image (simulated
power) and compared with ``cmp``. Every device is a loop device created
here; cleanup detaches them even after a failure.
"""

import errno
import gzip
import hashlib
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
from unittest import mock
import uuid

from teeth_agent.disk import partitions
from teeth_agent.disk import writer
from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import standbye
from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent.hardware import power
from teeth_agent.hardware import safety
from teeth_agent import protocol
from teeth_agent.runtime import logforward
from teeth_agent import tasks
from tests.base import make_conf
from tests.functional import loopdev
from tests.functional import standbye_http
from tests.functional import standbye_images

MIB = 1024 * 1024
DEVICE_SIZE = 128 * MIB
TASK_WAIT = 600


def run(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


class StandbyeTestBase(unittest.TestCase):
    """Images and the server are built once; devices per test."""

    @classmethod
    def setUpClass(cls):
        loopdev.require_root()
        for tool in ("sgdisk", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy",
                     "qemu-img", "xorriso", "zstd", "xz", "wipefs", "partx"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is not installed" % tool)
        cls.tmp = tempfile.mkdtemp(prefix="teeth-standbye-")
        cls.images = {}
        built = standbye_images.build_disk_image(cls.tmp)
        cls.layout = built
        raw = built["path"]
        cls._add("raw", raw)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        raw, raw + ".qcow2"], check=True)
        cls._add("qcow2", raw + ".qcow2")
        with open(raw, "rb") as source, \
                gzip.open(raw + ".gz", "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target)
        cls._add("gzip", raw + ".gz")
        subprocess.run(["xz", "-0", "-k", "-T1", raw], check=True)
        cls._add("xz", raw + ".xz")
        subprocess.run(["zstd", "-q", "-1", raw, "-o", raw + ".zst"],
                       check=True)
        cls._add("zstd", raw + ".zst")
        bls = standbye_images.build_disk_image(cls.tmp, bls=True,
                                               name="bls.img")
        cls._add("bls", bls["path"])
        bios = standbye_images.build_disk_image(cls.tmp, esp=False,
                                                bios_boot=True,
                                                name="bios.img")
        cls._add("bios", bios["path"])
        # A gzip image cut short: its checksum matches what is served.
        with open(raw + ".gz", "rb") as stream:
            data = stream.read()
        with open(raw + ".cut.gz", "wb") as stream:
            stream.write(data[:len(data) // 2])
        cls._add("cut_gzip", raw + ".cut.gz")
        cls.server = standbye_http.ImageServer().__enter__()
        for key, image in cls.images.items():
            image["url"] = cls.server.add("/%s" % key, image["path"])

    @classmethod
    def _add(cls, key, path):
        cls.images[key] = {"id": str(uuid.uuid4()), "path": path,
                           "sha256": standbye_images.sha256_of(path),
                           "size": os.path.getsize(path)}

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.work = tempfile.mkdtemp(prefix="teeth-standbye-work-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.device = self.loops.create(DEVICE_SIZE)
        self.server.statuses.clear()
        self.server.drop_after.clear()
        self.server.ignore_range = False
        self.server.requests.clear()

    def make_extension(self, devices, cache_dir=None, reserve=0, **extra):
        overrides = {
            "hardware.device_include": list(devices),
            "standbye.image_cache_dir": cache_dir or os.path.join(
                self.work, "cache"),
            "standbye.cache_reserve": reserve,
            "standbye.work_dir": os.path.join(self.work, "state"),
            "standbye.download_backoff": 0.01,
            "standbye.download_retries": 3,
            "power.simulate": True,
            "power.final_status_timeout": 60.0,
        }
        overrides.update(extra)
        self.conf = make_conf(**overrides)
        dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], self.conf)
        self.registry = tasks.TaskRegistry()
        self.power = power.PowerController(simulate=True)
        context = ext_base.ExtensionContext(self.conf, dispatcher,
                                            self.registry, self.power)
        extension = standbye.StandbyeExtension(context)
        extension.name = "standbye"
        # As the agent does once every extension is loaded.
        extension.start()
        return extension

    def call(self, extension, method, **raw):
        """Validate like the agent does, start the task, wait for it."""
        spec, bound = extension.commands()["standbye.%s" % method]
        raw = dict(raw, task_id="t-%s" % uuid.uuid4().hex[:8])
        checked = ext_base.check_params(spec, raw)
        validator = extension.validator(spec)
        if validator is not None:
            checked = validator(**checked)
        task_id = checked.pop("task_id")
        # The wire name, as the agent starts it (its result is checked
        # against that command's schema: tests/result_schemas.py).
        task, _ = self.registry.start(
            task_id, "standbye.%s" % method,
            lambda task: bound(task, **checked),
            spec.exclusive)
        deadline = time.monotonic() + TASK_WAIT
        while not task.terminal and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(task.terminal, "task %s never ended" % method)
        return task

    def image_param(self, key, **changes):
        image = self.images[key]
        param = {"id": image["id"], "urls": [image["url"]],
                 "hashes": {"sha256": image["sha256"]},
                 "size": image["size"]}
        param.update(changes)
        return param

    def assert_device_holds(self, key):
        raw = self.images["raw" if key in ("qcow2", "gzip", "xz", "zstd")
                          else key]
        result = run("cmp", "-n", str(raw["size"]), raw["path"], self.device)
        self.assertEqual(0, result.returncode, result.stdout + result.stderr)

    def assert_wiped(self, device):
        with open(device, "rb") as stream:
            self.assertEqual(bytes(MIB), stream.read(MIB))
        probe = run("blkid", "-p", device)
        self.assertNotEqual(0, probe.returncode, probe.stdout)


class PrepareImageTest(StandbyeTestBase):

    def prepare(self, key, **changes):
        extension = self.make_extension([self.device])
        task = self.call(extension, "prepare_image",
                         image=self.image_param(key, **changes),
                         root_device_hints={"name": self.device})
        return extension, task

    def test_raw_is_written_exactly(self):
        _, task = self.prepare("raw")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(self.device, task.result["device"])
        self.assertEqual("raw", task.result["format"])
        self.assert_device_holds("raw")
        # One request: the format came from the bytes written and hashed,
        # not from a separate look at the image's head.
        self.assertEqual([("/raw", None)], self.server.requests)

    def test_compressed_and_qcow2_images_are_written_exactly(self):
        for key in ("qcow2", "gzip", "xz", "zstd"):
            with self.subTest(key):
                with open(self.device, "r+b") as stream:
                    stream.write(os.urandom(MIB))
                _, task = self.prepare(key, size=None)
                self.assertEqual(tasks.COMPLETE, task.state, task.msg)
                self.assertEqual(key, task.result["format"])
                self.assert_device_holds(key)
                if key == "qcow2":
                    compare = run("qemu-img", "compare", "-f", "qcow2",
                                  "-F", "raw", self.images[key]["path"],
                                  self.device)
                    self.assertEqual(0, compare.returncode, compare.stdout)

    def test_interrupted_download_resumes_with_range(self):
        self.server.drop_after["/raw"] = 5 * MIB
        _, task = self.prepare("raw")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["/raw"], self.server.dropped[-1:])
        self.assertIn(("/raw", "bytes=%d-" % (5 * MIB)),
                      self.server.requests)
        self.assert_device_holds("raw")

    def test_interrupted_download_without_range_support(self):
        self.server.drop_after["/raw"] = 3 * MIB
        self.server.ignore_range = True
        _, task = self.prepare("raw")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assert_device_holds("raw")

    def test_bad_checksum_wipes_the_device(self):
        _, task = self.prepare("raw", hashes={"sha256": "0" * 64})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("checksum mismatch", task.msg)
        self.assert_wiped(self.device)

    def test_corrupted_image_wipes_the_device(self):
        _, task = self.prepare("cut_gzip", size=None)
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("gzip", task.msg)
        self.assert_wiped(self.device)

    def test_not_found_is_a_clear_error_and_writes_nothing(self):
        self.server.statuses["/raw"] = 404
        _, task = self.prepare("raw")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("404", task.msg)
        with open(self.device, "rb") as stream:
            self.assertEqual(bytes(MIB), stream.read(MIB))

    def test_file_url_is_refused_before_any_task(self):
        extension = self.make_extension([self.device])
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.call(extension, "prepare_image", image=self.image_param(
                "raw", urls=["file://%s" % self.images["raw"]["path"]]),
                root_device_hints={"name": self.device})
        self.assertIn("image.urls[0]", str(caught.exception))
        self.assertEqual([], self.registry.statuses())

    def test_qcow2_with_a_backing_file_is_refused(self):
        unsafe = os.path.join(self.work, "unsafe.qcow2")
        subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b",
                        self.images["raw"]["path"], "-F", "raw", unsafe],
                       check=True, capture_output=True)
        self._add("unsafe", unsafe)
        self.images["unsafe"]["url"] = self.server.add("/unsafe", unsafe)
        _, task = self.prepare("unsafe")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("backing file", task.msg)
        with open(self.device, "rb") as stream:
            self.assertEqual(bytes(MIB), stream.read(MIB))
        extension = self.make_extension([self.device])
        task = self.call(extension, "cache_images",
                         images=[self.image_param("unsafe")])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("backing file", task.msg)
        self.assertEqual([], os.listdir(self.conf.standbye.image_cache_dir))

    def test_image_larger_than_the_device_is_refused(self):
        small = self.loops.create(16 * MIB)
        self.device = small
        _, task = self.prepare("raw")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("larger than", task.msg)


class InterruptedWriteTest(StandbyeTestBase):
    """An agent killed mid-write: the next start wipes the device."""

    def leave_record(self, device):
        state = os.path.join(self.work, "state")
        os.makedirs(state, exist_ok=True)
        with open(os.path.join(state, "write-in-progress.json"),
                  "w") as stream:
            json.dump({"device": device, "command": "prepare_image",
                       "image_id": self.images["raw"]["id"]}, stream)
        return os.path.join(state, "write-in-progress.json")

    def copy_image(self, device):
        result = run("dd", "if=%s" % self.images["raw"]["path"],
                     "of=%s" % device, "bs=4M", "conv=fsync")
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertIn("gpt", run("wipefs", "--noheadings", device).stdout)

    def test_start_up_wipes_the_device(self):
        self.copy_image(self.device)
        record = self.leave_record(self.device)
        self.make_extension([self.device])
        listed = run("wipefs", "--noheadings", self.device)
        self.assertEqual(0, listed.returncode, listed.stderr)
        self.assertEqual("", listed.stdout)
        self.assert_wiped(self.device)
        self.assertFalse(os.path.exists(record))

    def test_a_device_no_longer_eligible_is_left_alone(self):
        self.copy_image(self.device)
        record = self.leave_record(self.device)
        other = self.loops.create(DEVICE_SIZE)
        self.make_extension([other])
        self.assertIn("gpt", run("wipefs", "--noheadings",
                                 self.device).stdout)
        self.assertFalse(os.path.exists(record))


class RunImageTest(StandbyeTestBase):

    def prepare_and_run(self, key, config_drive, device=None):
        device = device or self.device
        extension = self.extension = self.make_extension([device])
        task = self.call(extension, "prepare_image",
                         image=self.image_param(key),
                         root_device_hints={"name": device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        task = self.call(extension, "run_image",
                         image_id=self.images[key]["id"],
                         config_drive=config_drive)
        return task

    def read_config_drive_file(self, node, name):
        out = os.path.join(self.work, os.path.basename(name))
        result = run("xorriso", "-osirrox", "on", "-indev", "stdio:" + node,
                     "-extract", name, out)
        self.assertEqual(0, result.returncode, result.stderr)
        with open(out, "rb") as stream:
            return stream.read()

    def test_config_drive_and_kexec_from_grub_cfg(self):
        meta_data = {"uuid": str(uuid.uuid4()), "hostname": "tenant-1",
                     "public_keys": {"key": "ssh-ed25519 AAAA test"}}
        network_data = {"links": [], "networks": [], "services": []}
        task = self.prepare_and_run("raw", {
            "meta_data": meta_data, "user_data": "#cloud-config\n{}\n",
            "network_data": network_data})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        layout = self.layout
        boot = task.result["boot"]
        self.assertEqual("kexec", boot["method"])
        self.assertEqual(layout["kernel"], boot["kernel"])
        self.assertEqual(layout["initrd"], boot["initrd"])
        self.assertEqual(layout["cmdline"], boot["cmdline"])
        self.assertEqual("left alone", task.result["boot_loader"]["action"])
        # The config drive: found by label, holding what was sent.
        node = task.result["config_drive"]["node"]
        # -c /dev/null: no cache, blkid probes every device it can see.
        found = run("blkid", "-c", "/dev/null", "-L", "config-2")
        self.assertIn(node, found.stdout.split(), found.stderr)
        probed = run("blkid", "-p", "-o", "value", "-s", "LABEL", node)
        self.assertEqual("config-2", probed.stdout.strip())
        self.assertEqual("iso9660", task.result["config_drive"]["type"])
        self.assertEqual(meta_data, json.loads(self.read_config_drive_file(
            node, "/openstack/latest/meta_data.json")))
        self.assertEqual(network_data, json.loads(
            self.read_config_drive_file(
                node, "/openstack/latest/network_data.json")))
        self.assertEqual(b"#cloud-config\n{}\n", self.read_config_drive_file(
            node, "/openstack/latest/user_data"))
        # The image's partitions are untouched by the new partition (only
        # the GPT headers, before 1 MiB and after the last partition,
        # changed).
        size = self.images["raw"]["size"] - MIB - 34 * 512
        result = run("cmp", "-i", str(MIB), "-n", str(size),
                     self.images["raw"]["path"], self.device)
        self.assertEqual(0, result.returncode, result.stdout)
        # kexec was staged with the kernel copied out of the image, and
        # runs only once the server acknowledged the result.
        self.assertEqual("kexec_load", self.power.actions[0]["action"])
        self.assertEqual(layout["cmdline"], self.power.actions[0]["cmdline"])
        with open(self.power.actions[0]["kernel"], "rb") as stream:
            copied = stream.read()
        self.assertTrue(copied.startswith(b"MZ"))
        self.assertEqual(1, len(self.power.actions))
        task.acknowledged.set()
        deadline = time.monotonic() + TASK_WAIT
        while len(self.power.actions) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual("kexec", self.power.actions[1]["action"])
        # Running it again replaces the config drive: still exactly one.
        task = self.call(self.extension, "run_image",
                         image_id=self.images["raw"]["id"],
                         config_drive={"meta_data": {"again": True}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        table = json.loads(run("sfdisk", "--json", self.device).stdout)
        names = [p.get("name") for p in
                 table["partitiontable"]["partitions"]]
        self.assertEqual(1, names.count("config-2"), names)
        self.assertEqual({"again": True}, json.loads(
            self.read_config_drive_file(
                task.result["config_drive"]["node"],
                "/openstack/latest/meta_data.json")))

    def test_bls_entry_with_files_in_the_config_drive(self):
        task = self.prepare_and_run("bls", {
            "meta_data": {"uuid": "x"},
            "files": {"/etc/motd": "aGVsbG8K"}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        boot = task.result["boot"]
        self.assertEqual("bls", boot["source"])
        self.assertEqual("/boot/vmlinuz-%s"
                         % standbye_images.KERNEL_VERSION, boot["kernel"])
        self.assertEqual(self.layout["cmdline"], boot["cmdline"])
        node = task.result["config_drive"]["node"]
        meta = json.loads(self.read_config_drive_file(
            node, "/openstack/latest/meta_data.json"))
        self.assertEqual([{"path": "/etc/motd",
                           "content_path": "/content/0000"}], meta["files"])
        self.assertEqual(b"hello\n", self.read_config_drive_file(
            node, "/openstack/content/0000"))

    def read_vfat_file(self, node, name):
        out = os.path.join(self.work, os.path.basename(name))
        result = run("mcopy", "-n", "-i", node, "::" + name, out,
                     env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        self.assertEqual(0, result.returncode, result.stderr)
        with open(out, "rb") as stream:
            return stream.read()

    def prepare_on_4k_sectors(self):
        """An MBR image prepared on a new 4096-byte-sector loop device;
        returns the extension."""
        # The image is copied onto a 4096-byte-sector device as it is;
        # a GPT made for 512-byte sectors no longer parses there, so the
        # image has an MBR instead.
        device = self.loops.create(DEVICE_SIZE, sector_size=4096)
        self.device = device
        image = os.path.join(self.work, "mbr4k.img")
        with open(image, "wb") as stream:
            stream.truncate(8 * MIB)
        # MBR entries count sectors: on the 4096-byte-sector device this
        # partition starts at 1 MiB and spans 2 MiB.
        subprocess.run(["sfdisk", "-q", image],
                       input=b"start=256, size=512, type=83\n",
                       check=True, capture_output=True)
        self._add("mbr4k", image)
        self.images["mbr4k"]["url"] = self.server.add("/mbr4k", image)
        extension = self.make_extension([device])
        task = self.call(extension, "prepare_image",
                         image=self.image_param("mbr4k"),
                         root_device_hints={"name": device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        # MBR boot code stands in for the image's own loader.
        with open(device, "r+b") as stream:
            stream.write(b"\xeb\x63\x90")
        return extension

    def assert_vfat_config_drive(self, task):
        node = task.result["config_drive"]["node"]
        probed = run("blkid", "-p", "-o", "export", node)
        props = dict(line.split("=", 1)
                     for line in probed.stdout.splitlines() if "=" in line)
        self.assertEqual("vfat", props.get("TYPE"), probed.stdout)
        self.assertEqual("config-2", props.get("LABEL"), probed.stdout)
        # The kernel mounts FAT only when its sectors are at least the
        # disk's.
        with open(node, "rb") as stream:
            self.assertEqual(4096, int.from_bytes(stream.read(13)[11:13],
                                                  "little"))
        self.assertEqual("vfat", task.result["config_drive"]["type"])
        return node

    def test_config_drive_on_a_4096_byte_sector_disk_is_vfat(self):
        extension = self.prepare_on_4k_sectors()
        meta_data = {"uuid": str(uuid.uuid4()), "hostname": "tenant-4k"}
        task = self.call(extension, "run_image",
                         image_id=self.images["mbr4k"]["id"],
                         config_drive={"meta_data": meta_data,
                                       "user_data": "#!/bin/sh\n",
                                       "files": {"/etc/motd": "aGVsbG8K"}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        node = self.assert_vfat_config_drive(task)
        sent = json.loads(self.read_vfat_file(
            node, "/openstack/latest/meta_data.json"))
        self.assertEqual(dict(meta_data, files=[
            {"path": "/etc/motd", "content_path": "/content/0000"}]), sent)
        self.assertEqual(b"#!/bin/sh\n", self.read_vfat_file(
            node, "/openstack/latest/user_data"))
        self.assertEqual(b"hello\n", self.read_vfat_file(
            node, "/openstack/content/0000"))
        found = run("blkid", "-c", "/dev/null", "-L", "config-2")
        self.assertIn(node, found.stdout.split(), found.stderr)

    def test_prebuilt_iso_on_a_4096_byte_sector_disk_becomes_vfat(self):
        tree = os.path.join(self.work, "tree", "openstack", "latest")
        os.makedirs(tree)
        with open(os.path.join(tree, "meta_data.json"), "w") as stream:
            json.dump({"uuid": "prebuilt"}, stream)
        iso = os.path.join(self.work, "prebuilt.iso")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso,
                        "-V", "config-2", "-R", "-J",
                        os.path.join(self.work, "tree")], check=True)
        with open(iso, "rb") as stream:
            prebuilt = __import__("base64").b64encode(
                gzip.compress(stream.read())).decode()
        extension = self.prepare_on_4k_sectors()
        device = self.device
        task = self.call(extension, "run_image",
                         image_id=self.images["mbr4k"]["id"],
                         config_drive=prebuilt)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("reboot", task.result["boot"]["method"])
        node = self.assert_vfat_config_drive(task)
        self.assertEqual({"uuid": "prebuilt"}, json.loads(
            self.read_vfat_file(node, "/openstack/latest/meta_data.json")))
        table = json.loads(run("sfdisk", "--json", device).stdout)
        self.assertEqual("dos", table["partitiontable"]["label"])
        last = table["partitiontable"]["partitions"][-1]
        self.assertEqual(DEVICE_SIZE // 4096,
                         last["start"] + last["size"])
        task.acknowledged.set()
        deadline = time.monotonic() + TASK_WAIT
        while not self.power.actions and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([{"action": "reboot"}], self.power.actions)

    def test_grub_install_on_a_loop_device_installs_or_fails_clearly(self):
        # Whether grub-install can map a loop device's partitions to a BIOS
        # drive depends on the grub release (Debian 12's grub-pc-bin could
        # not; with the grub-efi packages installed it can). Either way the
        # outcome is definite: grub's boot code in the MBR and the task
        # complete, or a clear error naming grub-install and nothing booted.
        # The VM test boots a disk the agent installed grub on.
        task = self.prepare_and_run("bios", {"meta_data": {}})
        if task.state == tasks.COMPLETE:
            self.assertEqual({"action": "installed", "loader": "grub"},
                             task.result["boot_loader"])
            with open(self.device, "rb") as stream:
                self.assertIn(b"GRUB", stream.read(512))
        else:
            self.assertEqual(tasks.ERROR, task.state)
            self.assertIn("grub-install", task.msg)
            self.assertEqual([], self.power.actions)

    def test_run_image_needs_the_prepared_image(self):
        extension = self.make_extension([self.device])
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.call(extension, "run_image",
                      image_id=self.images["raw"]["id"],
                      config_drive={"meta_data": {}})
        self.assertIn("image_id", str(caught.exception))


class CacheImagesTest(StandbyeTestBase):

    def setUp(self):
        super().setUp()
        # The cache lives on its own small file system, so the budget is
        # exact whatever else happens on this machine.
        cache_device = self.loops.create(256 * MIB, name="cache.img")
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", cache_device],
                       check=True)
        self.cache_dir = os.path.join(self.work, "cache")
        os.makedirs(self.cache_dir)
        subprocess.run(["mount", cache_device, self.cache_dir], check=True)
        self.addCleanup(subprocess.run, ["umount", self.cache_dir],
                        check=False)

    def free(self):
        stats = os.statvfs(self.cache_dir)
        return stats.f_bavail * stats.f_frsize

    def test_caches_in_priority_order_within_the_budget(self):
        raw, qcow, gz = (self.images[k] for k in ("raw", "qcow2", "gzip"))
        # Room for raw + qcow2 + gzip plus 1 MiB, not for a second raw.
        room = raw["size"] + qcow["size"] + gz["size"] + MIB
        extension = self.make_extension(
            [self.device], cache_dir=self.cache_dir,
            reserve=self.free() - room)
        second_raw = self.image_param("raw", id=str(uuid.uuid4()))
        images = [self.image_param("raw"), self.image_param("qcow2"),
                  second_raw, self.image_param("gzip", size=None)]
        task = self.call(extension, "cache_images", images=images)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        statuses = [r["status"] for r in task.result["images"]]
        self.assertEqual(["cached", "cached", "skipped", "cached"], statuses)
        self.assertIn("does not fit", task.result["images"][2]["reason"])
        # Again: nothing is downloaded twice.
        self.server.requests.clear()
        task = self.call(extension, "cache_images", images=images[:2])
        self.assertEqual(["already_cached", "already_cached"],
                         [r["status"] for r in task.result["images"]])
        self.assertEqual([], self.server.requests)
        # A new list evicts what it does not name, as needed.
        task = self.call(extension, "cache_images", images=[second_raw])
        self.assertEqual(["cached"],
                         [r["status"] for r in task.result["images"]])
        cached = sorted(name for name in os.listdir(self.cache_dir)
                        if name.endswith(".image"))
        self.assertIn("%s.image" % second_raw["id"], cached)
        self.assertNotIn("%s.image" % images[0]["id"], cached)
        # prepare_image from the cache by id alone, without the server.
        self.server.statuses["/raw"] = 500
        task = self.call(extension, "prepare_image", image=second_raw["id"],
                         root_device_hints={"name": self.device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("cache", task.result["source"])
        self.assert_device_holds("raw")

    def test_image_without_size_evicts_unlisted_images_when_needed(self):
        raw, qcow = self.images["raw"], self.images["qcow2"]
        # Room for the raw image and half of another: the qcow2 image
        # (smaller than raw, its size not given) fits only once the raw
        # image, not in the new list, is evicted.
        room = raw["size"] + max(qcow["size"] // 2, MIB)
        extension = self.make_extension(
            [self.device], cache_dir=self.cache_dir,
            reserve=self.free() - room)
        task = self.call(extension, "cache_images",
                         images=[self.image_param("raw")])
        self.assertEqual(["cached"],
                         [r["status"] for r in task.result["images"]])
        task = self.call(extension, "cache_images",
                         images=[self.image_param("qcow2", size=None)])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["cached"],
                         [r["status"] for r in task.result["images"]])
        self.assertEqual(sorted(["%s.image" % qcow["id"],
                                 "%s.json" % qcow["id"], "lost+found"]),
                         sorted(os.listdir(self.cache_dir)))

    def test_leftovers_of_a_crash_are_removed_at_start_up(self):
        orphan = os.path.join(self.cache_dir, "%s.image" % uuid.uuid4())
        partial = os.path.join(self.cache_dir, ".x.image.partial-1234")
        for path in (orphan, partial):
            with open(path, "wb") as stream:
                stream.write(os.urandom(MIB))
        self.make_extension([self.device], cache_dir=self.cache_dir)
        self.assertEqual(["lost+found"], os.listdir(self.cache_dir))

    def test_bad_checksum_and_404_leave_nothing_in_the_cache(self):
        extension = self.make_extension([self.device],
                                        cache_dir=self.cache_dir)
        self.server.statuses["/gzip"] = 404
        task = self.call(extension, "cache_images", images=[
            self.image_param("raw", hashes={"sha512": "ab" * 64}),
            self.image_param("gzip")])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("checksum mismatch", task.msg)
        self.assertIn("404", task.msg)
        self.assertEqual(["failed", "failed"],
                         [r["status"] for r in task.details["images"]])
        self.assertEqual(["lost+found"], os.listdir(self.cache_dir))

    def test_md5_alone_is_refused_unless_allowed(self):
        extension = self.make_extension([self.device],
                                        cache_dir=self.cache_dir)
        md5 = hashlib.md5(open(self.images["gzip"]["path"], "rb").read(),
                          usedforsecurity=False).hexdigest()
        image = self.image_param("gzip", hashes={"md5": md5})
        with self.assertRaises(protocol.InvalidParams):
            self.call(extension, "cache_images", images=[image])
        extension = self.make_extension([self.device],
                                        cache_dir=self.cache_dir,
                                        **{"standbye.allow_md5": True})
        task = self.call(extension, "cache_images", images=[image])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)


class _Guard:
    """socket.create_connection that refuses any address but 127.0.0.1:
    a refused redirect must not connect anywhere."""

    def __init__(self):
        self.calls = []
        self._real = socket.create_connection

    def __call__(self, address, *args, **kwargs):
        self.calls.append(address[0])
        if address[0] != "127.0.0.1":
            raise AssertionError("connected to %s" % (address,))
        return self._real(address, *args, **kwargs)


def _devnum(path):
    info = os.stat(path)
    return "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))


def _read_is_zero(test, device, length):
    with open(device, "rb") as stream:
        offset = 0
        while offset < length:
            chunk = stream.read(min(4 * MIB, length - offset))
            test.assertEqual(bytes(len(chunk)), chunk,
                             "non-zero bytes near offset %d" % offset)
            offset += len(chunk)


class WriteLimitsTest(StandbyeTestBase):
    """Issue 11: decoder memory, the pinned exclusive descriptor, zeroing
    after a failure, redirects, redaction and slow servers."""

    def setUp(self):
        super().setUp()
        self.server.redirects.clear()
        self.server.drip.clear()

    def prepare(self, image, device=None, **conf):
        device = device or self.device
        extension = self.make_extension([device], **conf)
        return extension, self.call(extension, "prepare_image", image=image,
                                    root_device_hints={"name": device})

    def serve(self, name, path):
        key = "extra-" + name
        if key not in self.images:
            self._add(key, path)
            self.images[key]["url"] = self.server.add("/" + key, path)
        return self.image_param(key, size=None)

    def test_xz_with_a_1gib_dictionary_is_refused(self):
        tiny = os.path.join(self.tmp, "tiny")
        with open(tiny, "wb") as stream:
            stream.write(b"hello\n")
        subprocess.run(["xz", "-kf", "--lzma2=dict=1GiB", tiny], check=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _, task = self.prepare(self.serve("xz-1gib", tiny + ".xz"))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("decompression_memory_limit", task.msg)
        self.assertLess(after - before, 128 * 1024)  # KiB: RSS stays bounded

    def test_zstd_with_a_1gib_window_is_refused(self):
        path = os.path.join(self.tmp, "window.zst")
        with open(path, "wb") as stream:
            subprocess.run(["zstd", "--long=30", "-q", "-c"], input=bytes(64),
                           stdout=stream, check=True)
        _, task = self.prepare(self.serve("zstd-1gib", path))
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("decompression_memory_limit", task.msg)

    def test_checksum_mismatch_zeroes_the_whole_written_range(self):
        raw = self.images["raw"]
        _, task = self.prepare(self.image_param(
            "raw", hashes={"sha256": "0" * 64}))
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("checksum mismatch", task.msg)
        self.assertIn("every byte written to %s" % self.device, task.msg)
        self.assertIn("was zeroed", task.msg)
        _read_is_zero(self, self.device, raw["size"])

    def test_the_write_holds_the_device_exclusively(self):
        seen = []
        real_write = writer.DeviceWriter.write

        def write(output, data):
            if not seen:
                try:
                    os.close(os.open(self.device, os.O_RDONLY | os.O_EXCL))
                    seen.append("opened")
                except OSError as exc:
                    seen.append(exc.errno)
            return real_write(output, data)
        with mock.patch.object(writer.DeviceWriter, "write", write):
            _, task = self.prepare(self.image_param("raw"))
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual([errno.EBUSY], seen)

    def test_a_device_swapped_after_the_check_is_not_written(self):
        other = self.loops.create(DEVICE_SIZE, fill="random")
        with open(other, "rb") as stream:
            before = hashlib.sha256(stream.read()).hexdigest()
        dev_root = tempfile.mkdtemp(prefix="teeth-dev-")
        self.addCleanup(shutil.rmtree, dev_root, True)
        name = os.path.basename(self.device)
        node = os.path.join(dev_root, name)
        os.mknod(node, 0o600 | 0o060000, os.stat(self.device).st_rdev)
        real_check = safety.ensure_writable
        calls = []

        def check_then_swap(path, *args, **kwargs):
            device = real_check(path, *args, **kwargs)
            if not calls:
                # The name now leads to another device node.
                os.unlink(node)
                os.mknod(node, 0o600 | 0o060000, os.stat(other).st_rdev)
            calls.append(path)
            return device
        extension = self.make_extension([node], **{
            "hardware.dev_root": dev_root})
        with mock.patch.object(safety, "ensure_writable", check_then_swap):
            task = self.call(extension, "prepare_image",
                             image=self.image_param("raw"),
                             root_device_hints={"name": node})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("not the %s that was checked" % _devnum(self.device),
                      task.msg)
        with open(other, "rb") as stream:
            self.assertEqual(before, hashlib.sha256(stream.read()).hexdigest())

    def test_redirect_to_loopback_or_link_local_is_refused(self):
        port = self.server.server_address[1]
        for target in ("http://127.0.0.2:%d/raw" % port,
                       "http://169.254.169.254/latest/meta-data/"):
            with self.subTest(target):
                self.server.redirects["/redirect"] = target
                guard = _Guard()
                with mock.patch("socket.create_connection", guard):
                    _, task = self.prepare(self.image_param(
                        "raw", urls=[self.server.url("/redirect")]))
                self.assertEqual(tasks.ERROR, task.state)
                self.assertIn("refused", task.msg)
                self.assertIn("allowed_redirect_networks", task.msg)
                self.assertEqual(["127.0.0.1"], guard.calls)
                _read_is_zero(self, self.device, MIB)

    def test_redirect_allowed_by_allowed_redirect_networks(self):
        self.server.redirects["/redirect"] = self.images["raw"]["url"]
        _, task = self.prepare(
            self.image_param("raw", urls=[self.server.url("/redirect")]),
            **{"standbye.allowed_redirect_networks": ["127.0.0.0/8"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assert_device_holds("raw")

    def test_credentials_in_urls_never_reach_logs_or_messages(self):
        port = self.server.server_address[1]
        secret_path = "/raw?temp_url_sig=S1GNATURE&temp_url_expires=1"
        self.server.redirects[secret_path] = (
            "http://127.0.0.2:%d/x?X-Amz-Signature=AMZS1G" % port)
        urls = ["http://op:pa55word@127.0.0.1:%d/missing?token=T0KEN" % port,
                "http://op:pa55word@127.0.0.1:%d%s" % (port, secret_path)]
        handler = logforward.ForwardingLogHandler(10000, logging.DEBUG)
        logger = logging.getLogger("teeth_agent")
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            _, task = self.prepare(self.image_param(
                "raw", urls=urls, hashes={"sha256": "1" * 64}))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        self.assertEqual(tasks.ERROR, task.state)
        forwarded = json.dumps(list(handler.records))
        for shown in ("temp_url_sig=***", "token=***", "X-Amz-Signature=***",
                      "http://***@127.0.0.1"):
            self.assertIn(shown, task.msg)
            self.assertIn(shown, forwarded)
        for secret in ("pa55word", "S1GNATURE", "T0KEN", "AMZS1G", "op:"):
            self.assertNotIn(secret, task.msg)
            self.assertNotIn(secret, forwarded)

    def test_slow_drip_server_ends_the_task_and_frees_the_disk(self):
        self.server.drip["/raw"] = 1.0
        started = time.monotonic()
        extension, task = self.prepare(
            self.image_param("raw"),
            **{"standbye.download_attempt_timeout": 1.0,
               "standbye.download_retries": 1})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("ran past its deadline", task.msg)
        # Two attempts of about a second each, far from any TCP timeout.
        self.assertLess(time.monotonic() - started, 30)
        self.server.drip.clear()
        task = self.call(extension, "prepare_image",
                         image=self.image_param("raw"),
                         root_device_hints={"name": self.device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assert_device_holds("raw")


class LoopBackingTest(StandbyeTestBase):
    """A loop device over a block device writes that device (rule 5)."""

    def mount(self, device):
        result = run("mkfs.ext4", "-q", "-F", device)
        self.assertEqual(0, result.returncode, result.stderr)
        point = tempfile.mkdtemp(prefix="teeth-mnt-")
        result = run("mount", device, point)
        self.assertEqual(0, result.returncode, result.stderr)
        self.addCleanup(os.rmdir, point)
        self.addCleanup(run, "umount", point)
        return point

    def loop_over(self, device):
        loop = loopdev.attach(device)
        self.addCleanup(loopdev.detach, loop)
        return loop

    def prepare_on(self, target, include):
        extension = self.make_extension(include)
        self.extension_hw = extension.hardware
        return self.call(extension, "prepare_image",
                         image=self.image_param("raw"),
                         root_device_hints={"name": target})

    def refused(self, target, include):
        """prepare_image onto ``target`` fails (the inventory already
        counts it as not eligible) and the live check says why."""
        task = self.prepare_on(target, include)
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("no eligible block device", task.msg)
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(target, self.conf, self.extension_hw)
        return caught.exception.reason

    def test_loop_over_a_mounted_device_is_refused(self):
        point = self.mount(self.device)
        stacked = self.loop_over(self.device)
        reason = self.refused(stacked, [self.device, stacked])
        self.assertIn("mounted at %s" % point, reason)

    def test_loop_over_an_excluded_device_is_refused(self):
        stacked = self.loop_over(self.device)
        task = self.prepare_on(stacked, [stacked])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("backed by %s" % self.device, task.msg)
        self.assertIn("device_include", task.msg)

    def test_device_under_a_mounted_loop_is_refused(self):
        stacked = self.loop_over(self.device)
        point = self.mount(stacked)
        reason = self.refused(self.device, [self.device])
        self.assertIn("mounted at %s" % point, reason)

    def test_loop_over_a_free_device_is_written(self):
        stacked = self.loop_over(self.device)
        task = self.prepare_on(stacked, [self.device, stacked])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assert_device_holds("raw")


class PartitionEditRecheckTest(StandbyeTestBase):
    """run_image re-checks the device after sgdisk/sfdisk."""

    prepare_and_run = RunImageTest.prepare_and_run

    def test_device_changed_after_the_partition_edit_fails_the_task(self):
        other = self.loops.create(DEVICE_SIZE)
        real_add = partitions.add_partition_at_end
        real_check = safety.ensure_writable
        swapped = []

        def add_then_swap(path, *args, **kwargs):
            added = real_add(path, *args, **kwargs)
            swapped.append(path)
            return added

        def check(path, *args, **kwargs):
            device = real_check(path, *args, **kwargs)
            if swapped:
                # After the edit the name stands for another device (a
                # hot-swapped disk that took its kernel name).
                device = dict(device, devnum=_devnum(other))
            return device
        with mock.patch.object(partitions, "add_partition_at_end",
                               add_then_swap), \
                mock.patch.object(safety, "ensure_writable", check):
            task = self.prepare_and_run("raw", {"meta_data": {"uuid": "x"}})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertEqual([self.device], swapped)
        self.assertIn("when it was checked and is %s now" % _devnum(other),
                      task.msg)


class CachedImageLimitsTest(StandbyeTestBase):
    """cache_images downloads under the rules prepare_image follows, and
    an image written from the cache is verified, pinned and undone like a
    download (issue 11, the cache_images path)."""

    def setUp(self):
        super().setUp()
        self.server.redirects.clear()
        self.server.drip.clear()
        self.cache_dir = os.path.join(self.work, "cache")

    serve = WriteLimitsTest.serve

    def cache(self, images, **conf):
        extension = self.make_extension([self.device],
                                        cache_dir=self.cache_dir, **conf)
        return extension, self.call(extension, "cache_images", images=images)

    def cached_names(self):
        return sorted(name for name in os.listdir(self.cache_dir)
                      if not name.startswith("lost"))

    def prepare_cached(self, extension, image_id):
        return self.call(extension, "prepare_image", image=image_id,
                         root_device_hints={"name": self.device})

    def test_a_redirect_to_loopback_is_refused(self):
        port = self.server.server_address[1]
        self.server.redirects["/redirect"] = "http://127.0.0.2:%d/raw" % port
        image = self.image_param("raw", urls=[self.server.url("/redirect")])
        guard = _Guard()
        with mock.patch("socket.create_connection", guard):
            _, task = self.cache([image])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertEqual(["failed"],
                         [r["status"] for r in task.details["images"]])
        self.assertIn("allowed_redirect_networks",
                      task.details["images"][0]["reason"])
        self.assertEqual(["127.0.0.1"], guard.calls)
        self.assertEqual([], self.cached_names())
        self.server.redirects["/redirect"] = self.images["raw"]["url"]
        _, task = self.cache([image], **{
            "standbye.allowed_redirect_networks": ["127.0.0.0/8"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)

    def test_a_slow_drip_server_fails_the_image(self):
        self.server.drip["/raw"] = 1.0
        _, task = self.cache([self.image_param("raw")], **{
            "standbye.download_attempt_timeout": 1.0,
            "standbye.download_retries": 1})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("ran past its deadline",
                      task.details["images"][0]["reason"])
        self.assertEqual([], self.cached_names())

    def test_credentials_never_reach_the_result_or_the_message(self):
        port = self.server.server_address[1]
        secret_path = "/raw?temp_url_sig=S1GNATURE&temp_url_expires=1"
        self.server.redirects[secret_path] = (
            "http://127.0.0.2:%d/x?X-Amz-Signature=AMZS1G" % port)
        urls = ["http://op:pa55word@127.0.0.1:%d/missing?token=T0KEN" % port,
                "http://op:pa55word@127.0.0.1:%d%s" % (port, secret_path)]
        _, task = self.cache([self.image_param("raw", urls=urls)])
        self.assertEqual(tasks.ERROR, task.state)
        shown = task.msg + json.dumps(task.details)
        self.assertIn("temp_url_sig=***", shown)
        for secret in ("pa55word", "S1GNATURE", "T0KEN", "AMZS1G", "op:"):
            self.assertNotIn(secret, shown)

    def test_a_cached_xz_bomb_is_refused_when_written(self):
        tiny = os.path.join(self.tmp, "tiny-cached")
        with open(tiny, "wb") as stream:
            stream.write(b"hello\n")
        subprocess.run(["xz", "-kf", "--lzma2=dict=1GiB", tiny], check=True)
        image = self.serve("xz-1gib-cached", tiny + ".xz")
        extension, task = self.cache([image])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        task = self.prepare_cached(extension, image["id"])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("decompression_memory_limit", task.msg)

    def tamper(self, image_id, offset):
        path = os.path.join(self.cache_dir, "%s.image" % image_id)
        with open(path, "r+b") as stream:
            stream.seek(offset)
            byte = stream.read(1)
            stream.seek(offset)
            stream.write(bytes([byte[0] ^ 0xff]))

    def test_a_cached_image_changed_on_disk_is_zeroed_not_left(self):
        raw = self.images["raw"]
        extension, task = self.cache([self.image_param("raw")])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.tamper(raw["id"], raw["size"] - 100)
        seen = []
        real_write = writer.DeviceWriter.write

        def write(output, data):
            if not seen:
                try:
                    os.close(os.open(self.device, os.O_RDONLY | os.O_EXCL))
                    seen.append("opened")
                except OSError as exc:
                    seen.append(exc.errno)
            return real_write(output, data)
        with mock.patch.object(writer.DeviceWriter, "write", write):
            task = self.prepare_cached(extension, raw["id"])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertEqual([errno.EBUSY], seen)
        self.assertIn("checksum mismatch", task.msg)
        self.assertIn("was zeroed", task.msg)
        _read_is_zero(self, self.device, raw["size"])

    def test_a_cached_qcow2_changed_on_disk_is_not_converted(self):
        qcow = self.images["qcow2"]
        extension, task = self.cache([self.image_param("qcow2")])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.tamper(qcow["id"], qcow["size"] - 100)
        with mock.patch("teeth_agent.images.qcow2.convert") as convert:
            task = self.prepare_cached(extension, qcow["id"])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("checksum mismatch", task.msg)
        convert.assert_not_called()
