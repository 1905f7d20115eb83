"""Erase method selection and tool-output parsing, with tools faked."""

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile

from teeth_agent.disk import blockdev
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import erase
from teeth_agent.hardware import generic
from teeth_agent.hardware import testing
from teeth_agent import processes
from tests import base
from tests.unit.hardware.erase import samples as samples


def _manager(conf):
    manager = generic.GenericHardwareManager(conf)
    manager.name = "generic"
    return manager


class StateDirMixin:
    """A temporary ``[DEFAULT] state_dir`` (ATA passwords are kept there)."""

    def setUp(self):
        super().setUp()
        self.state_dir = tempfile.mkdtemp(prefix="teeth-erase-state-")
        self.addCleanup(shutil.rmtree, self.state_dir, ignore_errors=True)
        self.set_config(state_dir=self.state_dir)

    def store(self):
        return erase.AtaPasswordStore(self.state_dir)

    def stored_files(self):
        directory = os.path.join(self.state_dir, "ata-passwords")
        if not os.path.isdir(directory):
            return []
        return sorted(os.listdir(directory))


class FakeAtaDrive:
    """An ATA drive behind a fake ``hdparm``: it keeps its security state.

    ``accepts_password=False`` behaves like qemu's drive: it rejects the
    security commands while hdparm still exits 0.
    """

    def __init__(self, path, accepts_password=True, erase_works=True,
                 **state):
        self.path = path
        self.accepts_password = accepts_password
        self.erase_works = erase_works
        self.state = dict(enabled=False, locked=False, frozen=False,
                          enhanced=True)
        self.state.update(state)
        self.password = "unknown" if self.state["enabled"] else None
        self.calls = []

    def spawn(self, argv, input_data, timeout, env, binary):
        self.calls.append(list(argv))
        if argv[0] != "hdparm":
            raise AssertionError("unexpected tool %s" % argv)
        if argv[1] == "-I":
            return self._done(argv, samples.hdparm_ssd(**self.state))
        if argv[1:] == ["-V"]:
            return self._done(argv, "hdparm v9.65\n")
        if "--security-set-pass" in argv:
            if self.accepts_password and not self.state["frozen"]:
                self.password = argv[-2]
                self.state["enabled"] = True
        elif "--security-erase" in argv or \
                "--security-erase-enhanced" in argv:
            if self.password == argv[-2] and self.erase_works:
                self.password = None
                self.state["enabled"] = False
        elif "--security-unlock" in argv:
            if self.password == argv[-2]:
                self.state["locked"] = False
        elif "--security-disable" in argv:
            if self.password == argv[-2]:
                self.password = None
                self.state["enabled"] = False
        else:
            raise AssertionError("unexpected hdparm call %s" % argv)
        # hdparm exits 0 whatever the drive did: that is the point.
        return self._done(argv, "")

    def _done(self, argv, stdout):
        return subprocess.CompletedProcess(argv, 0, stdout, "")


