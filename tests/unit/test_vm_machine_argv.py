"""The qemu command lines of the VM test's machines (tests/vm): which
device gets which ``bootindex``, and the UEFI machine's QMP socket. Only
the argument list is built: no qemu runs."""

import shutil
import tempfile
import unittest

from tests.vm import machine
from tests.vm import uefi


def devices(argv):
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-device"]


class MachineArgvTest(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def test_bios_machine_boots_its_first_disk(self):
        vm = machine.VirtualMachine(
            self.directory, kernel=None, initrd=None, cmdline=None,
            disks=[("virtio", "/x/a.img", "A"), ("sata", "/x/b.img", "B")],
            forwards={})
        found = devices(vm.argv())
        self.assertIn("virtio-blk-pci,drive=d0,bootindex=0,serial=A", found)
        self.assertEqual([d for d in found if "bootindex" in d],
                         ["virtio-blk-pci,drive=d0,bootindex=0,serial=A"])
        argv = vm.argv()
        self.assertEqual(argv[argv.index("-monitor") + 1], "none")
        self.assertNotIn("-qmp", argv)

    def test_uefi_machine_has_no_bootindex_by_default(self):
        vm = uefi.UefiMachine(
            self.directory, disks=[("cdrom", "/x/r.iso", "R"),
                                   ("virtio", "/x/t.img", "T")],
            forwards={}, variables="/x/vars.fd")
        self.assertFalse([d for d in devices(vm.argv()) if "bootindex" in d])

    def test_uefi_boot_order_follows_the_serials(self):
        vm = uefi.UefiMachine(
            self.directory, disks=[("cdrom", "/x/r.iso", "R"),
                                   ("virtio", "/x/t.img", "T"),
                                   ("virtio", "/x/u.img", "U")],
            forwards={}, variables="/x/vars.fd",
            boot_order=("R", "T", "net"))
        argv = vm.argv()
        found = devices(argv)
        self.assertIn("ide-cd,drive=d0,bootindex=0,bus=ahci0.0,serial=R",
                      found)
        self.assertIn("virtio-blk-pci,drive=d1,bootindex=1,serial=T", found)
        self.assertIn("virtio-blk-pci,drive=d2,serial=U", found)
        self.assertIn("virtio-net-pci,netdev=n0,romfile=,bootindex=2", found)
        qmp = argv[argv.index("-qmp") + 1]
        self.assertEqual(qmp, "unix:%s,server=on,wait=off" % vm.qmp_path)


if __name__ == "__main__":
    unittest.main()
