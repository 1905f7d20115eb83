"""The VM test's reader of OVMF variable store files (tests/vm/uefi.py).

tests/vm/test_uefi.py compares the firmware's boot entries before and after
the agent acted by reading the store file; here, on stores made byte by
byte: deleted and superseded copies are not read, the in-transition copy
only when no newer one exists, the HD() node's GUID is read in the
firmware's byte order.
"""

import os
import struct
import tempfile
import unittest
import uuid

from tests.vm import uefi

AUTH_GUID = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
OTHER_GUID = uuid.UUID("4e5a3ae6-1bc2-4f0e-9b2e-7b0e8f0c3a11")
PARTITION = uuid.UUID("e32640bc-70a8-4bf3-afd7-e9133d6720d8")
ADDED, DELETED, IN_TRANSITION = 0x3F, 0x3D, 0x3E


def record(name, value, state=ADDED, guid=uefi.EFI_GLOBAL, attributes=7):
    encoded = (name + "\0").encode("utf-16-le")
    header = struct.pack("<HBBIQ16sIII16s", 0x55AA, state, 0, attributes,
                         0, b"\0" * 16, 0, len(encoded), len(value),
                         guid.bytes_le)
    data = header + encoded + value
    return data + b"\xff" * (-len(data) % 4)


def store(*records, size=4096):
    volume = bytearray(b"\0" * 0x28 + b"_FVH" + b"\0" * 4 +
                       struct.pack("<H", 72) + b"\0" * (72 - 0x32))
    body = b"".join(records)
    volume += AUTH_GUID.bytes_le + struct.pack("<IBB", size, 0x5A, 0xFE)
    volume += b"\0" * 6 + body
    return bytes(volume) + b"\xff" * (72 + size - len(volume))


def hd_node(number, partition):
    return struct.pack("<BBHIQQ16sBB", 4, 1, 42, number, 2048, 65536,
                       partition.bytes_le, 2, 2)


def file_node(path):
    encoded = (path + "\0").encode("utf-16-le")
    return struct.pack("<BBH", 4, 4, 4 + len(encoded)) + encoded


END = struct.pack("<BBH", 0x7F, 0xFF, 4)


def load_option(label, path, attributes=1, optional=b""):
    return struct.pack("<IH", attributes, len(path)) + \
        (label + "\0").encode("utf-16-le") + path + optional


class BootVariablesTest(unittest.TestCase):
    def read(self, data):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "OVMF_VARS.fd")
            with open(path, "wb") as stream:
                stream.write(data)
            return uefi.boot_variables(path)

    def test_disk_entry_and_firmware_entry(self):
        disk = hd_node(1, PARTITION) + file_node(
            "\\EFI\\teethtest\\shimx64.efi") + END
        # FvVol()/FvFile() nodes: no partition.
        shell = struct.pack("<BBH", 4, 7, 20) + b"\x11" * 16 + \
            struct.pack("<BBH", 4, 6, 20) + b"\x22" * 16 + END
        found = self.read(store(
            record("Boot0008", load_option("Teeth UEFI Test 1", disk)),
            record("Boot0007", load_option("EFI Internal Shell", shell,
                                           optional=b"\x01\x02")),
            record("BootOrder", struct.pack("<2H", 8, 7)),
            record("BootNext", struct.pack("<H", 0x1A))))
        self.assertEqual(found["boot_order"], ["0008", "0007"])
        self.assertEqual(found["boot_next"], "001A")
        entry = found["options"]["0008"]
        self.assertEqual(entry["label"], "Teeth UEFI Test 1")
        self.assertEqual(entry["partition_uuid"], str(PARTITION))
        self.assertEqual(entry["file"], "\\EFI\\teethtest\\shimx64.efi")
        self.assertEqual(entry["attributes"], 1)
        shell_entry = found["options"]["0007"]
        self.assertIsNone(shell_entry["partition_uuid"])
        self.assertIsNone(shell_entry["file"])
        self.assertTrue(shell_entry["bytes"].endswith("0102"))

    def test_deleted_and_superseded_copies_are_not_read(self):
        found = self.read(store(
            record("BootOrder", struct.pack("<H", 1), state=DELETED),
            record("Boot0001", load_option("gone", END), state=DELETED),
            record("BootOrder", struct.pack("<H", 2), state=IN_TRANSITION),
            record("BootOrder", struct.pack("<2H", 3, 2)),
            record("Boot0002", load_option("old", END),
                   state=IN_TRANSITION)))
        self.assertEqual(found["boot_order"], ["0003", "0002"])
        # The in-transition copy is the only one of Boot0002: it counts.
        self.assertEqual(sorted(found["options"]), ["0002"])
        self.assertIsNone(found["boot_next"])

    def test_other_vendors_and_names_are_not_boot_entries(self):
        found = self.read(store(
            record("Boot0001", load_option("not global", END),
                   guid=OTHER_GUID),
            record("BootXYZW", load_option("not a number", END)),
            record("Boot00011", load_option("too long", END)),
            record("BootOrder", struct.pack("<H", 5))))
        self.assertEqual(found["options"], {})
        self.assertEqual(found["boot_order"], ["0005"])

    def test_stops_at_the_end_of_the_records(self):
        # Erased flash (0xFF) after the last record: nothing more is read,
        # even where bytes further on look like a record.
        data = bytearray(store(record("BootOrder", struct.pack("<H", 1))))
        stray = record("Boot0009", load_option("stray", END))
        data[2000:2000 + len(stray)] = stray
        found = self.read(bytes(data))
        self.assertEqual(found["options"], {})

    def test_refuses_what_is_not_a_firmware_volume(self):
        with self.assertRaises(ValueError):
            self.read(b"\0" * 4096)


if __name__ == "__main__":
    unittest.main()