class CapabilitiesTest(StateDirMixin, testing.HardwareManagerTestCase,
                       base.TestCase):
    def device(self, name, **kwargs):
        path = self.machine.add_disk(name, size_bytes=1024 ** 3, **kwargs)
        return {"path": path, "name": name, "read_only": False,
                "size_bytes": 1024 ** 3}

    def capabilities(self, device):
        return _manager(self.conf).get_erase_capabilities(device)

    def test_loop_device_only_overwrites_and_says_why(self):
        device = self.device("loop3", transport="loop")
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertEqual("%s is not an NVMe namespace" % device["path"],
                         caps.unsupported["nvme_sanitize_crypto"])
        self.assertEqual("%s is not an ATA device" % device["path"],
                         caps.unsupported["ata_security_erase"])
        self.assertEqual(set(erase.KNOWN_METHODS) - {"overwrite"},
                         set(caps.unsupported))
        self.assertEqual([], self.tools.calls)

    def test_read_only_device_cannot_be_overwritten(self):
        device = self.device("loop4", transport="loop")
        device["read_only"] = True
        caps = self.capabilities(device)
        self.assertEqual([], list(caps))
        self.assertEqual("the device is read-only",
                         caps.unsupported["overwrite"])

    def test_qemu_ata_disk_has_no_security_erase(self):
        device = self.device("sda")
        self.tools.answer(["hdparm", "-I"], stdout=samples.HDPARM_QEMU)
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertEqual("the drive has no ATA security feature set",
                         caps.unsupported["ata_security_erase"])
        self.assertEqual("the drive has no ATA SANITIZE feature set",
                         caps.unsupported["ata_sanitize_crypto"])
        self.assertIn("is an ATA device",
                      caps.unsupported["scsi_sanitize_crypto"])

    def test_ata_ssd_with_enhanced_erase_and_sanitize(self):
        device = self.device("sdb")
        self.tools.answer(["hdparm", "-I"],
                          stdout=samples.hdparm_ssd(sanitize=True))
        caps = self.capabilities(device)
        self.assertEqual(["ata_sanitize_crypto", "ata_sanitize_block",
                          "ata_security_erase_enhanced",
                          "ata_security_erase", "overwrite"], list(caps))
        self.assertEqual("the drive's SANITIZE feature set lacks this "
                         "operation",
                         caps.unsupported["ata_sanitize_overwrite"])

    def test_frozen_drive_has_no_security_erase(self):
        device = self.device("sdb")
        self.tools.answer(["hdparm", "-I"],
                          stdout=samples.hdparm_ssd(frozen=True))
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertIn("frozen", caps.unsupported["ata_security_erase"])
        self.assertIn("frozen",
                      caps.unsupported["ata_security_erase_enhanced"])

    def test_normal_erase_only_when_enhanced_is_unsupported(self):
        device = self.device("sdb")
        self.tools.answer(["hdparm", "-I"],
                          stdout=samples.hdparm_ssd(enhanced=False))
        caps = self.capabilities(device)
        self.assertEqual(["ata_security_erase", "overwrite"], list(caps))
        self.assertEqual("the drive does not support enhanced security "
                         "erase",
                         caps.unsupported["ata_security_erase_enhanced"])

    def test_drive_locked_by_someone_else_is_not_security_erased(self):
        device = self.device("sdb")
        drive = FakeAtaDrive(device["path"], enabled=True, locked=True)
        processes._spawn = drive.spawn
        caps = self.capabilities(device)
        self.assertNotIn("ata_security_erase", caps)
        self.assertEqual("the drive's security is enabled with an unknown "
                         "password", caps.unsupported["ata_security_erase"])
        # The agent stored no password for this drive: it guesses none.
        self.assertFalse(any("--security-unlock" in call
                             or "--security-disable" in call
                             for call in drive.calls))

    def test_drive_left_with_the_agents_password_is_recovered(self):
        device = self.device("sdb")
        drive = FakeAtaDrive(device["path"], enabled=True, locked=True)
        # An agent died mid-erase: the password it set is in state_dir.
        drive.password = self.store().create("ACME0000SSD42",
                                             device["path"])
        processes._spawn = drive.spawn
        caps = self.capabilities(device)
        self.assertIn("ata_security_erase_enhanced", caps)
        self.assertFalse(drive.state["enabled"])
        self.assertFalse(drive.state["locked"])
        self.assertEqual([], self.stored_files())

    def test_scsi_disk_sanitize_from_sg_opcodes(self):
        device = self.device("sdc", transport="sas")
        self.tools.answer(["hdparm", "-I"], stdout=samples.HDPARM_SCSI,
                          returncode=5)
        self.tools.answer(["sg_opcodes"],
                          stdout=samples.SG_OPCODES_UNSUPPORTED)
        self.tools.answer(["sg_opcodes", "--opcode=0x48,3"],
                          stdout=samples.SG_OPCODES_SUPPORTED)
        caps = self.capabilities(device)
        self.assertEqual(["scsi_sanitize_crypto", "overwrite"], list(caps))
        self.assertIn("service action 2",
                      caps.unsupported["scsi_sanitize_block"])
        self.assertEqual("%s is not an ATA device" % device["path"],
                         caps.unsupported["ata_security_erase"])

    def test_missing_tool_is_the_reason(self):
        device = self.device("sda")
        self.tools.missing("hdparm")
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertIn("hdparm is not installed",
                      caps.unsupported["ata_security_erase"])

    def test_nvme_sanitize_and_crypto_format(self):
        device = self.device("nvme0n1", transport="nvme")
        self.tools.answer(["nvme", "id-ctrl"],
                          stdout=samples.nvme_id_ctrl(sanicap=0x3, fna=0x4))
        caps = self.capabilities(device)
        self.assertEqual(["nvme_sanitize_crypto", "nvme_sanitize_block",
                          "nvme_format_crypto", "nvme_format_user",
                          "overwrite"], list(caps))
        self.assertIn("sanicap=0x3",
                      caps.unsupported["nvme_sanitize_overwrite"])

    def test_qemu_nvme_formats_but_does_not_sanitize(self):
        device = self.device("nvme0n1", transport="nvme")
        self.tools.answer(["nvme", "id-ctrl"],
                          stdout=samples.nvme_id_ctrl(sanicap=0, fna=0))
        caps = self.capabilities(device)
        self.assertEqual(["nvme_format_user", "overwrite"], list(caps))
        self.assertIn("fna=0x0", caps.unsupported["nvme_format_crypto"])

    def test_nvme_without_format_nvm(self):
        device = self.device("nvme0n1", transport="nvme")
        self.tools.answer(["nvme", "id-ctrl"],
                          stdout=samples.nvme_id_ctrl(oacs=0x5))
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertIn("Format NVM", caps.unsupported["nvme_format_user"])

    def test_nvme_with_several_namespaces_is_not_sanitized(self):
        device = self.device("nvme0n1", transport="nvme")
        for namespace in ("nvme0n1", "nvme0n2"):
            os.makedirs(self.machine.sys("class", "nvme", "nvme0",
                                         namespace))
        self.tools.answer(["nvme", "id-ctrl"],
                          stdout=samples.nvme_id_ctrl(sanicap=0x7, fna=0x5))
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertIn("2 namespaces",
                      caps.unsupported["nvme_sanitize_crypto"])
        self.assertIn("2 namespaces", caps.unsupported["nvme_format_user"])

    def test_nvme_id_ctrl_failure_is_the_reason(self):
        device = self.device("nvme0n1", transport="nvme")
        self.tools.answer(["nvme", "id-ctrl"], stderr="Invalid argument",
                          returncode=1)
        caps = self.capabilities(device)
        self.assertEqual(["overwrite"], list(caps))
        self.assertIn("probing failed",
                      caps.unsupported["nvme_format_user"])


