"""teeth_agent.extensions.decom.firmware: the verified firmware download, with
the image
fetcher's policies."""

import hashlib
import os
import shutil
import tempfile
from unittest import mock

from teeth_agent.extensions.decom import firmware
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.hardware import testing
from teeth_agent import units
from tests import base
from tests.functional import standbye_http
from tests.unit.fetch import loopback


def sha256(data):
    return hashlib.sha256(data).hexdigest()


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
            with self.assertRaises(errors.ChecksumMismatch):
                firmware.download(server.url("/fw"),
                                  {"sha256": sha256(b"other")}, self.target)
        self.assertEqual([], os.listdir(self.directory))

    def test_oversize_image_is_refused(self):
        with testing.FileServer({"/fw": b"x" * 100}) as server:
            with self.assertRaises(errors.ImageTooLarge) as caught:
                firmware.download(server.url("/fw"),
                                  {"sha256": sha256(b"x" * 100)},
                                  self.target, max_bytes=10)
        self.assertIsInstance(caught.exception, errors.FinalDownloadError)
        self.assertEqual([], os.listdir(self.directory))

    def test_unreachable_server_is_retried(self):
        sleeps = []
        with self.assertRaises(errors.RetryableDownloadError):
            firmware.download("http://127.0.0.1:9/fw",
                              {"sha256": sha256(b"")}, self.target,
                              attempts=3, sleep=sleeps.append)
        self.assertEqual([1, 2], sleeps)


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
        self.connections = loopback.OnlyLoopback()
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
                with self.assertRaises(errors.NoUsableURL) as caught:
                    self.download(self.server.url("/r"))
                [rejection] = caught.exception.rejections.values()
                self.assertIsInstance(rejection, errors.RedirectRefused)
                self.assertIn("refused", str(caught.exception))
                # Only the redirecting server was ever connected to.
                self.assertEqual(["127.0.0.1"], self.connections.calls)
                self.assertEqual([], self.leftovers())

    def test_redirect_from_https_to_http_is_refused(self):
        policy = http_source.RedirectPolicy(["0.0.0.0/0"])
        with self.assertRaisesRegex(ValueError, "may not change the scheme"):
            policy.check("https://127.0.0.1/fw", self.url)

    def test_redirect_allowed_by_allowed_networks(self):
        self.server.redirects["/r"] = self.url
        written = self.download(self.server.url("/r"),
                                redirects=http_source.RedirectPolicy(
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
        with self.assertRaises(errors.RetryableDownloadError) as caught:
            self.download(self.url, attempts=2, attempt_timeout=0.5,
                          min_rate=units.MIB)
        self.assertIn("ran past its deadline", str(caught.exception))
        self.assertEqual(2, len(self.server.requests))
        self.assertEqual([], self.leftovers())

    def test_every_given_checksum_is_verified(self):
        self.hashes = {"sha256": sha256(self.data),
                       "sha384": "0" * 96}
        with self.assertRaises(errors.ChecksumMismatch) as caught:
            self.download(self.url)
        self.assertEqual("sha384", caught.exception.algorithm)
        self.assertEqual([], self.leftovers())

    def test_credentials_never_reach_logs_or_errors(self):
        self.server.redirects["/r"] = (
            "http://127.0.0.2:%d/x?X-Amz-Signature=AMZS1G" % self.port)
        url = "http://op:pa55word@127.0.0.1:%d/r?temp_url_sig=S1GNATURE" \
            % self.port
        with self.assertLogs("teeth_agent", "DEBUG") as logs:
            with self.assertRaises(errors.DownloadError) as caught:
                self.download(url)
        text = "\n".join(logs.output) + str(caught.exception)
        for secret in ("pa55word", "S1GNATURE", "AMZS1G", "op:"):
            self.assertNotIn(secret, text)
        self.assertIn("temp_url_sig=***", text)
