import base64
import gzip
import io
import json
import lzma
import os
import struct
import tempfile
from unittest import mock

from teeth_agent import download
from teeth_agent.images import boot
from teeth_agent.images import cache
from teeth_agent.images import configdrive
from teeth_agent.images import formats
from teeth_agent.images import partitions
from teeth_agent.images import qcow2
from teeth_agent.images import writer
from teeth_agent import units
from tests import base

MIB = units.MIB


class FormatsTest(base.TestCase):

    def test_detects_from_content(self):
        self.assertEqual("qcow2", formats.detect(b"QFI\xfb\x00\x00\x00\x03"))
        self.assertEqual("gzip", formats.detect(gzip.compress(b"x")))
        self.assertEqual("xz", formats.detect(lzma.compress(b"x")))
        self.assertEqual("zstd", formats.detect(b"\x28\xb5\x2f\xfd\x00"))
        self.assertEqual("raw", formats.detect(b"\xeb\x63\x90" + bytes(509)))
        self.assertEqual("raw", formats.detect(b""))

    def test_refuses_other_containers(self):
        for head in (b"KDMV\x01", b"vhdxfile", b"BZh91AY"):
            with self.subTest(head):
                with self.assertRaises(formats.UnsupportedFormat):
                    formats.detect(head)


def qcow2_header(version=3, backing=0, crypt=0, incompatible=0,
                 extensions=b""):
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing,
                         0, 16, 10 * MIB, crypt, 1, 0x30000, 0x10000, 1, 0,
                         0)
    if version == 3:
        header += struct.pack(">QQQII", incompatible, 0, 0, 4, 112)
        header += bytes(112 - len(header))
    return header + extensions + bytes(8) + bytes(4096)