class ParsersTest(base.TestCase):
    def test_hdparm_security_states(self):
        state = erase.parse_hdparm_identify(samples.hdparm_ssd(
            enabled=True, locked=False, frozen=True, enhanced=False))
        self.assertTrue(state.is_ata)
        self.assertTrue(state.security)
        self.assertTrue(state.enabled)
        self.assertFalse(state.locked)
        self.assertTrue(state.frozen)
        self.assertFalse(state.enhanced)
        self.assertEqual(2, state.erase_minutes)
        self.assertEqual(4, state.enhanced_minutes)

    def test_hdparm_without_security_section(self):
        state = erase.parse_hdparm_identify(samples.HDPARM_QEMU)
        self.assertTrue(state.is_ata)
        self.assertFalse(state.security)
        self.assertFalse(state.sanitize)

    def test_hdparm_of_a_scsi_disk_is_not_ata(self):
        self.assertFalse(erase.parse_hdparm_identify(
            samples.HDPARM_SCSI).is_ata)

    def test_nvme_sanitize_log_shapes(self):
        self.assertEqual((2, 0.5), erase.parse_nvme_sanitize_log(
            json.loads(samples.nvme_sanitize_log(2, 32768))))
        self.assertEqual((1, 0.0), erase.parse_nvme_sanitize_log(
            {"sprog": 0, "sstat": 0x101}))
        self.assertEqual((3, 0.0), erase.parse_nvme_sanitize_log(
            json.loads(samples.nvme_sanitize_log(
                3, 0, nested_status_text=False))))
        with self.assertRaises(ValueError):
            erase.parse_nvme_sanitize_log({"error": "no log"})

    def test_hdparm_sanitize_status(self):
        self.assertEqual(("running", 0.25), erase.parse_hdparm_sanitize_status(
            samples.HDPARM_SANITIZE_RUNNING))
        self.assertEqual("done", erase.parse_hdparm_sanitize_status(
            samples.HDPARM_SANITIZE_DONE)[0])
        self.assertEqual("failed", erase.parse_hdparm_sanitize_status(
            "State: SD3 Sanitize Operation Failed")[0])

    def test_sg_requests_progress(self):
        self.assertEqual(("running", 0.125), erase.parse_sg_requests(
            0, "Progress indication: 12.50% done\n"))
        self.assertEqual("done", erase.parse_sg_requests(0, "")[0])
        self.assertEqual("failed", erase.parse_sg_requests(
            2, "Medium Error: sanitize command failed")[0])

    def test_sg_opcodes(self):
        self.assertTrue(erase.parse_sg_opcodes(samples.SG_OPCODES_SUPPORTED))
        self.assertFalse(erase.parse_sg_opcodes(
            samples.SG_OPCODES_UNSUPPORTED))
        self.assertFalse(erase.parse_sg_opcodes(""))

    def test_every_method_has_a_nist_category(self):
        for method in erase.METHODS.values():
            self.assertIn(method.nist_category, (erase.CLEAR, erase.PURGE))
        self.assertEqual(erase.CLEAR, erase.METHODS["overwrite"].nist_category)
        self.assertEqual(erase.CLEAR,
                         erase.METHODS["nvme_format_user"].nist_category)
        self.assertEqual(erase.PURGE, erase.METHODS[
            "ata_security_erase_enhanced"].nist_category)

    def test_marker_offsets_avoid_the_wiped_edges(self):
        size = 64 * blockdev.MIB
        offsets = erase._marker_offsets(size)
        self.assertEqual(8, len(offsets))
        for offset in offsets:
            self.assertGreaterEqual(offset, blockdev.MIB)
            self.assertLessEqual(offset + 4096, size - blockdev.MIB)
            self.assertEqual(0, offset % 4096)

    def test_edges_merge_on_small_devices(self):
        self.assertEqual([(0, blockdev.MIB), (9 * blockdev.MIB, blockdev.MIB)],
                         blockdev.edges(10 * blockdev.MIB, 512))
        self.assertEqual([(0, 1536 * 1024)],
                         blockdev.edges(1536 * 1024, 512))


