import hashlib
import io
import os
import tempfile

from teeth_agent import download
from tests import base
from tests.functional import standbye_http

MIB = 1024 * 1024


class SelectHashTest(base.TestCase):

    def test_prefers_sha256_and_normalises(self):
        self.assertEqual(("sha256", "ab" * 32), download.select_hash(
            {"SHA-256": "AB" * 32, "sha512": "cd" * 64}))
        self.assertEqual(("sha512", "cd" * 64),
                         download.select_hash({"sha512": "cd" * 64}))

    def test_md5_only_when_allowed(self):
        with self.assertRaisesRegex(ValueError, "md5"):
            download.select_hash({"md5": "a" * 32})
        self.assertEqual(("md5", "a" * 32),
                         download.select_hash({"md5": "a" * 32},
                                              allow_md5=True))

    def test_refuses_missing_and_malformed(self):
        for hashes in ({}, None, {"sha1": "a" * 40}, {"sha256": "a" * 63},
                       {"sha256": "z" * 64}, {"sha256": 5}):
            with self.subTest(hashes):
                with self.assertRaises(ValueError):
                    download.select_hash(hashes)

    def test_urls(self):
        download.check_url("https://example.invalid/x")
        for url in ("file:///etc/shadow", "ftp://h/x", "http:///x"):
            with self.assertRaises(ValueError):
                download.check_url(url)


class _Chunky(io.BytesIO):
    """A source that returns at most ``step`` bytes per read."""

    def __init__(self, data, step):
        super().__init__(data)
        self.step = step

    def readinto(self, buffer):
        return super().readinto(memoryview(buffer)[:self.step])


class StreamTest(base.TestCase):

    def test_every_byte_reaches_sink_and_hasher_in_order(self):
        data = os.urandom(3 * 65536 + 123)
        received = []
        progress = []
        hasher = download.Hasher("sha256", hashlib.sha256(data).hexdigest())
        count = download.stream(_Chunky(data, 1000),
                                lambda chunk: received.append(bytes(chunk)),
                                hasher,
                                lambda done, total: progress.append(done),
                                len(data), buffer_size=65536,
                                buffer_count=2)
        self.assertEqual(len(data), count)
        self.assertEqual(data, b"".join(received))
        hasher.verify()
        self.assertEqual(len(data), progress[-1])

    def test_sink_failure_is_raised(self):
        def sink(chunk):
            raise OSError(28, "No space left on device")
        hasher = download.Hasher("sha256", "0" * 64)
        with self.assertRaises(OSError):
            download.stream(io.BytesIO(b"x" * 100000), sink, hasher,
                            buffer_size=4096, buffer_count=2)

    def test_max_size(self):
        hasher = download.Hasher("sha256", "0" * 64)
        with self.assertRaises(download.DownloadError) as caught:
            download.stream(io.BytesIO(b"x" * 10000), lambda c: None, hasher,
                            buffer_size=4096, max_size=5000)
        self.assertTrue(caught.exception.too_large)

    def test_mismatch(self):
        hasher = download.Hasher("sha256", "0" * 64)
        hasher.update(b"data")
        with self.assertRaises(download.ChecksumMismatch):
            hasher.verify()


class FetchTest(base.TestCase):
    """Downloads from a server on 127.0.0.1."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.data = os.urandom(2 * MIB + 17)
        self.path = os.path.join(self.dir, "image")
        with open(self.path, "wb") as stream:
            stream.write(self.data)
        self.digest = {"sha256": hashlib.sha256(self.data).hexdigest()}
        self.server = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.url = self.server.add("/image", self.path)

    def fetch(self, urls, hashes=None, **kwargs):
        out = io.BytesIO()
        kwargs.setdefault("sleep", lambda delay: None)
        result = download.fetch(urls, hashes or self.digest, out.write,
                                buffer_size=65536, **kwargs)
        return result, out.getvalue()

    def test_plain(self):
        result, data = self.fetch([self.url])
        self.assertEqual(self.data, data)
        self.assertEqual(len(self.data), result["size"])

    def test_resumes_with_range(self):
        self.server.drop_after["/image"] = MIB
        result, data = self.fetch([self.url])
        self.assertEqual(self.data, data)
        self.assertIn(("/image", "bytes=%d-" % MIB), self.server.requests)

    def test_resumes_from_a_server_that_ignores_range(self):
        self.server.drop_after["/image"] = MIB + 5
        self.server.ignore_range = True
        result, data = self.fetch([self.url])
        self.assertEqual(self.data, data)

    def test_fails_over_to_the_next_url_on_404(self):
        missing = self.server.url("/missing")
        result, data = self.fetch([missing, self.url])
        self.assertEqual(self.data, data)
        self.assertEqual(self.url, result["url"])

    def test_4xx_is_final_without_retries(self):
        self.server.statuses["/image"] = 403
        with self.assertRaises(download.DownloadError) as caught:
            self.fetch([self.url])
        self.assertTrue(caught.exception.final)
        self.assertIn("403", str(caught.exception))
        self.assertEqual(1, len(self.server.requests))

    def test_5xx_is_retried_then_fails(self):
        self.server.statuses["/image"] = 503
        delays = []
        with self.assertRaises(download.DownloadError) as caught:
            self.fetch([self.url], retries=3, backoff=0.5,
                       sleep=delays.append)
        self.assertFalse(caught.exception.final)
        self.assertEqual([0.5, 1.0, 2.0], delays)
        self.assertEqual(4, len(self.server.requests))

    def test_checksum_mismatch(self):
        with self.assertRaises(download.ChecksumMismatch):
            self.fetch([self.url], {"sha512": "0" * 128})

    def test_size_mismatch_is_final(self):
        with self.assertRaises(download.DownloadError) as caught:
            self.fetch([self.url], expected_size=len(self.data) + 1)
        self.assertTrue(caught.exception.final)

    def test_download_to_file_leaves_nothing_on_failure(self):
        target = os.path.join(self.dir, "out")
        with self.assertRaises(download.ChecksumMismatch):
            download.download_to_file([self.url], {"sha256": "0" * 64},
                                      target)
        self.assertEqual(["image"], os.listdir(self.dir))
        download.download_to_file([self.url], self.digest, target)
        with open(target, "rb") as stream:
            self.assertEqual(self.data, stream.read())
