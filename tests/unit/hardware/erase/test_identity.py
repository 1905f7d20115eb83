"""The identity and tool-version parts of the erase evidence."""

import os

from teeth_agent.hardware.erase import identity
from teeth_agent.hardware import testing
from tests import base


class ToolVersionTest(testing.HardwareManagerTestCase, base.TestCase):
    def test_parsers(self):
        for tool, text, version in (
                ("nvme-cli", "nvme version 2.3 (git 2.3)\nlibnvme version "
                 "1.3 (git 1.3)\n", "2.3"),
                ("nvme-cli", "nvme version 1.16\n", "1.16"),
                ("hdparm", "hdparm v9.65\n", "9.65"),
                ("sg3_utils sg_sanitize",
                 "sg_sanitize: version: 1.15 20201223\n", "1.15 20201223"),
                ("hdparm", "", None), ("nvme-cli", "garbage", None)):
            with self.subTest(tool=tool, text=text):
                self.assertEqual(version,
                                 identity.parse_tool_version(tool, text))

    def test_tool_of_each_family(self):
        self.assertEqual("nvme-cli", identity.tool_of("nvme_format_user"))
        self.assertEqual("hdparm", identity.tool_of("ata_sanitize_block"))
        self.assertEqual("sg3_utils sg_sanitize",
                         identity.tool_of("scsi_sanitize_crypto"))
        self.assertEqual("teeth-agent", identity.tool_of("overwrite"))
        self.assertIsNone(identity.tool_of("shred"))

    def test_version_from_the_tool_or_none(self):
        self.tools.answer(["sg_sanitize", "--version"],
                          stderr="sg_sanitize: version: 1.15 20201223\n")
        self.assertEqual("1.15 20201223",
                         identity.tool_version("sg3_utils sg_sanitize"))
        self.tools.missing("hdparm")
        self.assertIsNone(identity.tool_version("hdparm"))
        self.assertIsNone(identity.tool_version("vendor-tool"))
        self.assertEqual(identity.agent_version(),
                         identity.tool_version("teeth-agent"))


def ata_identify(serial, firmware, model="Samsung SSD 860 EVO 500GB"):
    """An ATA IDENTIFY DEVICE block as libata prints it in sysfs
    (``ata_device/devX.Y/id``): four hex digits a word, eight a line."""
    words = [0] * 256

    def put(first, count, text):
        raw = text.ljust(2 * count).encode("ascii")
        for index in range(count):
            words[first + index] = raw[2 * index] << 8 | raw[2 * index + 1]

    put(10, 10, serial.rjust(20))
    put(23, 4, firmware)
    put(27, 20, model)
    return "".join("%04x%s" % (word, " " if (index + 1) % 8 else "\n")
                   for index, word in enumerate(words))


def add_ata_identify(machine, disk, text, device="dev1.0", link="link1"):
    """Give the libata port of ``disk`` a device with IDENTIFY ``text``."""
    port = os.path.realpath(machine.sys("class", "block", disk, "device"))
    for _ in range(3):  # 0:0:0:0 < target0:0:0 < host0 < ataN
        port = os.path.dirname(port)
    directory = os.path.join(port, link, device, "ata_device", device)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "id"), "w") as stream:
        stream.write(text)