class DeviceEraseTest(StateDirMixin, testing.HardwareManagerTestCase,
                      base.TestCase):
    """The device-level erase flows against faked tools."""

    def setUp(self):
        super().setUp()
        self.progress = []
        self.set_config(**{"decom.erase_poll_interval": 0.01})
        self.tools.answer(["nvme", "version"],
                          stdout="nvme version 2.3 (git 2.3)\n"
                                 "libnvme version 1.3 (git 1.3)\n")

    def record(self, done, total):
        self.progress.append((done, total))

    def erase(self, device, method):
        return _manager(self.conf).erase_block_device(device, method,
                                                      self.record)

    def ata_device(self):
        path = self.machine.add_disk("sdb", size_bytes=1024 ** 3)
        return {"path": path, "name": "sdb", "read_only": False}

    def test_ata_enhanced_erase_sets_password_erases_and_checks(self):
        device = self.ata_device()
        drive = FakeAtaDrive(device["path"])
        processes._spawn = drive.spawn
        outcome = self.erase(device, "ata_security_erase_enhanced")
        self.assertEqual("Purge", outcome["nist_category"])
        self.assertFalse(drive.state["enabled"])
        commands = [call[3] for call in drive.calls if len(call) > 3
                    and call[1] == "--user-master"]
        self.assertEqual(["--security-set-pass",
                          "--security-erase-enhanced"], commands)
        self.assertEqual(("hdparm", "9.65"),
                         (outcome["tool"], outcome["tool_version"]))

    def test_qemu_drive_rejects_password_while_hdparm_exits_0(self):
        device = self.ata_device()
        drive = FakeAtaDrive(device["path"], accepts_password=False)
        processes._spawn = drive.spawn
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase(device, "ata_security_erase")
        self.assertIn("did not accept the security password",
                      str(caught.exception))
        self.assertFalse(any("--security-erase" in call
                             for call in drive.calls))

    def test_failed_erase_never_leaves_the_password(self):
        device = self.ata_device()
        drive = FakeAtaDrive(device["path"], erase_works=False)
        processes._spawn = drive.spawn
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase(device, "ata_security_erase")
        self.assertIn("still has security enabled", str(caught.exception))
        self.assertFalse(drive.state["enabled"])
        self.assertIsNone(drive.password)
        self.assertTrue(any("--security-disable" in call
                            for call in drive.calls))

    def test_frozen_drive_fails_with_a_clear_error(self):
        device = self.ata_device()
        drive = FakeAtaDrive(device["path"], frozen=True)
        processes._spawn = drive.spawn
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase(device, "ata_security_erase")
        self.assertIn("frozen", str(caught.exception))
        self.assertFalse(any("--security-set-pass" in call
                             for call in drive.calls))

    def test_nvme_sanitize_polls_the_log_until_done(self):
        path = self.machine.add_disk("nvme0n1", size_bytes=1024 ** 3,
                                     transport="nvme")
        device = {"path": path, "name": "nvme0n1", "read_only": False,
                  "size_bytes": 1024 ** 3}
        logs = [samples.nvme_sanitize_log(2, 16384),
                samples.nvme_sanitize_log(2, 49152),
                samples.nvme_sanitize_log(1, 65535)]
        calls = []

        def spawn(argv, input_data, timeout, env, binary):
            calls.append(argv)
            stdout = logs.pop(0) if argv[1] == "sanitize-log" else ""
            return subprocess.CompletedProcess(argv, 0, stdout, "")

        processes._spawn = spawn
        outcome = self.erase(device, "nvme_sanitize_crypto")
        self.assertEqual(["nvme", "sanitize", path, "--sanact=4"], calls[0])
        self.assertEqual("Purge", outcome["nist_category"])
        fractions = [done / total for done, total in self.progress if total]
        self.assertEqual([0.25, 0.75, 1.0],
                         [round(f, 2) for f in fractions])

    def test_nvme_sanitize_failure_is_an_error(self):
        path = self.machine.add_disk("nvme0n1", size_bytes=1024 ** 3,
                                     transport="nvme")
        device = {"path": path, "name": "nvme0n1", "read_only": False}
        self.tools.answer(["nvme", "sanitize"])
        self.tools.answer(["nvme", "sanitize-log"],
                          stdout=samples.nvme_sanitize_log(3, 0))
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase(device, "nvme_sanitize_block")
        self.assertIn("reports the sanitize failed", str(caught.exception))

    def test_nvme_format_uses_the_current_lba_format(self):
        path = self.machine.add_disk("nvme0n1", size_bytes=1024 ** 3,
                                     transport="nvme")
        device = {"path": path, "name": "nvme0n1", "read_only": False}
        self.tools.answer(["nvme", "id-ns"], stdout=samples.NVME_ID_NS)
        self.tools.answer(["nvme", "format"])
        outcome = self.erase(device, "nvme_format_crypto")
        format_call = [c for c in self.tools.calls if c[1] == "format"][0]
        self.assertIn("--ses=2", format_call)
        self.assertIn("--lbaf=1", format_call)
        self.assertEqual({"ses": 2, "lbaf": 1}, outcome["details"])
        self.assertEqual(("nvme-cli", "2.3"),
                         (outcome["tool"], outcome["tool_version"]))

    def test_scsi_sanitize_polls_request_sense(self):
        path = self.machine.add_disk("sdc", size_bytes=1024 ** 3,
                                     transport="sas")
        device = {"path": path, "name": "sdc", "read_only": False}
        answers = ["Progress indication: 50.00% done\n", ""]

        def spawn(argv, input_data, timeout, env, binary):
            stdout = answers.pop(0) if argv[0] == "sg_requests" else ""
            return subprocess.CompletedProcess(argv, 0, stdout, "")

        processes._spawn = spawn
        outcome = self.erase(device, "scsi_sanitize_crypto")
        self.assertEqual("scsi_sanitize_crypto", outcome["method"])
        self.assertEqual([], answers)

    def test_ata_sanitize_polls_the_drive_status(self):
        device = self.ata_device()
        device["size_bytes"] = 1024 ** 3
        statuses = [samples.HDPARM_SANITIZE_RUNNING,
                    samples.HDPARM_SANITIZE_DONE]
        calls = []

        def spawn(argv, input_data, timeout, env, binary):
            calls.append(argv)
            stdout = statuses.pop(0) if "--sanitize-status" in argv else ""
            return subprocess.CompletedProcess(argv, 0, stdout, "")

        processes._spawn = spawn
        outcome = self.erase(device, "ata_sanitize_overwrite")
        self.assertEqual(["hdparm", "--yes-i-know-what-i-am-doing",
                          "--sanitize-overwrite-passes", "1",
                          "--sanitize-overwrite", "0", device["path"]],
                         calls[0])
        self.assertEqual("Purge", outcome["nist_category"])
        self.assertEqual([(256 * 1024 ** 2, 1024 ** 3),
                          (1024 ** 3, 1024 ** 3)], self.progress)

    def test_frozen_sanitize_is_an_error(self):
        device = self.ata_device()
        self.tools.answer(["hdparm", "--yes-i-know-what-i-am-doing"])
        self.tools.answer(["hdparm", "--sanitize-status"],
                          stdout="State:    SD1 Sanitize Frozen\n")
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase(device, "ata_sanitize_crypto")
        self.assertIn("sanitize is frozen", str(caught.exception))

    def test_unknown_method_is_declined(self):
        device = self.ata_device()
        with self.assertRaises(hw_base.IncompatibleHardwareMethodError):
            erase.erase_device(_manager(self.conf), device, "shred",
                               self.record)


