"""teeth_agent.images.qcow2: what a qcow2 image may refer to, and converting
it."""

import json
import struct
import tempfile
from unittest import mock

from teeth_agent.images import qcow2
from teeth_agent import units
from tests import base
from tests.unit.images import samples

MIB = units.MIB


class Qcow2Test(base.TestCase):

    def test_accepts_a_self_contained_image(self):
        for version in (2, 3):
            info = qcow2.check_header(samples.qcow2_header(version))
            self.assertEqual(10 * MIB, info["virtual_size"])

    def test_refuses_references_outside_the_image(self):
        data_file = struct.pack(">II", 0x44415441, 8) + b"/etc/sha"
        backing_fmt = struct.pack(">II", 0xE2792ACA, 3) + b"raw\0\0\0\0\0"
        for header in (samples.qcow2_header(backing=512),
                       samples.qcow2_header(incompatible=1 << 2),
                       samples.qcow2_header(extensions=data_file),
                       samples.qcow2_header(extensions=backing_fmt),
                       samples.qcow2_header(crypt=1),
                       samples.qcow2_header(incompatible=1 << 40),
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
            image.write(samples.qcow2_header())
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
