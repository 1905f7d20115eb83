"""decom.firmware_secure and the verified firmware download."""

import hashlib
import os
import shutil
import tempfile
from unittest import mock

from teeth_agent import download
from teeth_agent import firmware
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import testing
from teeth_agent import protocol
from teeth_agent import tasks
from teeth_agent import units
from tests import base
from tests.functional import standbye_http
from tests.unit.decom import runner


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


class DownloadTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="teeth-fw-unit-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.target = os.path.join(self.directory, "image")

    def test_verified_image_lands_under_its_name(self):
        data = os.urandom(3 * 1024 * 1024 + 5)
        with testing.FileServer({"/fw": data}) as server:
            written = firmware.download(
                server.url("/fw"), {"sha512": hashlib.sha512(
                    data).hexdigest(), "sha256": sha256(data)}, self.target)
        self.assertEqual(len(data), written)
        with open(self.target, "rb") as stream:
            self.assertEqual(data, stream.read())
        self.assertEqual(["image"], os.listdir(self.directory))

    def test_mismatch_leaves_no_file(self):
        with testing.FileServer({"/fw": b"data"}) as server:
            with self.assertRaises(download.ChecksumMismatch):
                firmware.download(server.url("/fw"),
                                  {"sha256": sha256(b"other")}, self.target)
        self.assertEqual([], os.listdir(self.directory))

    def test_oversize_image_is_refused(self):
        with testing.FileServer({"/fw": b"x" * 100}) as server:
            with self.assertRaises(download.ImageTooLarge) as caught:
                firmware.download(server.url("/fw"),
                                  {"sha256": sha256(b"x" * 100)},
                                  self.target, max_bytes=10)
        self.assertIsInstance(caught.exception, download.FinalDownloadError)
        self.assertEqual([], os.listdir(self.directory))

    def test_unreachable_server_is_retried(self):
        sleeps = []
        with self.assertRaises(download.RetryableDownloadError):
            firmware.download("http://127.0.0.1:9/fw",
                              {"sha256": sha256(b"")}, self.target,
                              attempts=3, sleep=sleeps.append)
        self.assertEqual([1, 2], sleeps)


class _OnlyLoopback:
    """Replaces socket.create_connection: records every address and
    refuses anything but 127.0.0.1 (no test may reach another one)."""

    def __init__(self):
        self.calls = []
        self._real = download.socket.create_connection

    def __call__(self, address, *args, **kwargs):
        self.calls.append(address[0])
        if address[0] != "127.0.0.1":
            raise AssertionError("connected to %s" % (address,))
        return self._real(address, *args, **kwargs)


class FirmwareFetchPolicyTest(base.TestCase):
    """Firmware downloads get the image fetcher's policies: redirect
    restrictions, resume, the attempt deadline and URL redaction."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="teeth-fw-unit-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.target = os.path.join(self.directory, "image")
        self.data = os.urandom(3 * units.MIB + 11)
        source = os.path.join(self.directory, "source.bin")
        with open(source, "wb") as stream:
            stream.write(self.data)
        self.hashes = {"sha256": sha256(self.data)}
        self.server = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.url = self.server.add("/fw", source)
        self.port = self.server.server_address[1]
        self.connections = _OnlyLoopback()
        patcher = mock.patch("socket.create_connection",
                             side_effect=self.connections)
        patcher.start()
        self.addCleanup(patcher.stop)

    def download(self, url, **kwargs):
        kwargs.setdefault("sleep", lambda seconds: None)
        return firmware.download(url, self.hashes, self.target, **kwargs)

    def leftovers(self):
        return sorted(set(os.listdir(self.directory)) - {"source.bin"})

    def test_redirect_to_private_or_link_local_address_is_refused(self):
        for target in ("http://169.254.169.254/latest/meta-data/",
                       "http://10.1.2.3/fw",
                       "http://127.0.0.2:%d/fw" % self.port,
                       "http://[::1]:%d/fw" % self.port):
            with self.subTest(target):
                self.server.redirects["/r"] = target
                self.connections.calls.clear()
                with self.assertRaises(download.NoUsableURL) as caught:
                    self.download(self.server.url("/r"))
                [rejection] = caught.exception.rejections.values()
                self.assertIsInstance(rejection, download.RedirectRefused)
                self.assertIn("refused", str(caught.exception))
                # Only the redirecting server was ever connected to.
                self.assertEqual(["127.0.0.1"], self.connections.calls)
                self.assertEqual([], self.leftovers())

    def test_redirect_from_https_to_http_is_refused(self):
        policy = download.RedirectPolicy(["0.0.0.0/0"])
        with self.assertRaisesRegex(ValueError, "https URL may not"):
            policy.check("https://127.0.0.1/fw", self.url)

    def test_redirect_allowed_by_allowed_networks(self):
        self.server.redirects["/r"] = self.url
        written = self.download(self.server.url("/r"),
                                redirects=download.RedirectPolicy(
                                    ["127.0.0.0/8"]))
        self.assertEqual(len(self.data), written)
        with open(self.target, "rb") as stream:
            self.assertEqual(self.data, stream.read())

    def test_interrupted_download_resumes_with_range(self):
        self.server.drop_after["/fw"] = units.MIB
        self.assertEqual(len(self.data), self.download(self.url))
        self.assertIn(("/fw", "bytes=%d-" % units.MIB), self.server.requests)
        with open(self.target, "rb") as stream:
            self.assertEqual(self.data, stream.read())
        self.assertEqual(["image"], self.leftovers())

    def test_slow_drip_server_runs_into_the_attempt_deadline(self):
        self.server.drip["/fw"] = 0.2
        with self.assertRaises(download.RetryableDownloadError) as caught:
            self.download(self.url, attempts=2, attempt_timeout=0.5,
                          min_rate=units.MIB)
        self.assertIn("ran past its deadline", str(caught.exception))
        self.assertEqual(2, len(self.server.requests))
        self.assertEqual([], self.leftovers())

    def test_every_given_checksum_is_verified(self):
        self.hashes = {"sha256": sha256(self.data),
                       "sha384": "0" * 96}
        with self.assertRaises(download.ChecksumMismatch) as caught:
            self.download(self.url)
        self.assertEqual("sha384", caught.exception.algorithm)
        self.assertEqual([], self.leftovers())

    def test_credentials_never_reach_logs_or_errors(self):
        self.server.redirects["/r"] = (
            "http://127.0.0.2:%d/x?X-Amz-Signature=AMZS1G" % self.port)
        url = "http://op:pa55word@127.0.0.1:%d/r?temp_url_sig=S1GNATURE" \
            % self.port
        with self.assertLogs("teeth_agent", "DEBUG") as logs:
            with self.assertRaises(download.DownloadError) as caught:
                self.download(url)
        text = "\n".join(logs.output) + str(caught.exception)
        for secret in ("pa55word", "S1GNATURE", "AMZS1G", "op:"):
            self.assertNotIn(secret, text)
        self.assertIn("temp_url_sig=***", text)


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
        conf = base.make_conf(**overrides)
        vendor = FlashableManager(conf, versions={"bios": "1.0"})
        vendor.name = "vendor"
        dispatcher = hardware.Dispatcher([
            (hw_base.HardwareSupport.SERVICE_PROVIDER, vendor)])
        extension, registry, _ = runner.make_extension(conf, dispatcher)
        task = runner.run_command(extension, registry, "firmware_secure", {
            "firmware": [{"component": "bios", "version": "1.1",
                          "url": self.server.url("/r"),
                          "hashes": {"sha256": sha256(b"FW1.1")}}]})
        return task, vendor

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
