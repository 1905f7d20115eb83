"""decom.firmware_secure (the verified firmware download itself is tested in
tests/unit/extensions/decom/test_firmware.py)."""

import hashlib
import os
import shutil
import tempfile

from teeth_agent.extensions.decom import firmware
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import testing
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.functional import standbye_http
from tests.unit.extensions.decom import runner


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class FlashableManager(hw_base.HardwareManager):
    """Firmware and BIOS settings kept in memory; images must start with
    b"FW" + version."""

    def __init__(self, conf, versions=None, settings=None,
                 secure_boot=None, broken=()):
        super().__init__(conf)
        self.versions = dict(versions or {})
        self.settings = settings
        self.secure_boot = secure_boot
        self.broken = set(broken)
        self.flashed = []

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def get_firmware_versions(self):
        return dict(self.versions)

    def update_firmware(self, component, image_path, version):
        if component not in self.versions:
            raise hw_base.IncompatibleHardwareMethodError()
        with open(image_path, "rb") as stream:
            image = stream.read()
        if image != b"FW" + version.encode():
            raise hw_base.HardwareManagerError("bad image for %s"
                                               % component)
        self.flashed.append(component)
        if component not in self.broken:
            self.versions[component] = version
        return {"flashed": component}

    def get_bios_settings(self):
        if self.settings is None:
            raise hw_base.IncompatibleHardwareMethodError()
        return dict(self.settings)

    def apply_bios_settings(self, settings):
        if self.settings is None:
            raise hw_base.IncompatibleHardwareMethodError()
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise hw_base.HardwareManagerError("unknown BIOS setting(s): %s"
                                               % ", ".join(unknown))
        self.settings.update({k: ("Enabled" if v else "Disabled")
                              if isinstance(v, bool) else str(v)
                              for k, v in settings.items()})
        return settings

    def get_secure_boot_state(self):
        if self.secure_boot is None:
            raise hw_base.IncompatibleHardwareMethodError()
        return self.secure_boot


class GenericVersions(hw_base.HardwareManager):
    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.GENERIC

    def get_firmware_versions(self):
        return {"bios": "1.0", "bmc": "generic-view"}


class FirmwareSecureTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(**{
            "decom.firmware_download_attempts": 2})
        self.vendor = FlashableManager(
            self.conf, versions={"bios": "1.0", "bmc": "2.0"},
            settings={"Virtualization": "Disabled", "BootMode": "UEFI"},
            secure_boot={"supported": True, "enabled": True,
                         "setup_mode": False})
        self.vendor.name = "vendor"
        generic = GenericVersions(self.conf)
        generic.name = "generic"
        self.dispatcher = hardware.Dispatcher([
            (hw_base.HardwareSupport.GENERIC, generic),
            (hw_base.HardwareSupport.SERVICE_PROVIDER, self.vendor)])
        self.images = {"/bios-1.1.bin": b"FW1.1", "/bmc-3.0.bin": b"FW3.0"}

    def run(self, result=None):
        with testing.FileServer(getattr(self, "images", {})) as server:
            self.server = server
            return super().run(result)

    def item(self, component, version, path, data=None):
        data = self.images[path] if data is None else data
        self.server.files[path] = self.images.get(path, data)
        return {"component": component, "version": version,
                "url": self.server.url(path), "hashes": {"sha256":
                                                         sha256(data)}}

    def run_secure(self, params):
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        return runner.run_command(extension, registry, "firmware_secure",
                                  params)

    def test_updates_skips_and_reports(self):
        task = self.run_secure({
            "firmware": [self.item("bios", "1.1", "/bios-1.1.bin"),
                         self.item("bmc", "2.0", "/bmc-3.0.bin")],
            "bios_settings": {"Virtualization": True, "BootMode": "UEFI"}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        bios, bmc = task.result["firmware"]
        self.assertEqual({"component": "bios", "before": "1.0",
                          "target": "1.1", "after": "1.1",
                          "action": "updated",
                          "details": {"flashed": "bios"}}, bios)
        self.assertEqual("skipped", bmc["action"])
        self.assertEqual(["bios"], self.vendor.flashed)
        self.assertNotIn("/bmc-3.0.bin", self.server.requests)
        settings = task.result["bios_settings"]
        self.assertEqual({"before": "Disabled", "requested": True,
                          "after": "Enabled", "changed": True,
                          "pending": False}, settings["Virtualization"])
        self.assertFalse(settings["BootMode"]["changed"])
        self.assertEqual({"supported": True, "enabled": True,
                          "setup_mode": False}, task.result["secure_boot"])

    def test_vendor_version_wins_the_merge(self):
        task = self.run_secure({"firmware": [
            self.item("bmc", "3.0", "/bmc-3.0.bin")]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("2.0", task.result["firmware"][0]["before"])

    def test_bad_checksum_flashes_nothing(self):
        good = self.item("bmc", "3.0", "/bmc-3.0.bin")
        bad = self.item("bios", "1.1", "/bios-1.1.bin")
        bad["hashes"] = {"sha256": sha256(b"something else")}
        task = self.run_secure({"firmware": [good, bad]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("component bios", task.msg)
        self.assertIn("sha256 checksum mismatch", task.msg)
        self.assertEqual([], self.vendor.flashed)
        actions = {e["component"]: e["action"]
                   for e in task.details["firmware"]}
        self.assertEqual({"bmc": "not_attempted", "bios": "failed"}, actions)
        self.assertEqual(["/bmc-3.0.bin", "/bios-1.1.bin"],
                         self.server.requests)

    def test_component_no_manager_knows_is_named(self):
        task = self.run_secure({"firmware": [
            self.item("bios", "1.1", "/bios-1.1.bin"),
            self.item("nic0", "9.9", "/nic.bin", data=b"FW9.9")]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("no hardware manager can update component nic0",
                      task.msg)
        self.assertEqual([], self.vendor.flashed)
        self.assertEqual([], self.server.requests)

    def test_version_that_does_not_change_fails(self):
        self.vendor.broken.add("bios")
        task = self.run_secure({"firmware": [
            self.item("bios", "1.1", "/bios-1.1.bin")]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("component bios reports version 1.0 after the update, "
                      "expected 1.1", task.msg)

    def test_client_error_is_not_retried_server_error_is(self):
        self.server.status["/bios-1.1.bin"] = 404
        task = self.run_secure({"firmware": [
            self.item("bios", "1.1", "/bios-1.1.bin")]})
        self.assertIn("HTTP 404", task.msg)
        self.assertEqual(1, self.server.requests.count("/bios-1.1.bin"))
        self.server.status["/bmc-3.0.bin"] = 503
        original = firmware.time.sleep
        firmware.time.sleep = lambda seconds: None
        self.addCleanup(setattr, firmware.time, "sleep", original)
        task = self.run_secure({"firmware": [
            self.item("bmc", "3.0", "/bmc-3.0.bin")]})
        self.assertIn("HTTP 503", task.msg)
        self.assertEqual(2, self.server.requests.count("/bmc-3.0.bin"))

    def test_unknown_bios_setting_reported(self):
        task = self.run_secure({"firmware": [],
                                "bios_settings": {"Turbo": "Enabled"}})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("applying BIOS settings failed", task.msg)
        self.assertIn("unknown BIOS setting(s): Turbo", task.msg)
        self.assertIn("BIOS setting Turbo reads None", task.msg)
        self.assertEqual("Enabled",
                         task.details["bios_settings"]["Turbo"]["requested"])

    def test_secure_boot_is_null_without_a_manager(self):
        self.vendor.secure_boot = None
        task = self.run_secure({"firmware": []})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertIsNone(task.result["secure_boot"])

    def test_bad_params(self):
        item = self.item("bios", "1.1", "/bios-1.1.bin")
        cases = [
            (dict(item, hashes={"md5": "0" * 32}), "firmware[0].hashes.md5"),
            (dict(item, hashes={"sha384": "0" * 96}), "firmware[0].hashes"),
            (dict(item, hashes={"sha256": "xyz"}),
             "firmware[0].hashes.sha256"),
            (dict(item, url="ftp://127.0.0.1/x"), "firmware[0].url"),
            (dict(item, version=""), "firmware[0].version"),
        ]
        for entry, name in cases:
            with self.assertRaises(protocol.InvalidParams) as caught:
                self.run_secure({"firmware": [entry]})
            self.assertEqual(name, caught.exception.details["param"])
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.run_secure({"firmware": [item, item]})
        self.assertEqual("firmware[1].component",
                         caught.exception.details["param"])
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.run_secure({"firmware": [], "bios_settings": {"A": [1]}})
        self.assertEqual("bios_settings.A",
                         caught.exception.details["param"])
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.run_secure({})
        self.assertEqual("firmware", caught.exception.details["param"])


def secure_bios(conf, url, digest):
    """``decom.firmware_secure`` of BIOS 1.1 from ``url`` on a vendor
    manager whose BIOS is at 1.0; returns the task and the manager."""
    vendor = FlashableManager(conf, versions={"bios": "1.0"})
    vendor.name = "vendor"
    dispatcher = hardware.Dispatcher([
        (hw_base.HardwareSupport.SERVICE_PROVIDER, vendor)])
    extension, registry, _ = runner.make_extension(conf, dispatcher)
    task = runner.run_command(extension, registry, "firmware_secure", {
        "firmware": [{"component": "bios", "version": "1.1", "url": url,
                      "hashes": {"sha256": digest}}]})
    return task, vendor


class FirmwareSecureFetchPolicyTest(base.TestCase):
    """decom.firmware_secure applies [standbye]'s download policy."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="teeth-fw-unit-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        source = os.path.join(self.directory, "bios.bin")
        with open(source, "wb") as stream:
            stream.write(b"FW1.1")
        self.server = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.server.add("/bios.bin", source)
        self.server.redirects["/r"] = self.server.url("/bios.bin")

    def run_secure(self, **overrides):
        return secure_bios(base.make_conf(**overrides), self.server.url("/r"),
                           sha256(b"FW1.1"))

    def test_redirect_to_loopback_fails_the_component(self):
        task, vendor = self.run_secure()
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("component bios", task.msg)
        self.assertIn("loopback address", task.msg)
        self.assertEqual([], vendor.flashed)

    def test_allowed_redirect_networks_apply_to_firmware(self):
        task, vendor = self.run_secure(**{
            "standbye.allowed_redirect_networks": ["127.0.0.0/8"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["bios"], vendor.flashed)
