"""The identity and tool-version parts of the erase evidence."""

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


class FirmwareTest(testing.HardwareManagerTestCase, base.TestCase):
    def manager(self):
        class Manager:
            conf = self.conf
        return Manager()

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
