"""teeth_agent.images.boot: finding the kernel in an image, installing grub
through a directory the agent made (never into a link of the image,
never reading its device.map), boot files that are sparse or too large,
and several initrds on one grub line.
"""

import os
import shutil
import tempfile
from unittest import mock

from teeth_agent.images import boot
from teeth_agent import processes
from teeth_agent import units
from tests import base

MIB = units.MIB


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


BOOT = {"fs_uuid": "U", "kernel": "/boot/vmlinuz", "cmdline": "ro quiet",
        "initrd": ["/boot/a.img", "/boot/b.img"]}


def listing(path):
    """``{relative path: link target or file bytes or None (directory)}``
    of a tree, links never followed."""
    found = {}
    for directory, names, files in os.walk(path):
        for name in names + files:
            full = os.path.join(directory, name)
            key = os.path.relpath(full, path)
            if os.path.islink(full):
                found[key] = "-> " + os.readlink(full)
            elif os.path.isdir(full):
                found[key] = None
            else:
                with open(full, "rb") as stream:
                    found[key] = stream.read()
    return found


class InstallGrubTest(base.TestCase):
    """install_grub on a fake mount: ``mount`` fills the mount point with
    the image's tree, ``umount`` keeps what is there for the test."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.outside = os.path.join(self.dir, "outside")
        os.mkdir(self.outside)
        self.image = os.path.join(self.dir, "image")
        os.makedirs(os.path.join(self.image, "boot"))
        self.after = os.path.join(self.dir, "after")
        self.seen_by_grub = None
        self.grub_fails = False
        self.calls = []
        patcher = mock.patch.object(processes, "which",
                                    return_value="/usr/sbin/grub-install")
        patcher.start()
        self.addCleanup(patcher.stop)
        patcher = mock.patch.object(processes, "execute",
                                    side_effect=self.execute)
        patcher.start()
        self.addCleanup(patcher.stop)

    def execute(self, *argv, **kwargs):
        self.calls.append(argv[0])
        if argv[0] == "mount":
            mount_point = argv[-1]
            os.rmdir(mount_point)
            shutil.copytree(self.image, mount_point, symlinks=True)
        elif argv[0] == "umount":
            os.rename(argv[-1], self.after)
            os.mkdir(argv[-1])
        elif argv[0] == "grub-install":
            boot_dir = [a for a in argv
                        if a.startswith("--boot-directory=")][0]
            boot_dir = boot_dir.split("=", 1)[1]
            grub = os.path.join(boot_dir, "grub")
            self.seen_by_grub = (os.path.islink(grub), listing(grub))
            if self.grub_fails:
                os.makedirs(os.path.join(grub, "i386-pc"))
                raise processes.ProcessError(list(argv), 1, "", "no drive")
            # What grub-install writes, through the path it was given.
            os.makedirs(os.path.join(grub, "i386-pc"), exist_ok=True)
            with open(os.path.join(grub, "i386-pc", "normal.mod"),
                      "wb") as stream:
                stream.write(b"grub module")
            with open(os.path.join(grub, "grubenv"), "w") as stream:
                stream.write("# GRUB Environment Block\n")
        return "", ""

    def install(self):
        boot.install_grub("/dev/loop9", "/dev/loop9p1", "ext4", "i386-pc",
                          BOOT)

    def test_boot_grub_linked_out_of_the_image_is_refused(self):
        os.symlink(self.outside, os.path.join(self.image, "boot", "grub"))
        with self.assertRaisesRegex(boot.UnsafePath, "/boot/grub"):
            self.install()
        self.assertNotIn("grub-install", self.calls)
        self.assertEqual({}, listing(self.outside))
        self.assertEqual("umount", self.calls[-1])
        self.assertTrue(os.path.islink(os.path.join(self.after, "boot",
                                                    "grub")))

    def test_boot_linked_out_of_the_image_is_refused(self):
        shutil.rmtree(os.path.join(self.image, "boot"))
        os.symlink(self.outside, os.path.join(self.image, "boot"))
        with self.assertRaisesRegex(boot.UnsafePath, "/boot"):
            self.install()
        self.assertNotIn("grub-install", self.calls)
        self.assertEqual({}, listing(self.outside))

    def test_grub_writes_into_an_empty_directory_of_its_own(self):
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(os.path.join(grub, "themes", "t"))
        with open(os.path.join(grub, "device.map"), "w") as stream:
            stream.write("(hd0) /dev/sda\n")
        with open(os.path.join(grub, "grub.cfg"), "w") as stream:
            stream.write("image's own config\n")
        with open(os.path.join(grub, "grubenv"), "w") as stream:
            stream.write("kernelopts=root=/dev/vda1\n")
        # A planted link where grub writes its modules.
        os.symlink(self.outside, os.path.join(grub, "i386-pc"))
        self.install()
        # grub-install saw a real, empty directory: no device.map of the
        # image, no link to follow.
        self.assertEqual((False, {}), self.seen_by_grub)
        after = listing(os.path.join(self.after, "boot", "grub"))
        self.assertEqual(b"image's own config\n", after["grub.cfg"])
        self.assertEqual(b"kernelopts=root=/dev/vda1\n", after["grubenv"])
        self.assertEqual(b"grub module", after["i386-pc/normal.mod"])
        self.assertIn("themes/t", after)
        self.assertEqual(["grub"], [
            name for name in os.listdir(os.path.join(self.after, "boot"))
            if name.startswith("grub")])
        self.assertEqual({}, listing(self.outside))

    def test_a_failed_install_puts_the_image_directory_back(self):
        self.grub_fails = True
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(grub)
        with open(os.path.join(grub, "device.map"), "w") as stream:
            stream.write("(hd0) /dev/sda\n")
        os.symlink("/etc/shadow", os.path.join(grub, "grub.cfg"))
        before = listing(grub)
        with self.assertRaises(processes.ProcessError):
            self.install()
        self.assertEqual(before, listing(os.path.join(self.after, "boot",
                                                      "grub")))
        self.assertEqual(["grub"],
                         os.listdir(os.path.join(self.after, "boot")))

    def test_grub_cfg_written_when_missing_with_every_initrd(self):
        self.install()
        with open(os.path.join(self.after, "boot", "grub",
                               "grub.cfg")) as stream:
            text = stream.read()
        self.assertIn("    initrd /boot/a.img /boot/b.img\n", text)
        self.assertNotIn("[", text)

    def test_a_linked_grub_cfg_is_neither_followed_nor_replaced(self):
        target = os.path.join(self.outside, "file")
        with open(target, "w") as stream:
            stream.write("host file\n")
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(grub)
        os.symlink(target, os.path.join(grub, "grub.cfg"))
        self.install()
        self.assertEqual("-> " + target, listing(os.path.join(
            self.after, "boot", "grub"))["grub.cfg"])
        with open(target) as stream:
            self.assertEqual("host file\n", stream.read())

    def test_missing_boot_is_made(self):
        shutil.rmtree(os.path.join(self.image, "boot"))
        self.install()
        self.assertTrue(os.path.isfile(os.path.join(
            self.after, "boot", "grub", "i386-pc", "normal.mod")))


class GrubConfigTest(base.TestCase):

    def test_two_initrds_are_one_line(self):
        text = boot.grub_config(BOOT)
        self.assertIn("    initrd /boot/a.img /boot/b.img\n", text)
        self.assertEqual(1, text.count("initrd"))

    def test_one_initrd_or_none(self):
        self.assertIn("    initrd /boot/i\n",
                      boot.grub_config(dict(BOOT, initrd="/boot/i")))
        self.assertNotIn("initrd", boot.grub_config(dict(BOOT, initrd=None)))


class BootFileTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        os.mkdir(os.path.join(self.root, "boot"))

    def write(self, name, data, size=None):
        path = os.path.join(self.root, "boot", name)
        with open(path, "wb") as stream:
            stream.write(data)
            if size is not None:
                stream.truncate(size)
        return "/boot/" + name

    def test_sparse_file_is_refused(self):
        kernel = self.write("vmlinuz", b"MZ" + bytes(4094), 64 * MIB)
        info = os.stat(os.path.join(self.root, "boot", "vmlinuz"))
        if info.st_blocks * 512 >= info.st_size:
            self.skipTest("this file system stores no holes")
        with self.assertRaisesRegex(boot.UnsafePath, "sparse"):
            boot.copy_out(self.root, kernel, os.path.join(self.root, "k"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "k")))

    def test_a_few_holes_are_fine(self):
        # mke2fs -d turns blocks of zeros into holes; a kernel has some.
        path = os.path.join(self.root, "boot", "vmlinuz")
        with open(path, "wb") as stream:
            stream.write(os.urandom(60 * 4096))
            stream.seek(4 * 4096, os.SEEK_CUR)
            stream.write(os.urandom(60 * 4096))
        copy = boot.copy_out(self.root, "/boot/vmlinuz",
                             os.path.join(self.root, "k"))
        self.assertEqual(124 * 4096, os.path.getsize(copy))

    def test_dense_file_is_copied(self):
        data = os.urandom(3 * 4096 + 17)
        kernel = self.write("vmlinuz", data)
        copy = boot.copy_out(self.root, kernel, os.path.join(self.root, "k"))
        with open(copy, "rb") as stream:
            self.assertEqual(data, stream.read())

    def test_default_caps_fit_a_kernel_and_an_initrd(self):
        conf = base.make_conf()
        self.assertEqual(boot.MAX_KERNEL_SIZE, conf.standbye.max_kernel_size)
        self.assertEqual(boot.MAX_INITRDS_TOTAL,
                         conf.standbye.max_initrd_size)
        self.assertEqual(128 * MIB, boot.MAX_KERNEL_SIZE)
        self.assertEqual(512 * MIB, boot.MAX_INITRDS_TOTAL)