class Qcow2Test(base.TestCase):

    def test_accepts_a_self_contained_image(self):
        for version in (2, 3):
            info = qcow2.check_header(qcow2_header(version))
            self.assertEqual(10 * MIB, info["virtual_size"])

    def test_refuses_references_outside_the_image(self):
        data_file = struct.pack(">II", 0x44415441, 8) + b"/etc/sha"
        backing_fmt = struct.pack(">II", 0xE2792ACA, 3) + b"raw\0\0\0\0\0"
        for header in (qcow2_header(backing=512),
                       qcow2_header(incompatible=1 << 2),
                       qcow2_header(extensions=data_file),
                       qcow2_header(extensions=backing_fmt),
                       qcow2_header(crypt=1),
                       qcow2_header(incompatible=1 << 40),
                       b"QFI\xfb" + bytes(10)):
            with self.subTest(header[:8]):
                with self.assertRaises(qcow2.UnsafeImage):
                    qcow2.check_header(header)

    def test_info(self):
        good = {"format": "qcow2", "virtual-size": 5,
                "format-specific": {"type": "qcow2", "data": {}}}
        self.assertEqual(5, qcow2.check_info(good))
        for bad in ({"format": "raw", "virtual-size": 5},
                    dict(good, **{"backing-filename": "/dev/sda"}),
                    dict(good, **{"format-specific": {"data": {
                        "data-file": "x"}}}),
                    dict(good, **{"virtual-size": 0})):
            with self.assertRaises(qcow2.UnsafeImage):
                qcow2.check_info(bad)

    @mock.patch("teeth_agent.processes.execute")
    def test_inspect_forces_the_format(self, execute):
        execute.return_value = (json.dumps(
            {"format": "qcow2", "virtual-size": 10 * MIB}), "")
        with tempfile.NamedTemporaryFile() as image:
            image.write(qcow2_header())
            image.flush()
            self.assertEqual(10 * MIB, qcow2.inspect(image.name))
        argv = execute.call_args[0]
        self.assertEqual(("prlimit", "--as=%d" % (1024 * MIB), "--cpu=30",
                          "qemu-img", "info", "--output=json", "-f",
                          "qcow2", image.name), argv)

    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    def test_convert_runs_under_limits(self, execute):
        qcow2.convert("/w/i.qcow2", "/dev/loop9", 1234)
        self.assertEqual(("prlimit", "--as=%d" % (1024 * MIB), "--cpu=1234",
                          "qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                          "-t", "none", "-n", "/w/i.qcow2", "/dev/loop9"),
                         execute.call_args[0])
        qcow2.convert("/w/i.qcow2", "/dev/loop9")
        self.assertIn("--cpu=3600", execute.call_args[0])


class _Collect:
    def __init__(self):
        self.data = io.BytesIO()

    def write(self, data):
        self.data.write(bytes(data))


class DecompressTest(base.TestCase):

    def decode(self, fmt, compressed, step=1000):
        target = _Collect()
        sink = writer._decoder(fmt, target, 4096)
        for offset in range(0, len(compressed), step):
            sink.write(compressed[offset:offset + step])
        sink.close()
        return target.data.getvalue()

    def test_gzip_members_and_xz(self):
        data = os.urandom(50000) + bytes(100000)
        twice = gzip.compress(data) + gzip.compress(data)
        self.assertEqual(data + data, self.decode("gzip", twice))
        self.assertEqual(data, self.decode("xz", lzma.compress(data)))

    def test_truncated_or_corrupt(self):
        compressed = gzip.compress(os.urandom(50000))
        with self.assertRaises(writer.CorruptImage):
            self.decode("gzip", compressed[:len(compressed) // 2])
        with self.assertRaises(writer.CorruptImage):
            self.decode("xz", b"\xfd7zXZ\x00" + bytes(100))


class DeviceWriterTest(base.TestCase):
    """On a regular file; O_DIRECT needs a file system that has it."""

    def make_target(self, size):
        directory = tempfile.mkdtemp(dir="/var/tmp")
        self.addCleanup(__import__("shutil").rmtree, directory)
        path = os.path.join(directory, "device")
        with open(path, "wb") as stream:
            stream.truncate(size)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("no O_DIRECT on %s" % directory)
        return path

    def test_unaligned_tail_and_odd_chunks(self):
        path = self.make_target(MIB)
        data = os.urandom(300000 + 7)
        output = writer.DeviceWriter(path, buffer_size=65536)
        for offset in range(0, len(data), 9999):
            output.write(data[offset:offset + 9999])
        self.assertEqual(len(data), output.close())
        with open(path, "rb") as stream:
            self.assertEqual(data, stream.read(len(data)))
            self.assertEqual(bytes(MIB - len(data)), stream.read())

    def test_refuses_to_write_past_the_end(self):
        path = self.make_target(65536)
        output = writer.DeviceWriter(path, buffer_size=65536, start=4096,
                                     end=65536)
        with self.assertRaises(writer.ImageTooLarge):
            output.write(bytes(65536))
            output.close()
        output.abort()

    @mock.patch.object(writer, "wipe_signatures")
    def test_checksum_mismatch_wipes(self, wipe):
        path = self.make_target(MIB)
        hasher = download.Hasher("sha256", "0" * 64)
        with self.assertRaises(download.ChecksumMismatch):
            writer.write_stream(io.BytesIO(os.urandom(5000)), path, hasher,
                                buffer_size=4096)
        wipe.assert_called_once_with(path)

    def test_write_stream_gzip(self):
        path = self.make_target(MIB)
        data = os.urandom(100000)
        compressed = gzip.compress(data)
        hasher = download.Hasher(
            "sha256", __import__("hashlib").sha256(compressed).hexdigest())
        result = writer.write_stream(io.BytesIO(compressed), path, hasher,
                                     buffer_size=8192)
        self.assertEqual("gzip", result["format"])
        self.assertEqual(len(data), result["bytes_written"])
        with open(path, "rb") as stream:
            self.assertEqual(data, stream.read(len(data)))

    def stream_once(self, path, content, **kwargs):
        """write_stream over a source that can be read only once, as a
        download is: the format must come from these very bytes."""
        reads = []

        class OneShot(io.BytesIO):
            def readinto(self, buffer):
                reads.append(self.tell())
                return super().readinto(buffer)
        hasher = download.Hasher(
            "sha256", __import__("hashlib").sha256(content).hexdigest())
        result = writer.write_stream(OneShot(content), path, hasher,
                                     buffer_size=8192, **kwargs)
        self.assertEqual(sorted(reads), reads, "the source was re-read")
        return result

    def test_format_comes_from_the_stream(self):
        path = self.make_target(MIB)
        data = os.urandom(50000)
        for fmt, content in (("xz", lzma.compress(data)),
                             ("gzip", gzip.compress(data)),
                             ("raw", data)):
            with self.subTest(fmt):
                result = self.stream_once(path, content)
                self.assertEqual(fmt, result["format"])
                self.assertEqual(len(content), result["bytes_read"])
                with open(path, "rb") as stream:
                    self.assertEqual(data, stream.read(len(data)))

    @mock.patch.object(writer, "wipe_signatures")
    def test_qcow2_needs_staging_and_writes_nothing(self, wipe):
        path = self.make_target(MIB)
        with open(path, "wb") as stream:
            stream.write(b"previous" * 1000)
        with self.assertRaises(writer.NeedsStaging) as caught:
            self.stream_once(path, qcow2_header() + os.urandom(20000))
        self.assertEqual("qcow2", caught.exception.format)
        with self.assertRaises(formats.UnsupportedFormat):
            self.stream_once(path, b"KDMV" + os.urandom(20000))
        wipe.assert_not_called()
        with open(path, "rb") as stream:
            self.assertEqual(b"previous" * 1000, stream.read(8000))

    @mock.patch.object(writer, "wipe_signatures")
    def test_raw_larger_than_the_device_writes_nothing(self, wipe):
        path = self.make_target(64 * 1024)
        content = os.urandom(100000)
        with self.assertRaises(writer.ImageTooLarge):
            self.stream_once(path, content, total=len(content))
        wipe.assert_not_called()

    def test_head_split_over_small_writes(self):
        target = _Collect()
        target.device_size = MIB
        data = os.urandom(3000)
        compressed = gzip.compress(data)
        sink = writer._FormatSink(target, None, 4096)
        for offset in range(0, len(compressed), 100):
            sink.write(compressed[offset:offset + 100])
        sink.close()
        self.assertEqual("gzip", sink.format)
        self.assertEqual(data, target.data.getvalue())
        # VDI's magic sits at byte 64: a head cut before it still counts.
        sink = writer._FormatSink(_Collect(), None, 4096)
        sink.write(bytes(60))
        with self.assertRaises(formats.UnsupportedFormat):
            sink.write(b"\0\0\0\0\x7f\x10\xda\xbe" + bytes(5000))


class ConfigDriveTest(base.TestCase):

    def test_layout(self):
        with tempfile.TemporaryDirectory() as tree:
            written = configdrive.layout({
                "meta_data": {"uuid": "u", "files": [{"path": "/a",
                                                      "content_path": "x"}]},
                "user_data": "hi", "vendor_data": {"v": 1},
                "files": {"/etc/b": base64.b64encode(b"B").decode()}}, tree)
            self.assertIn("openstack/latest/user_data", written)
            self.assertIn("openstack/latest/vendor_data.json", written)
            with open(os.path.join(tree, "openstack/latest/"
                                   "meta_data.json")) as stream:
                meta = json.load(stream)
            self.assertEqual([{"path": "/a", "content_path": "x"},
                              {"path": "/etc/b",
                               "content_path": "/content/0000"}],
                             meta["files"])
            with open(os.path.join(tree, "openstack/content/0000"),
                      "rb") as stream:
                self.assertEqual(b"B", stream.read())

    def test_bad_files(self):
        for files in ({"relative": ""}, {"/a/../b": ""}, {"/a": "%%"}):
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.decode_files(files)

    def iso(self, label):
        data = bytearray(64 * 1024)
        data[32768] = 1
        data[32769:32774] = b"CD001"
        data[32808:32840] = label.ljust(32).encode()
        return bytes(data)

    def test_prebuilt(self):
        text = base64.b64encode(gzip.compress(self.iso("config-2"))).decode()
        self.assertEqual(self.iso("config-2"),
                         configdrive.decode_prebuilt(text, MIB))
        for bad, reason in (
                ("not base64!", "base64"),
                (base64.b64encode(b"plain").decode(), "gzip"),
                (base64.b64encode(gzip.compress(self.iso("other"))).decode(),
                 "labelled"),
                (base64.b64encode(gzip.compress(bytes(2 * MIB))).decode(),
                 "larger")):
            with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                        reason):
                configdrive.decode_prebuilt(bad, MIB)

    @mock.patch("teeth_agent.processes.execute")
    @mock.patch("teeth_agent.processes.which", return_value="/x")
    def test_build_uses_xorriso_with_the_label(self, which, execute):
        with tempfile.TemporaryDirectory() as out:
            iso = os.path.join(out, "cd.iso")

            def fake(*argv, **kwargs):
                with open(iso, "wb") as stream:
                    stream.write(bytes(4096))
                return "", ""
            execute.side_effect = fake
            self.assertEqual(4096, configdrive.build({"meta_data": {}}, iso,
                                                     MIB))
            argv = execute.call_args[0]
            self.assertEqual(["xorriso", "-as", "mkisofs"], list(argv[:3]))
            self.assertIn("config-2", argv)
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.build({"meta_data": {}}, iso, 1024)
            self.assertFalse(os.path.exists(iso))


class VfatConfigDriveTest(base.TestCase):
    """Disks with sectors over 2048 bytes get a VFAT config drive."""

    def fat(self, sector_size, label=b"config-2   "):
        data = bytearray(8192)
        data[11:13] = sector_size.to_bytes(2, "little")
        data[43:54] = label
        data[54:62] = b"FAT12   "
        data[510:512] = b"\x55\xaa"
        return bytes(data)

    def test_file_system_by_sector_size(self):
        self.assertEqual("iso9660", configdrive.file_system_for(512))
        self.assertEqual("iso9660", configdrive.file_system_for(2048))
        self.assertEqual("vfat", configdrive.file_system_for(4096))

    def test_fat_sector_size(self):
        self.assertEqual(4096, configdrive.fat_sector_size(self.fat(4096)))
        self.assertEqual("config-2", configdrive.image_label(self.fat(512)))
        self.assertIsNone(configdrive.fat_sector_size(bytes(8192)))

    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    def test_build_vfat_with_the_disk_sector_size(self, execute):
        with tempfile.TemporaryDirectory() as out:
            image = os.path.join(out, "cd.img")
            size = configdrive.build({"meta_data": {"a": 1},
                                      "user_data": "x" * 100000}, image,
                                     64 * MIB, sector_size=4096)
            self.assertEqual(0, size % MIB)
            self.assertGreaterEqual(size, 100000)
            mkfs, mcopy = (c[0] for c in execute.call_args_list)
            self.assertEqual(("mkfs.vfat", "-S", "4096", "-s", "1", "-n",
                              "config-2", image), mkfs)
            self.assertEqual(("mcopy", "-s", "-i", image), mcopy[:4])
            self.assertTrue(mcopy[4].endswith("/openstack"))
            self.assertEqual("::/", mcopy[-1])
            self.assertEqual("1", execute.call_args_list[1][1]["env"][
                "MTOOLS_SKIP_CHECK"])

    def iso(self):
        data = bytearray(64 * 1024)
        data[32768] = 1
        data[32769:32774] = b"CD001"
        data[32808:32840] = b"config-2".ljust(32)
        return bytes(data)

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_kept_when_the_disk_reads_it(self, execute):
        self.assertEqual(self.iso(), configdrive.fit_to_sector_size(
            self.iso(), 512, MIB))
        self.assertEqual(self.fat(4096), configdrive.fit_to_sector_size(
            self.fat(4096), 4096, MIB))
        execute.assert_not_called()

    @staticmethod
    def tools(execute):
        """The tools run, without the prlimit in front of extraction."""
        return [c[0][4] if c[0][0] == "prlimit" else c[0][0]
                for c in execute.call_args_list]

    def fake_tools(self, execute, extracted):
        listings = {"xorriso": "File data lba:  0 ,  20 ,  1 ,  2 , '/x'\n",
                    "env": "Total files listed:\n   1 file   2 bytes\n"}
        patcher = mock.patch.object(
            configdrive, "_listing", side_effect=lambda *argv: listings[
                argv[0]])
        patcher.start()
        self.addCleanup(patcher.stop)

        def run(*argv, **kwargs):
            if argv[0] == "prlimit":
                argv = argv[4:]
            if argv[0] == "xorriso" or argv[:2] == ("mcopy", "-s") and \
                    argv[2] == "-n":
                tree = argv[-1] if argv[0] == "xorriso" else argv[-1][:-1]
                extracted(tree)
            elif argv[0] == "mkfs.vfat":
                with open(argv[-1], "r+b") as stream:
                    stream.write(self.fat(4096))
            return "", ""
        execute.side_effect = run

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_iso_is_rebuilt_as_vfat(self, execute):
        def extracted(tree):
            os.makedirs(os.path.join(tree, "openstack", "latest"))
            with open(os.path.join(tree, "openstack", "latest",
                                   "meta_data.json"), "w") as stream:
                stream.write("{}")
        self.fake_tools(execute, extracted)
        rebuilt = configdrive.fit_to_sector_size(self.iso(), 4096, 64 * MIB)
        self.assertEqual(4096, configdrive.fat_sector_size(rebuilt))
        self.assertEqual(["xorriso", "mkfs.vfat", "mcopy"],
                         self.tools(execute))
        self.assertIn("-extract", execute.call_args_list[0][0])
        # A FAT drive made for 512-byte sectors is rebuilt the same way.
        execute.reset_mock()
        configdrive.fit_to_sector_size(self.fat(512), 4096, 64 * MIB)
        self.assertEqual(["mcopy", "mkfs.vfat", "mcopy"],
                         self.tools(execute))

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_with_a_link_is_refused(self, execute):
        def extracted(tree):
            os.symlink("/etc/shadow", os.path.join(tree, "meta_data.json"))
        self.fake_tools(execute, extracted)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "meta_data.json"):
            configdrive.fit_to_sector_size(self.iso(), 4096, 64 * MIB)
        self.assertEqual(["xorriso"], self.tools(execute))


class BootDiscoveryTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.root)
        os.makedirs(os.path.join(self.root, "boot", "grub"))

    def write(self, path, text="x"):
        full = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as stream:
            stream.write(text)

    def test_absolute_links_stay_inside_the_image(self):
        outside = tempfile.NamedTemporaryFile()
        self.addCleanup(outside.close)
        os.symlink(outside.name, os.path.join(self.root, "boot", "vmlinuz"))
        os.symlink("../../../../..", os.path.join(self.root, "up"))
        self.assertIsNone(boot.resolve_inside(self.root, "/boot/vmlinuz"))
        self.assertEqual(self.root + "/boot",
                         boot.resolve_inside(self.root, "/up/boot"))
        os.symlink("loop", os.path.join(self.root, "loop"))
        with self.assertRaises(boot.UnsafePath):
            boot.resolve_inside(self.root, "/loop")

    def test_grub_cfg_first_entry(self):
        self.write("/boot/vmlinuz-2", "k")
        self.write("/boot/initrd.img-2", "i")
        self.write("/boot/grub/grub.cfg",
                   "menuentry 'a' {\n linux (hd0,gpt2)/boot/vmlinuz-2 "
                   "root=/dev/sda2 ro $vt_handoff\n"
                   " initrd /boot/initrd.img-2\n}\n"
                   "menuentry 'b' {\n linux /boot/vmlinuz-1\n}\n")
        found = boot.find_kernel(self.root)
        self.assertEqual({"kernel": "/boot/vmlinuz-2",
                          "initrds": ["/boot/initrd.img-2"],
                          "options": "root=/dev/sda2 ro",
                          "source": "grub.cfg"}, found)

    def test_bls_newest_with_grubenv(self):
        self.write("/boot/vmlinuz-5.9", "k")
        self.write("/boot/vmlinuz-5.10", "k")
        self.write("/boot/loader/entries/a.conf",
                   "version 5.9\nlinux /vmlinuz-5.9\noptions root=A\n")
        self.write("/boot/loader/entries/b.conf",
                   "version 5.10\nlinux /vmlinuz-5.10\noptions $kernelopts\n")
        self.write("/boot/grub2/grubenv", "kernelopts=root=B ro\n")
        found = boot.find_kernel(self.root)
        self.assertEqual("/boot/vmlinuz-5.10", found["kernel"])
        self.assertEqual("root=B ro", found["options"])
        self.assertEqual("bls", found["source"])

    def test_newest_vmlinuz(self):
        for version in ("5.10.0-9", "5.10.0-10", "4.19"):
            self.write("/boot/vmlinuz-%s" % version)
        self.write("/boot/initramfs-5.10.0-10.img")
        found = boot.find_kernel(self.root)
        self.assertEqual("/boot/vmlinuz-5.10.0-10", found["kernel"])
        self.assertEqual(["/boot/initramfs-5.10.0-10.img"], found["initrds"])

    def test_nothing(self):
        self.assertIsNone(boot.find_kernel(self.root))

    @mock.patch("teeth_agent.processes.execute")
    def test_btrfs_is_mounted_without_log_replay(self, execute):
        execute.side_effect = [
            boot.processes.ProcessError(["mount"], 32, "", "bad option"),
            ("", ""), ("", "")]
        with boot.mounted_read_only("/dev/loop9p1", "btrfs") as root:
            self.assertTrue(root.startswith("/"))
        first, second, unmount = (c[0] for c in execute.call_args_list)
        self.assertIn("rescue=nologreplay", first[4].split(","))
        self.assertIn("nologreplay", second[4].split(","))
        self.assertIn("ro", second[4].split(","))
        self.assertEqual("umount", unmount[0])
        self.assertFalse(os.path.exists(root))

    def test_read_only_options_never_replay(self):
        self.assertIn("noload", boot.read_only_mount_options("ext4")[0])
        self.assertIn("norecovery", boot.read_only_mount_options("xfs")[0])
        for options in boot.read_only_mount_options("btrfs"):
            self.assertIn("nologreplay", options)
            self.assertTrue(options.startswith("ro,"))

    def test_grub_config(self):
        text = boot.grub_config({"fs_uuid": "U", "kernel": "/boot/k",
                                 "initrd": "/boot/i", "cmdline": "ro"})
        self.assertIn("linux /boot/k ro", text)
        self.assertIn("--set=root U", text)