class AtaPasswordTest(StateDirMixin, testing.HardwareManagerTestCase,
                      base.TestCase):
    """The ATA security password: random per drive, stored 0600 in
    ``state_dir`` while the erase runs, removed when it ends."""

    SERIAL = "ACME0000SSD42"  # what samples.hdparm_ssd reports

    def setUp(self):
        super().setUp()
        path = self.machine.add_disk("sdb", size_bytes=1024 ** 3)
        self.device = {"path": path, "name": "sdb", "read_only": False}

    def drive(self, **kwargs):
        drive = FakeAtaDrive(self.device["path"], **kwargs)
        processes._spawn = drive.spawn
        return drive

    def erase(self, method="ata_security_erase"):
        return _manager(self.conf).erase_block_device(
            self.device, method, lambda done, total: None)

    def passwords_set(self, drive):
        return [call[4] for call in drive.calls
                if "--security-set-pass" in call]

    def test_each_erase_sets_a_new_random_password(self):
        drive = self.drive()
        self.erase()
        self.erase("ata_security_erase_enhanced")
        first, second = self.passwords_set(drive)
        self.assertNotEqual(first, second)
        for password in (first, second):
            self.assertNotEqual("teeth", password)
            self.assertRegex(password, r"^[0-9a-f]{24}$")
        # Every later command used the password of its own erase.
        erases = [call[4] for call in drive.calls
                  if "--security-erase" in call
                  or "--security-erase-enhanced" in call]
        self.assertEqual([first, second], erases)

    def test_password_is_stored_0600_while_the_erase_runs(self):
        drive = self.drive()
        seen = []
        spawn = drive.spawn

        def spawn_and_look(argv, *args):
            if "--security-erase" in argv:
                [name] = self.stored_files()
                directory = os.path.join(self.state_dir, "ata-passwords")
                path = os.path.join(directory, name)
                seen.append((stat.S_IMODE(os.stat(directory).st_mode),
                             stat.S_IMODE(os.stat(path).st_mode),
                             self.store().lookup(self.SERIAL, "/dev/other"),
                             drive.password))
            return spawn(argv, *args)

        processes._spawn = spawn_and_look
        self.erase()
        [(dir_mode, file_mode, stored, on_drive)] = seen
        self.assertEqual(0o700, dir_mode)
        self.assertEqual(0o600, file_mode)
        # Found by the drive's serial, whatever its path is after a reboot.
        self.assertEqual(on_drive, stored)
        self.assertEqual([], self.stored_files())

    def test_password_is_removed_after_a_failed_erase(self):
        drive = self.drive(erase_works=False)
        with self.assertRaises(hw_base.HardwareManagerError):
            self.erase()
        self.assertFalse(drive.state["enabled"])
        self.assertEqual([], self.stored_files())

    def test_password_stays_stored_while_the_drive_keeps_it(self):
        drive = self.drive(erase_works=False)
        original = drive.spawn

        def no_disable(argv, *args):
            if "--security-disable" in argv:
                return subprocess.CompletedProcess(argv, 0, "", "")
            return original(argv, *args)

        processes._spawn = no_disable
        with self.assertRaises(hw_base.HardwareManagerError):
            self.erase()
        self.assertTrue(drive.state["enabled"])
        self.assertEqual(drive.password,
                         self.store().lookup(self.SERIAL,
                                             self.device["path"]))
        # The agent's next run unlocks the drive with it and forgets it.
        processes._spawn = original
        caps = _manager(self.conf).get_erase_capabilities(self.device)
        self.assertIn("ata_security_erase", caps)
        self.assertFalse(drive.state["enabled"])
        self.assertEqual([], self.stored_files())

    def test_password_never_reaches_logs_or_errors(self):
        drive = self.drive()
        original = drive.spawn

        def timing_out(argv, *args):
            if "--security-erase" in argv:
                original(argv, *args)
                raise subprocess.TimeoutExpired(argv, 1)
            return original(argv, *args)

        processes._spawn = timing_out
        with self.assertLogs("teeth_agent", level=logging.DEBUG) as logs:
            with self.assertRaises(hw_base.HardwareManagerError) as caught:
                self.erase()
        [password] = self.passwords_set(drive)
        self.assertIn("timed out", str(caught.exception))
        self.assertNotIn(password, str(caught.exception))
        self.assertIn("<hidden>", str(caught.exception))
        self.assertFalse([line for line in logs.output if password in line])

    def test_no_state_dir_means_no_security_erase(self):
        self.set_config(state_dir="")
        drive = self.drive()
        caps = _manager(self.conf).get_erase_capabilities(self.device)
        self.assertNotIn("ata_security_erase", caps)
        self.assertIn("state_dir is empty",
                      caps.unsupported["ata_security_erase_enhanced"])
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.erase()
        self.assertIn("needs [DEFAULT] state_dir", str(caught.exception))
        self.assertEqual([], self.passwords_set(drive))

    def test_store_files_are_named_by_digest(self):
        store = self.store()
        store.create("../../etc/passwd", "/dev/sdb")
        [name] = self.stored_files()
        self.assertRegex(name, r"^drive-[0-9a-f]{40}\.json$")
        store.remove("../../etc/passwd", "/dev/sdb")
        self.assertEqual([], self.stored_files())


