"""Where a new EFI system partition goes, and when there is no room."""

from teeth_agent.disk import esp
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