class PartitionsTest(base.TestCase):

    def table(self, label, partitions, lastlba=None):
        table = {"label": label, "sectorsize": 512, "partitions": [
            dict(node="/dev/loop3p%d" % n, start=s, size=z, type=t)
            for n, s, z, t in partitions]}
        if lastlba:
            table["lastlba"] = lastlba
        return json.dumps({"partitiontable": table})

    @mock.patch("teeth_agent.blockdev.device_size",
                return_value=512 * MIB)
    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    @mock.patch("teeth_agent.processes.run")
    def test_gpt_partition_at_the_end(self, run, execute, size):
        before = self.table("gpt", [(1, 2048, 4096, "x")], lastlba=8191)
        after = self.table("gpt", [(1, 2048, 4096, "x")],
                           lastlba=512 * 2048 - 34)
        run.side_effect = [(0, before, ""), (0, after, ""), (0, "", ""),
                           (0, "", "")]
        added = partitions.add_partition_at_end("/dev/loop3", 3 * MIB)
        self.assertEqual(2, added["number"])
        self.assertEqual(3 * MIB, added["size"])
        self.assertEqual(508 * MIB, added["offset"])
        calls = [c[0] for c in execute.call_args_list]
        self.assertEqual(("sgdisk", "-e", "/dev/loop3"), calls[0])
        self.assertIn("2:%d:%d" % (508 * 2048, 511 * 2048 - 1), calls[1])
        self.assertIn("2:config-2", calls[1])
        partx = [c[0][:2] for c in run.call_args_list[2:]]
        self.assertEqual([("partx", "-u"), ("partx", "-a")], partx)

    @mock.patch("teeth_agent.blockdev.device_size",
                return_value=64 * MIB)
    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    @mock.patch("teeth_agent.processes.run")
    def test_mbr(self, run, execute, size):
        before = self.table("dos", [(1, 2048, 4096, "83")])
        after = self.table("dos", [(1, 2048, 4096, "83"),
                                   (2, 63 * 2048, 2048, "83")])
        run.side_effect = [(0, before, ""), (0, after, ""), (0, "", ""),
                           (0, "", "")]
        added = partitions.add_partition_at_end("/dev/loop3", 1000)
        self.assertEqual({"number": 2, "offset": 63 * MIB, "size": MIB},
                         added)
        self.assertEqual("start=%d, size=2048, type=83\n" % (63 * 2048),
                         execute.call_args[1]["input_data"])

    @mock.patch("teeth_agent.processes.run")
    def test_full_mbr_and_no_table(self, run):
        run.return_value = (0, self.table("dos", [
            (n, n * 2048, 2048, "83") for n in (1, 2, 3, 4)]), "")
        with self.assertRaisesRegex(partitions.PartitionError, "slot"):
            partitions.add_partition_at_end("/dev/loop3", 1000)
        run.return_value = (1, "", "sfdisk: /dev/loop3: does not contain a "
                            "recognized partition table")
        self.assertIsNone(partitions.read_table("/dev/loop3"))
        with self.assertRaises(partitions.PartitionError):
            partitions.add_partition_at_end("/dev/loop3", 1000)


class CacheTestBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        self.cache = cache.ImageCache(self.dir, 0)
        self.cache.prepare()

    def put(self, image_id, size, when):
        with open(self.cache.data_path(image_id), "wb") as stream:
            stream.write(bytes(size))
        self.cache._write_record({"id": image_id, "size": size,
                                  "algorithm": "sha256",
                                  "hexdigest": "a" * 64, "format": "raw",
                                  "cached_at": when})


class CacheTest(CacheTestBase):

    def test_lookup_requires_matching_checksum(self):
        image_id = "0d6a1c04-7b53-4a3e-9c36-8a6b1f7e2d10"
        self.put(image_id, 10, 1)
        self.assertIsNotNone(self.cache.lookup(image_id.upper()))
        self.assertIsNotNone(self.cache.lookup(image_id,
                                               {"sha256": "A" * 64}))
        self.assertIsNone(self.cache.lookup(image_id, {"sha256": "b" * 64}))
        self.assertIsNone(self.cache.lookup(image_id, {"sha512": "a" * 128}))
        # A data file of the wrong size is not a cache entry.
        with open(self.cache.data_path(image_id), "ab") as stream:
            stream.write(b"x")
        self.assertIsNone(self.cache.lookup(image_id))

    def test_evicts_oldest_unlisted_first_and_never_in_use(self):
        ids = ["00000000-0000-4000-8000-00000000000%d" % n for n in range(4)]
        for index, image_id in enumerate(ids):
            self.put(image_id, 100, index)
        free = [150]
        with mock.patch.object(self.cache, "available",
                               side_effect=lambda: free[0]):
            original = self.cache.evict

            def evict(image_id):
                if original(image_id):
                    free[0] += 100
                    return True
                return False
            with mock.patch.object(self.cache, "evict", side_effect=evict):
                with self.cache.using(ids[1]):
                    self.assertTrue(self.cache._make_room(300, {ids[0]}))
        # 150 free + ids[2] + ids[3] make 350: both go, oldest first.
        self.assertEqual([ids[0], ids[1]], sorted(self.cache.entries()))
        self.assertFalse(self.cache._make_room(10 ** 18, set()))

    def test_prepare_removes_partial_downloads(self):
        partial = os.path.join(self.dir, ".x.image.partial-abc")
        open(partial, "w").close()
        self.cache.prepare()
        self.assertFalse(os.path.exists(partial))

    def test_prepare_removes_orphans_and_keeps_entries(self):
        good, orphan, wrong, lonely = (
            "00000000-0000-4000-8000-00000000000%d" % n for n in range(4))
        self.put(good, 10, 1)
        self.put(wrong, 10, 1)
        with open(self.cache.data_path(wrong), "ab") as stream:
            stream.write(b"more than the record says")
        with open(self.cache.data_path(orphan), "wb") as stream:
            stream.write(b"renamed, but no record was written")
        self.put(lonely, 10, 1)
        os.unlink(self.cache.data_path(lonely))
        partial_record = os.path.join(
            self.dir, ".%s.json.partial-record" % orphan)
        open(partial_record, "w").close()
        other = os.path.join(self.dir, "lost+found")
        os.mkdir(other)
        self.cache.prepare()
        self.assertEqual(sorted(["%s.image" % good, "%s.json" % good,
                                 "lost+found"]), sorted(os.listdir(self.dir)))

    def test_cleanup_without_the_directory_creates_nothing(self):
        missing = os.path.join(self.dir, "not-yet")
        cache.ImageCache(missing, 0).cleanup()
        self.assertFalse(os.path.exists(missing))