class OverwriteTest(base.TestCase):
    """The overwrite, marker and verify paths on a regular file."""

    def setUp(self):
        super().setUp()
        directory = tempfile.mkdtemp(prefix="teeth-erase-unit-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.path = os.path.join(directory, "disk.img")
        with open(self.path, "wb") as stream:
            stream.write(os.urandom(5 * blockdev.MIB + 4096))
        try:
            os.close(os.open(self.path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("the temporary directory does not support "
                          "O_DIRECT")

    def test_overwrite_zeroes_everything_and_reports_progress(self):
        progress = []
        written = erase.overwrite(self.path, lambda d, t: progress.append(
            (d, t)), block_size=2 * blockdev.MIB)
        self.assertEqual(5 * blockdev.MIB + 4096, written)
        with open(self.path, "rb") as stream:
            data = stream.read()
        self.assertEqual(len(data), data.count(0))
        self.assertEqual((written, written), progress[-1])
        self.assertEqual(sorted(progress), progress)

    def test_verify_finds_a_nonzero_block_after_overwrite(self):
        erase.overwrite(self.path, lambda d, t: None)
        markers = [(2 * blockdev.MIB, os.urandom(4096))]
        self.assertTrue(erase.verify_erased(self.path, "overwrite", markers,
                                            samples=8)["verified"])
        with open(self.path, "r+b") as stream:
            stream.seek(2 * blockdev.MIB)
            stream.write(b"\x01")
        result = erase.verify_erased(self.path, "overwrite", markers,
                                     samples=0)
        self.assertFalse(result["verified"])
        self.assertEqual(["block at %d is not zero" % (2 * blockdev.MIB)],
                         result["problems"])

    def test_surviving_marker_fails_a_device_level_erase(self):
        markers = erase.write_markers(self.path)
        self.assertTrue(markers)
        erase.overwrite(self.path, lambda d, t: None)
        offset, data = markers[0]
        with open(self.path, "r+b") as stream:
            stream.seek(offset)
            stream.write(data)
        result = erase.verify_erased(self.path, "nvme_format_crypto",
                                     markers)
        self.assertFalse(result["verified"])
        self.assertIn("the marker at offset %d survived the erase" % offset,
                      result["problems"])

    def test_nonzero_edges_fail_verification(self):
        erase.overwrite(self.path, lambda d, t: None)
        with open(self.path, "r+b") as stream:
            stream.seek(-100, os.SEEK_END)
            stream.write(b"EFI PART")
        result = erase.verify_erased(self.path, "nvme_format_user", [])
        self.assertFalse(result["verified"])
        self.assertIn("not zero", result["problems"][0])


class PollTest(base.TestCase):
    """The polling loop shared by the device-level erase methods."""

    def poll(self, states, **kwargs):
        now = [0.0]
        reported = []
        answers = iter(states)

        def sleep(seconds):
            now[0] += seconds

        return erase._poll(lambda: next(answers), "/dev/x", "m", 100,
                           lambda done, total: reported.append(done), 60,
                           sleep, clock=lambda: now[0], **kwargs), reported

    def test_done_after_progress(self):
        result, reported = self.poll([("waiting", None), ("running", 0.5),
                                      ("running", 0.9), ("done", None)])
        self.assertEqual({}, result)
        self.assertEqual([50, 90], reported)

    def test_failure_is_raised(self):
        with self.assertRaises(erase.EraseError) as caught:
            self.poll([("running", 0.1), ("failed", "media error")])
        self.assertIn("media error", str(caught.exception))

    def test_never_started(self):
        with self.assertRaises(erase.EraseError) as caught:
            self.poll([("waiting", None)] * 5, max_waiting=3)
        self.assertIn("never reported", str(caught.exception))

    def test_stuck_progress_fails_instead_of_waiting_forever(self):
        with self.assertRaises(erase.EraseError) as caught:
            self.poll([("running", 0.3)] * 100, stall_timeout=600)
        self.assertIn("no progress for 600s", str(caught.exception))

    def test_slow_but_moving_progress_is_fine(self):
        states = [("running", step / 1000.0) for step in range(200)]
        result, reported = self.poll(states + [("done", None)],
                                     stall_timeout=120)
        self.assertEqual({}, result)
