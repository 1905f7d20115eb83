"""teeth_agent.disk.partitions: reading a partition table and adding a
partition at its end."""

import json
from unittest import mock

from teeth_agent.disk import partitions
from teeth_agent import units
from tests import base

MIB = units.MIB


class PartitionsTest(base.TestCase):

    def table(self, label, partitions, lastlba=None):
        table = {"label": label, "sectorsize": 512, "partitions": [
            dict(node="/dev/loop3p%d" % n, start=s, size=z, type=t)
            for n, s, z, t in partitions]}
        if lastlba:
            table["lastlba"] = lastlba
        return json.dumps({"partitiontable": table})

    @mock.patch("teeth_agent.disk.blockdev.device_size",
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

    @mock.patch("teeth_agent.disk.blockdev.device_size",
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
