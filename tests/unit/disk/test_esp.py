"""Where a new EFI system partition goes, and when there is no room."""

import hashlib
import os
import shutil
import struct
import tempfile

from teeth_agent.disk import esp
from teeth_agent.disk import partitions
from tests import base

MIB_SECTORS = 2048


def gpt(partitions, last_lba=2 * 1024 * MIB_SECTORS - 34, sector=512):
    return {"type": "gpt", "sector_size": sector, "last_lba": last_lba,
            "partitions": [{"number": n + 1, "start": start,
                            "sectors": sectors}
                           for n, (start, sectors) in enumerate(partitions)]}


class PlaceEspTest(base.TestCase):

    def test_free_ranges(self):
        table = gpt([(2048, 100 * MIB_SECTORS),
                     (400 * MIB_SECTORS, 10 * MIB_SECTORS)],
                    last_lba=1000 * MIB_SECTORS)
        self.assertEqual([(34, 2047),
                          (2048 + 100 * MIB_SECTORS, 400 * MIB_SECTORS - 1),
                          (410 * MIB_SECTORS, 1000 * MIB_SECTORS)],
                         esp.free_ranges(table))

    def test_largest_aligned_range_wins(self):
        # 200 MiB free after the root, 590 MiB after the config drive.
        table = gpt([(2048, 100 * MIB_SECTORS),
                     (301 * MIB_SECTORS, 10 * MIB_SECTORS)],
                    last_lba=900 * MIB_SECTORS + 33)
        first, last = esp.place_esp(table)
        self.assertEqual(311 * MIB_SECTORS, first)
        self.assertEqual(first + esp.ESP_SIZE // 512 - 1, last)
        self.assertEqual(0, first % MIB_SECTORS)

    def test_no_room(self):
        table = gpt([(2048, 100 * MIB_SECTORS)],
                    last_lba=2048 + 200 * MIB_SECTORS)
        with self.assertRaises(esp.NoRoomForEsp) as caught:
            esp.place_esp(table)
        self.assertIn("no free range of 128 MiB", str(caught.exception))

    def test_mbr_is_refused(self):
        table = dict(gpt([]), type="dos")
        with self.assertRaises(esp.NoRoomForEsp) as caught:
            esp.place_esp(table)
        self.assertIn("only in a GPT table", str(caught.exception))

    def test_4096_byte_sectors(self):
        table = gpt([(256, 100 * 256)], last_lba=1000 * 256, sector=4096)
        first, last = esp.place_esp(table)
        self.assertEqual(0, first % 256)
        self.assertEqual(esp.ESP_SIZE // 4096, last - first + 1)


class CheckRoomTest(base.TestCase):
    """The table as it will be, worked out from the table and the GPT
    header of a disk file before anything changes."""

    def disk(self, size_mib, entries=128, entry_size=128, sector=512,
             signature=b"EFI PART"):
        """A sparse file of ``size_mib`` MiB with a primary GPT header (only
        the fields :func:`esp.read_gpt_header` reads)."""
        directory = tempfile.mkdtemp(prefix="teeth-esp-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "disk.img")
        header = bytearray(92)
        header[:8] = signature
        struct.pack_into("<II", header, 80, entries, entry_size)
        with open(path, "wb") as stream:
            stream.truncate(size_mib * 1024 * 1024)
            stream.seek(sector)
            stream.write(bytes(header))
        return path

    def image_table(self, image_mib, sector=512):
        """The table of a ``image_mib`` MiB image: one partition from
        1 MiB to its last usable sector, backup header at the image's
        end."""
        per_mib = 1024 * 1024 // sector
        last = image_mib * per_mib - 2 - -(-16384 // sector)
        return gpt([(per_mib, last - per_mib + 1)], last_lba=last,
                   sector=sector)

    def unchanged(self, path):
        with open(path, "rb") as stream:
            return hashlib.sha256(stream.read()).hexdigest()

    def test_backup_header_relocation_counts(self):
        path = self.disk(256)
        table = self.image_table(20)
        before = self.unchanged(path)
        planned = esp.planned_table(path, table)
        self.assertEqual(256 * MIB_SECTORS - 34, planned["last_lba"])
        self.assertEqual(128, planned["entries"])
        number, first, last = esp.check_room(path, table)
        self.assertEqual((2, 20 * MIB_SECTORS,
                          20 * MIB_SECTORS + esp.ESP_SIZE // 512 - 1),
                         (number, first, last))
        # The caller's table is not changed either.
        self.assertEqual(20 * MIB_SECTORS - 34, table["last_lba"])
        self.assertEqual(1, len(table["partitions"]))
        self.assertEqual(before, self.unchanged(path))

    def test_too_small_even_after_relocation(self):
        path = self.disk(96)
        with self.assertRaises(esp.NoRoomForEsp) as caught:
            esp.check_room(path, self.image_table(20))
        self.assertIn("no free range of 128 MiB", str(caught.exception))

    def test_the_config_drive_takes_the_end(self):
        # 149 MiB: 128 MiB fit after a 20 MiB image, not next to a 1 MiB
        # config drive at the end; 150 MiB fit both.
        table = self.image_table(20)
        path = self.disk(149)
        esp.check_room(path, table)
        with self.assertRaises(esp.NoRoomForEsp):
            esp.check_room(path, table, reserve_bytes=300 * 1024)
        planned = esp.planned_table(self.disk(150), table, 300 * 1024)
        drive = planned["partitions"][-1]
        self.assertEqual((2, 148 * MIB_SECTORS, MIB_SECTORS),
                         (drive["number"], drive["start"],
                          drive["sectors"]))
        number, first, _ = esp.check_room(self.disk(150), table, 300 * 1024)
        self.assertEqual((3, 20 * MIB_SECTORS), (number, first))

    def test_a_replaced_config_drive_is_free(self):
        # The old drive (partition 2) fills the end; it goes before the new
        # one is added.
        table = self.image_table(20)
        table["partitions"].append({"number": 2, "start": 21 * MIB_SECTORS,
                                    "sectors": 200 * MIB_SECTORS})
        path = self.disk(256)
        with self.assertRaises(esp.NoRoomForEsp):
            esp.check_room(path, table, MIB_SECTORS * 512)
        number, first, _ = esp.check_room(path, table, MIB_SECTORS * 512,
                                          freed=[2])
        self.assertEqual((3, 20 * MIB_SECTORS), (number, first))

    def test_no_room_for_the_config_drive_itself(self):
        path = self.disk(21)
        with self.assertRaises(partitions.PartitionError) as caught:
            esp.check_room(path, self.image_table(21), 2 * 1024 * 1024)
        self.assertIn("config drive", str(caught.exception))

    def test_a_bigger_entry_array_and_4096_byte_sectors(self):
        path = self.disk(512, entries=256)
        self.assertEqual(512 * MIB_SECTORS - 2 - 64,
                         esp.planned_table(path, self.image_table(20))[
                             "last_lba"])
        path = self.disk(512, sector=4096)
        planned = esp.planned_table(path, self.image_table(20, 4096))
        self.assertEqual(512 * 256 - 2 - 4, planned["last_lba"])

    def test_no_free_entry(self):
        path = self.disk(512, entries=1)
        with self.assertRaises(esp.NoRoomForEsp) as caught:
            esp.check_room(path, self.image_table(20))
        self.assertIn("no free entry", str(caught.exception))

    def test_mbr_and_no_table_are_refused_without_reading(self):
        with self.assertRaises(esp.NoRoomForEsp) as caught:
            esp.check_room("/nonexistent", dict(gpt([]), type="dos"))
        self.assertIn("only in a GPT table", str(caught.exception))
        with self.assertRaises(esp.NoRoomForEsp):
            esp.check_room("/nonexistent", None)

    def test_hostile_headers(self):
        table = self.image_table(20)
        for kwargs in ({"signature": b"NOT GPT!"},
                       {"entries": 0}, {"entry_size": 64},
                       {"entry_size": 130},
                       {"entries": 2 ** 31, "entry_size": 128},
                       {"entries": 2 ** 32 - 1, "entry_size": 2 ** 32 - 8}):
            with self.subTest(**{k: str(v) for k, v in kwargs.items()}):
                with self.assertRaises(partitions.PartitionError):
                    esp.check_room(self.disk(256, **kwargs), table)
        short = self.disk(1)
        with open(short, "r+b") as stream:
            stream.truncate(600)
        with self.assertRaises(partitions.PartitionError):
            esp.read_gpt_header(short, 512)
