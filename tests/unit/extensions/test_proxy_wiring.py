"""The commands that download pass ``[standbye] proxy`` / ``no_proxy`` on.

``decom.firmware_secure`` (firmware images), ``standbye.cache_images`` and
``standbye.prepare_image`` (tenant images) each build their download
options from config. These tests run each command's download path with
the download layer observed (the real download runs on, against a server
on 127.0.0.1, which is never proxied) and check that what reached the
download layer routes through the configured proxy except for the
``no_proxy`` entries; they fail when a command stops passing the options
on (the environment is cleared of proxy variables, so the default cannot
stand in for the configuration). tests/functional/test_proxy.py runs a
real agent through a real proxy.
"""

import hashlib
import os
import shutil
import tempfile
from unittest import mock
import uuid

from teeth_agent.extensions.decom import firmware as firmware_images
from teeth_agent.extensions import standbye
from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent import tasks
from tests import base
from tests.functional import standbye_http
from tests.unit.extensions.decom import test_firmware_secure
from tests.unit.extensions.standbye import test_extension

PROXY = "http://proxy.example:3128"
NO_PROXY = ["10.0.0.0/8", "mirror.example"]
#: The proxy variables a developer's shell may hold.
_ENVIRONMENT = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
                "HTTPS_PROXY", "NO_PROXY", "all_proxy", "ALL_PROXY")


def _clean_environment():
    environ = {name: value for name, value in os.environ.items()
               if name not in _ENVIRONMENT}
    return mock.patch.dict(os.environ, environ, clear=True)


class ProxyWiringTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="teeth-proxy-wiring-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        # What the firmware test's manager flashes (b"FW" + the version);
        # a raw image to the cache.
        self.payload = b"FW1.1"
        source = os.path.join(self.directory, "payload.bin")
        with open(source, "wb") as stream:
            stream.write(self.payload)
        self.digest = hashlib.sha256(self.payload).hexdigest()
        self.server = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.server.add("/payload.bin", source)
        environment = _clean_environment()
        environment.start()
        self.addCleanup(environment.stop)
        self.seen = []

    def observe(self, target, name):
        """Record the keyword arguments of every call of
        ``target.name``, then make the real call."""
        real = getattr(target, name)

        def observed(*args, **kwargs):
            self.seen.append(kwargs)
            return real(*args, **kwargs)
        patcher = mock.patch.object(target, name, observed)
        patcher.start()
        self.addCleanup(patcher.stop)

    def assert_routed_as_configured(self, redirects):
        self.assertIsInstance(redirects, http_source.RedirectPolicy)
        chosen = redirects.proxies.for_url("https://images.example/i.raw")
        self.assertIsNotNone(chosen, "the configured proxy was not passed "
                                     "on to the download")
        self.assertEqual(("proxy.example", 3128), (chosen.host, chosen.port))
        self.assertEqual("proxy.example", redirects.proxies.for_url(
            "http://images.example/i.raw").host)
        for exempt in ("http://10.1.2.3/i.raw",
                       "https://mirror.example/i.raw"):
            self.assertIsNone(redirects.proxies.for_url(exempt), exempt)

    def conf(self, **more):
        return base.make_conf(**dict({
            "standbye.proxy": PROXY, "standbye.no_proxy": NO_PROXY}, **more))


class FirmwareSecureProxyTest(ProxyWiringTestCase):
    def run_secure(self, conf):
        return test_firmware_secure.secure_bios(
            conf, self.server.url("/payload.bin"), self.digest)

    def test_the_firmware_download_gets_the_configured_proxy(self):
        self.observe(firmware_images, "download")
        task, vendor = self.run_secure(self.conf())
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(["bios"], vendor.flashed)
        self.assertEqual(1, len(self.seen))
        self.assert_routed_as_configured(self.seen[0]["redirects"])

    def test_without_the_options_nothing_is_proxied(self):
        # The control: the same run with no proxy configured routes
        # everything direct, so the test above sees the configuration.
        self.observe(firmware_images, "download")
        self.run_secure(base.make_conf())
        redirects = self.seen[0]["redirects"]
        self.assertIsNone(redirects.proxies.for_url(
            "https://images.example/i.raw"))


class StandbyeProxyTest(ProxyWiringTestCase, test_extension.ExtensionTestCase):
    def setUp(self):
        super().setUp()
        for name, value in (("proxy", PROXY), ("no_proxy", NO_PROXY)):
            self.conf.set_override(name, value, "standbye")

    def test_cache_images_downloads_through_the_configured_proxy(self):
        self.observe(download, "download_to_file")
        image_id = str(uuid.uuid4())
        spec, bound = self.extension.commands()["standbye.cache_images"]
        checked = self.validate("cache_images", images=[{
            "id": image_id, "urls": [self.server.url("/payload.bin")],
            "hashes": {"sha256": self.digest}}])
        checked.pop("task_id")
        task, _ = self.extension.context.tasks.start(
            "c1", "standbye.cache_images",
            lambda task: bound(task, **checked), exclusive=True)
        for _ in range(3000):
            if task.terminal:
                break
            task.acknowledged.wait(0.01)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("cached", task.result["images"][0]["status"])
        self.assertEqual(1, len(self.seen))
        self.assert_routed_as_configured(self.seen[0]["redirects"])

    def test_prepare_image_streams_through_the_configured_proxy(self):
        made = []

        def source(urls, **kwargs):
            made.append(kwargs)
            raise errors.DownloadError("observed; nothing is written")
        patcher = mock.patch.object(standbye.http_source, "HTTPSource",
                                    source)
        patcher.start()
        self.addCleanup(patcher.stop)
        image = self.image(urls=["https://images.example/i.raw"])
        with self.assertRaises(errors.DownloadError):
            self.extension._write_downloaded(mock.Mock(), image,
                                             "/dev/never-written")
        self.assertEqual([], self.manager._called("write_image"))
        self.assertEqual(1, len(made))
        self.assert_routed_as_configured(made[0]["redirects"])

    def test_a_staged_qcow2_image_downloads_through_the_proxy_too(self):
        # A qcow2 image that cannot stream is downloaded again into
        # work_dir: that download gets the same options.
        self.observe(download, "download_to_file")
        self.manager.answers["write_image"] = [
            {"format": "qcow2", "needs_staging": True},
            {"format": "raw", "bytes_read": 5, "bytes_written": 5}]
        image = self.image(urls=[self.server.url("/payload.bin")],
                           hashes={"sha256": self.digest})
        written = self.extension._write_downloaded(mock.Mock(), image,
                                                   "/dev/never-written")
        self.assertEqual("download", written["source"])
        self.assertEqual(2, len(self.manager._called("write_image")))
        self.assertEqual(1, len(self.seen))
        self.assert_routed_as_configured(self.seen[0]["redirects"])