class FirmwareTest(testing.HardwareManagerTestCase, base.TestCase):
    def manager(self):
        class Manager:
            conf = self.conf
        return Manager()

    def sata(self, name="sda", rev="4B6Q"):
        self.machine.add_disk(name, 1 << 30, transport="sata")
        with open(self.machine.sys("class", "block", name, "device", "rev"),
                  "w") as stream:
            stream.write(rev + "\n")
        return {"path": "/dev/%s" % name, "name": name,
                "serial": "S3Z9NB0K123456"}

    def test_a_libata_disk_gets_all_8_characters_from_identify(self):
        # libata's INQUIRY revision (sysfs rev) is the last 4 of them.
        device = self.sata()
        add_ata_identify(self.machine, "sda",
                         ata_identify("S3Z9NB0K123456", "RVT04B6Q"))
        self.assertEqual("RVT04B6Q", identity.firmware_revision(
            self.manager(), device))
        self.assertEqual("RVT04B6Q", identity.firmware_revision(
            self.manager(), dict(device, serial=None)))

    def test_the_device_of_a_port_multiplier_is_chosen_by_serial(self):
        device = self.sata()
        add_ata_identify(self.machine, "sda", ata_identify("OTHER0001",
                                                           "XXXXXXXX"),
                         device="dev1.0.0", link="link1.0")
        add_ata_identify(self.machine, "sda", ata_identify("S3Z9NB0K123456",
                                                           "RVT04B6Q"),
                         device="dev1.1.0", link="link1.1")
        self.assertEqual("RVT04B6Q", identity.firmware_revision(
            self.manager(), device))
        # udev's serial has "_" for inner spaces.
        add_ata_identify(self.machine, "sda", ata_identify("WD WX12", "01.0"),
                         device="dev1.2.0", link="link1.2")
        self.assertEqual("01.0", identity.firmware_revision(
            self.manager(), dict(device, serial="WD_WX12")))
        # Several devices and nothing to tell them apart: sysfs rev.
        self.assertEqual("4B6Q", identity.firmware_revision(
            self.manager(), dict(device, serial=None)))

    def test_identify_that_cannot_be_trusted_falls_back_to_rev(self):
        device = self.sata()
        good = ata_identify("S3Z9NB0K123456", "RVT04B6Q")
        for text in (ata_identify("ANOTHER", "RVT04B6Q"),
                     good.replace("\n", " ", 1).rsplit(" ", 2)[0],
                     "zzzz " * 256, "", "x" * 9000,
                     ata_identify("S3Z9NB0K123456", "RV\x01T04B6"),
                     ata_identify("S3Z9NB0K123456", "        ")):
            with self.subTest(text=text[:60]):
                add_ata_identify(self.machine, "sda", text)
                self.assertEqual("4B6Q", identity.firmware_revision(
                    self.manager(), device))

    def test_parse_ata_identify(self):
        words = identity.parse_ata_identify(ata_identify("S1", "FW01"))
        self.assertEqual(256, len(words))
        self.assertEqual("S1", identity.ata_string(
            words, identity.ATA_SERIAL_WORDS))
        self.assertEqual("FW01", identity.ata_string(
            words, identity.ATA_FIRMWARE_WORDS))
        self.assertIsNone(identity.parse_ata_identify("0000 " * 255))
        self.assertIsNone(identity.parse_ata_identify(None))

    def test_nvme_controller_and_scsi_revisions(self):
        self.machine.add_disk("nvme0n1", 1 << 30, transport="nvme",
                              serial="S1")
        self.machine.add_disk("sda", 1 << 30, transport="sata")
        with open(self.machine.sys("class", "block", "nvme0n1", "device",
                                   "firmware_rev"), "w") as stream:
            stream.write("EDA7602Q  \n")
        with open(self.machine.sys("class", "block", "sda", "device", "rev"),
                  "w") as stream:
            stream.write("4B6Q\n")
        found = identity.device_identity(
            self.manager(), {"path": "/dev/nvme0n1", "name": "nvme0n1",
                             "serial": "S1", "model": "M", "wwn": None,
                             "size_bytes": 1 << 30,
                             "logical_sector_size": 4096})
        self.assertEqual({"serial": "S1", "model": "M", "wwn": None,
                          "firmware": "EDA7602Q", "size_bytes": 1 << 30,
                          "logical_sector_size": 4096}, found)
        self.assertEqual("4B6Q", identity.firmware_revision(
            self.manager(), {"path": "/dev/sda", "name": "sda"}))

    def test_unknown_firmware_is_none(self):
        self.machine.add_disk("loop0", 1 << 20, transport="loop")
        self.assertIsNone(identity.firmware_revision(
            self.manager(), {"path": "/dev/loop0", "name": "loop0"}))


class NistTableDocTest(base.TestCase):
    """docs/decom.md maps every method to its category, as the catalogue
    does."""

    def test_the_table_matches_the_catalogue(self):
        import os
        import re

        from teeth_agent.hardware import erase
        path = os.path.join(os.path.dirname(__file__), "..", "..", "..",
                            "..", "docs", "decom.md")
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        table = text.split("#### Methods and their NIST SP 800-88 Rev. 2 / "
                           "IEEE 2883 category", 1)[1].split("\n\n")[1]
        found = {}
        for line in table.splitlines()[2:]:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for name in re.findall(r"`(\w+)`", cells[1]):
                self.assertNotIn(name, found)
                found[name] = cells[2]
        self.assertEqual({name: method.nist_category
                          for name, method in erase.METHODS.items()}, found)