IMAGE = "7b0e7f3c-8c61-4f0a-9d7e-2f1a3b4c5d6e"
OTHER = "00000000-0000-4000-8000-000000000001"


class CacheAddTest(CacheTestBase):
    """cache.add with the download mocked: what is left on failures."""

    def image(self, **changes):
        image = {"id": IMAGE, "urls": ["http://127.0.0.1:1/i"],
                 "hashes": {"sha256": "b" * 64}}
        image.update(changes)
        return image

    def fake_download(self, content=b"raw image", failures=()):
        failures = list(failures)
        calls = []

        def download_to_file(urls, hashes, path, **kwargs):
            calls.append(kwargs)
            if failures:
                raise failures.pop(0)
            with open(path, "wb") as stream:
                stream.write(content)
            return {"size": len(content)}
        patcher = mock.patch.object(cache.download, "download_to_file",
                                    side_effect=download_to_file)
        patcher.start()
        self.addCleanup(patcher.stop)
        return calls

    def test_qemu_img_failure_leaves_no_orphan(self):
        self.fake_download(content=qcow2_header())
        with mock.patch.object(cache.qcow2, "inspect", side_effect=(
                cache.processes.ProcessError(["qemu-img"], None,
                                             reason="timed out"))):
            result = self.cache.add(self.image())
        self.assertEqual("failed", result["status"])
        self.assertIn("qemu-img", result["reason"])
        self.assertEqual([], os.listdir(self.dir))

    def test_record_failure_leaves_no_orphan(self):
        self.fake_download()
        with mock.patch.object(self.cache, "_write_record",
                               side_effect=OSError(28, "No space left")):
            result = self.cache.add(self.image())
        self.assertEqual("failed", result["status"])
        self.assertIn("No space left", result["reason"])
        self.assertEqual([], os.listdir(self.dir))
        self.assertIsNone(self.cache.lookup(IMAGE))

    def test_success_is_recorded(self):
        self.fake_download()
        result = self.cache.add(self.image())
        self.assertEqual("cached", result["status"])
        self.assertEqual(9, self.cache.lookup(IMAGE)["size"])

    def test_an_older_copy_in_use_is_not_overwritten(self):
        self.put(IMAGE, 10, 1)
        calls = self.fake_download()
        with self.cache.using(IMAGE):
            result = self.cache.add(self.image())
        self.assertEqual("skipped", result["status"])
        self.assertIn("in use", result["reason"])
        self.assertEqual([], calls)
        with open(self.cache.data_path(IMAGE), "rb") as stream:
            self.assertEqual(bytes(10), stream.read())
        self.assertEqual("a" * 64, self.cache.lookup(IMAGE)["hexdigest"])

    def test_an_older_copy_not_in_use_is_replaced(self):
        self.put(IMAGE, 10, 1)
        self.fake_download()
        self.assertEqual("cached", self.cache.add(self.image())["status"])
        self.assertEqual("b" * 64, self.cache.lookup(IMAGE)["hexdigest"])

    def test_without_size_space_running_out_evicts_and_retries(self):
        self.put(OTHER, 10, 1)
        full = cache.download.NoSpace("no space left")
        calls = self.fake_download(failures=[full])
        result = self.cache.add(self.image(), keep={IMAGE})
        self.assertEqual("cached", result["status"])
        self.assertEqual(2, len(calls))
        self.assertIsNone(self.cache.lookup(OTHER))

    def test_without_size_listed_images_are_kept(self):
        self.put(OTHER, 10, 1)
        too_large = cache.download.ImageTooLarge(
            "larger than 5 bytes")
        calls = self.fake_download(failures=[too_large, too_large])
        result = self.cache.add(self.image(), keep={IMAGE, OTHER})
        self.assertEqual("skipped", result["status"])
        self.assertEqual(1, len(calls))
        self.assertIsNotNone(self.cache.lookup(OTHER))

    def test_without_size_retried_once_only(self):
        self.put(OTHER, 10, 1)
        too_large = cache.download.ImageTooLarge(
            "larger than 5 bytes")
        calls = self.fake_download(failures=[too_large, too_large])
        result = self.cache.add(self.image(), keep={IMAGE})
        self.assertEqual("skipped", result["status"])
        self.assertIn("does not fit", result["reason"])
        self.assertEqual(2, len(calls))

    def test_with_size_no_retry(self):
        full = cache.download.NoSpace("no space left")
        calls = self.fake_download(failures=[full])
        self.put(OTHER, 10, 1)
        result = self.cache.add(self.image(size=9), keep={IMAGE})
        self.assertEqual("skipped", result["status"])
        self.assertEqual(1, len(calls))
