import hashlib
import io
import os
import tempfile
from unittest import mock

from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent import units
from tests import base
from tests.functional import standbye_http
from tests.unit.fetch import loopback

MIB = units.MIB


class SelectHashTest(base.TestCase):

    def test_prefers_sha256_and_normalises(self):
        self.assertEqual(("sha256", "ab" * 32), http_source.select_hash(
            {"SHA-256": "AB" * 32, "sha512": "cd" * 64}))
        self.assertEqual(("sha512", "cd" * 64),
                         http_source.select_hash({"sha512": "cd" * 64}))

    def test_md5_only_when_allowed(self):
        with self.assertRaisesRegex(ValueError, "md5"):
            http_source.select_hash({"md5": "a" * 32})
        self.assertEqual(("md5", "a" * 32),
                         http_source.select_hash({"md5": "a" * 32},
                                                 allow_md5=True))

    def test_refuses_missing_and_malformed(self):
        for hashes in ({}, None, {"sha1": "a" * 40}, {"sha256": "a" * 63},
                       {"sha256": "z" * 64}, {"sha256": 5}):
            with self.subTest(hashes):
                with self.assertRaises(ValueError):
                    http_source.select_hash(hashes)

    def test_urls(self):
        http_source.check_url("https://example.invalid/x")
        for url in ("file:///etc/shadow", "ftp://h/x", "http:///x"):
            with self.assertRaises(ValueError):
                http_source.check_url(url)


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
        hasher = http_source.Hasher("sha256", hashlib.sha256(data).hexdigest())
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
        hasher = http_source.Hasher("sha256", "0" * 64)
        with self.assertRaises(OSError):
            download.stream(io.BytesIO(b"x" * 100000), sink, hasher,
                            buffer_size=4096, buffer_count=2)

    def test_max_size(self):
        hasher = http_source.Hasher("sha256", "0" * 64)
        with self.assertRaises(errors.ImageTooLarge):
            download.stream(io.BytesIO(b"x" * 10000), lambda c: None, hasher,
                            buffer_size=4096, max_size=5000)

    def test_mismatch(self):
        hasher = http_source.Hasher("sha256", "0" * 64)
        hasher.update(b"data")
        with self.assertRaises(errors.ChecksumMismatch):
            hasher.verify()


class _AffinityProbe(http_source.Hasher):
    """A hasher that records the CPUs its thread may use."""

    def update(self, data):
        self.cpus = os.sched_getaffinity(0)
        super().update(data)


class _ProbedSource(_Chunky):

    def readinto(self, buffer):
        self.cpus = os.sched_getaffinity(0)
        return super().readinto(buffer)


class PinnedStreamTest(base.TestCase):
    """``pin_hash``: the hasher on a CPU of its own, the reader on the
    rest; the caller's thread keeps its own affinity."""

    def test_split(self):
        self.assertEqual(({3}, {0, 1, 2}), download.hash_cpus({0, 1, 2, 3}))
        self.assertEqual(({7}, {5}), download.hash_cpus([7, 5]))
        self.assertIsNone(download.hash_cpus({0}))
        self.assertIsNone(download.hash_cpus(set()))

    def test_the_cpu_with_the_fewest_device_interrupts_hashes(self):
        # The disk's interrupt goes to CPU 1: hashing there is preempted
        # by every completion.
        self.assertEqual(({0}, {1}), download.hash_cpus(
            {0, 1}, {0: 1200, 1: 272287}))
        # Only allowed CPUs count; a tie goes to the highest.
        self.assertEqual(({2}, {1, 3}), download.hash_cpus(
            {1, 2, 3}, {0: 0, 1: 50, 2: 7, 3: 9}))
        self.assertEqual(({3}, {1, 2}), download.hash_cpus(
            {1, 2, 3}, {1: 5, 2: 5, 3: 5}))
        # A CPU the counts do not name counts as none served.
        self.assertEqual(({4}, {0}), download.hash_cpus({0, 4}, {0: 3}))

    def test_device_interrupts(self):
        text = (
            "           CPU0       CPU1       CPU3\n"
            " 28:          0          0          5   PCI-MSIX  virtio0-cfg\n"
            " 36:         10     272287          1   PCI-MSIX  virtio1-req.0\n"
            "  9:          1          2   IO-APIC  9-fasteoi   acpi\n"
            "NMI:          0          0          0   Non-maskable interrupts\n"
            "LOC:    1092616     875261     999999   Local timer interrupts\n"
            "ERR:          0\n")
        with tempfile.NamedTemporaryFile("w", suffix="interrupts") as stream:
            stream.write(text)
            stream.flush()
            self.assertEqual({0: 11, 1: 272289, 3: 6},
                             download.device_interrupts(stream.name))
        self.assertEqual({}, download.device_interrupts("/nonexistent/x"))
        with tempfile.NamedTemporaryFile("w") as stream:
            self.assertEqual({}, download.device_interrupts(stream.name))
            stream.write("CPUx CPU1\n")
            stream.flush()
            self.assertEqual({}, download.device_interrupts(stream.name))

    def test_this_machine_is_read(self):
        if not os.path.exists(download.PROC_INTERRUPTS):
            self.skipTest("no /proc/interrupts")
        counts = download.device_interrupts()
        self.assertEqual(set(), set(os.sched_getaffinity(0)) - set(counts))

    def _run(self, pin_hash):
        data = os.urandom(5 * 65536 + 17)
        hasher = _AffinityProbe("sha256", hashlib.sha256(data).hexdigest())
        source = _ProbedSource(data, 65536)
        caller = []
        download.stream(source, lambda chunk: caller.append(
            os.sched_getaffinity(0)), hasher, buffer_size=65536,
            buffer_count=2, pin_hash=pin_hash)
        hasher.verify()
        return hasher.cpus, source.cpus, caller

    def test_real_threads_are_pinned(self):
        allowed = os.sched_getaffinity(0)
        if len(allowed) < 2:
            self.skipTest("needs at least two CPUs")
        hashing, reading, caller = self._run(True)
        expected, rest = download.hash_cpus(allowed,
                                            download.device_interrupts())
        self.assertEqual(expected, hashing)
        self.assertEqual(rest, reading)
        self.assertEqual(1, len(hashing))
        self.assertEqual({frozenset(allowed)}, set(map(frozenset, caller)))
        self.assertEqual(allowed, os.sched_getaffinity(0))

    def test_not_pinned_unless_asked(self):
        allowed = os.sched_getaffinity(0)
        hashing, reading, _ = self._run(False)
        self.assertEqual(allowed, hashing)
        self.assertEqual(allowed, reading)

    def test_one_cpu_is_left_alone(self):
        with mock.patch.object(download.os, "sched_getaffinity",
                               return_value={0}), \
                mock.patch.object(download.os,
                                  "sched_setaffinity") as setaffinity:
            self._run(True)
        setaffinity.assert_not_called()

    def test_a_refused_pin_only_costs_speed(self):
        with mock.patch.object(download.os, "sched_setaffinity",
                               side_effect=OSError(22, "Invalid argument")):
            data = os.urandom(3 * 65536)
            received = []
            hasher = http_source.Hasher("sha256",
                                        hashlib.sha256(data).hexdigest())
            download.stream(io.BytesIO(data),
                            lambda chunk: received.append(bytes(chunk)),
                            hasher, buffer_size=65536, buffer_count=2,
                            pin_hash=True)
        hasher.verify()
        self.assertEqual(data, b"".join(received))


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
        with self.assertRaises(errors.NoUsableURL) as caught:
            self.fetch([self.url])
        self.assertIsInstance(caught.exception, errors.FinalDownloadError)
        self.assertIn("403", str(caught.exception))
        self.assertEqual(1, len(self.server.requests))

    def test_5xx_is_retried_then_fails(self):
        self.server.statuses["/image"] = 503
        delays = []
        with self.assertRaises(errors.RetryableDownloadError):
            self.fetch([self.url], retries=3, backoff=0.5,
                       sleep=delays.append)
        self.assertEqual([0.5, 1.0, 2.0], delays)
        self.assertEqual(4, len(self.server.requests))

    def test_checksum_mismatch(self):
        with self.assertRaises(errors.ChecksumMismatch):
            self.fetch([self.url], {"sha512": "0" * 128})

    def test_size_mismatch_is_final(self):
        with self.assertRaises(errors.SizeMismatch) as caught:
            self.fetch([self.url], expected_size=len(self.data) + 1)
        self.assertIsInstance(caught.exception, errors.FinalDownloadError)

    def test_download_to_file_leaves_nothing_on_failure(self):
        target = os.path.join(self.dir, "out")
        with self.assertRaises(errors.ChecksumMismatch):
            download.download_to_file([self.url], {"sha256": "0" * 64},
                                      target)
        self.assertEqual(["image"], os.listdir(self.dir))
        download.download_to_file([self.url], self.digest, target)
        with open(target, "rb") as stream:
            self.assertEqual(self.data, stream.read())


class RedactUrlTest(base.TestCase):

    def test_credentials_are_hidden(self):
        for url, expected in (
                ("http://user:s3cret@h:8080/i.img",
                 "http://***@h:8080/i.img"),
                ("https://h/v1/AUTH_x/c/i?temp_url_sig=abc&temp_url_expires=9",
                 "https://h/v1/AUTH_x/c/i?temp_url_sig=***&"
                 "temp_url_expires=9"),
                ("https://b.s3/i?X-Amz-Credential=AK%2F1&X-Amz-Date=2026"
                 "&X-Amz-Signature=ff&X-Amz-Security-Token=tt",
                 "https://b.s3/i?X-Amz-Credential=***&X-Amz-Date=2026"
                 "&X-Amz-Signature=***&X-Amz-Security-Token=***"),
                ("https://a.blob/i?sv=2020&sig=zz%3D&se=1",
                 "https://a.blob/i?sv=2020&sig=***&se=1"),
                ("http://h/i?access_token=t&api_key=k&name=x#frag",
                 "http://h/i?access_token=***&api_key=***&name=x#***"),
                ("http://h/plain.img", "http://h/plain.img")):
            with self.subTest(url):
                self.assertEqual(expected, http_source.redact_url(url))

    def test_unprintable_characters_are_shown_percent_encoded(self):
        self.assertEqual(
            "http://h/a%1B%5B2Jb%0A%E2%80%AE?x=1&sig=***",
            http_source.redact_url("http://h/a\x1b%5B2Jb\n\u202e?x=1&sig=s"))
        self.assertEqual("http://h/a%20b",
                         http_source.redact_url("http://h/a b"))

    def test_check_url_refuses_unprintable_characters(self):
        for url in ("http://h/a\x1bb", "http://h/a b", "http://h/\u00e9",
                    "http://h/x?q=\x7f"):
            with self.subTest(url):
                with self.assertRaisesRegex(ValueError, "printable ASCII"):
                    http_source.check_url(url)

    def test_unparsable_url_is_not_shown(self):
        self.assertNotIn("secret", http_source.redact_url("http://[secret/x"))

    def test_check_url_does_not_echo_credentials(self):
        with self.assertRaises(ValueError) as caught:
            http_source.check_url("ftp://u:pw@h/x?sig=s1")
        self.assertNotIn("pw", str(caught.exception))
        self.assertNotIn("s1", str(caught.exception))


def _resolver(table):
    def resolve(host, port):
        return [http_source.ipaddress.ip_address(a) for a in table[host]]
    return resolve


class RedirectPolicyTest(base.TestCase):

    def test_restricted_targets_are_refused(self):
        policy = http_source.RedirectPolicy()
        for target, reason in (
                ("http://127.0.0.2/x", "loopback"),
                ("http://169.254.169.254/latest/meta-data", "link-local"),
                ("http://10.1.2.3/x", "private"),
                ("http://192.168.0.1/x", "private"),
                ("http://[fe80::1]/x", "link-local"),
                ("http://[::1]/x", "loopback"),
                ("http://[::ffff:127.0.0.1]/x", "loopback"),
                ("http://224.0.0.1/x", "multicast"),
                ("http://0.0.0.0/x", "unspecified"),
                ("http://100.64.0.1/x", "not globally routable")):
            with self.subTest(target):
                with self.assertRaisesRegex(ValueError, reason):
                    policy.check("http://8.8.8.8/i", target)

    def test_allowed_networks(self):
        policy = http_source.RedirectPolicy(["127.0.0.0/8", "fd00::/8"])
        self.assertEqual(["127.0.0.2"],
                         policy.check("http://h/i", "http://127.0.0.2:81/"))
        self.assertEqual(["fd00::5"],
                         policy.check("http://h/i", "http://[fd00::5]/"))
        with self.assertRaisesRegex(ValueError, "link-local"):
            policy.check("http://h/i", "http://169.254.1.1/")

    def test_every_resolved_address_is_checked(self):
        policy = http_source.RedirectPolicy(resolve=_resolver(
            {"mirror.example": ["93.184.216.34", "127.0.0.1"],
             "good.example": ["93.184.216.34"]}))
        with self.assertRaisesRegex(ValueError, "127.0.0.1 is a loopback"):
            policy.check("http://h/i", "http://mirror.example/i")
        self.assertEqual(["93.184.216.34"],
                         policy.check("http://h/i", "http://good.example/i"))

    def test_https_never_downgrades(self):
        policy = http_source.RedirectPolicy(["0.0.0.0/0"])
        with self.assertRaisesRegex(ValueError, "may not change the scheme"):
            policy.check("https://h/i", "http://93.184.216.34/i")
        self.assertEqual(["93.184.216.34"],
                         policy.check("https://h/i", "https://93.184.216.34/"))

    def test_a_redirect_keeps_the_scheme(self):
        # The rule is "same scheme": not even an upgrade to https.
        policy = http_source.RedirectPolicy(["0.0.0.0/0"])
        with self.assertRaisesRegex(ValueError, "http to https"):
            policy.check("http://h/i", "https://93.184.216.34/i")
        with self.assertRaises(ValueError):
            policy.check("http://h/i", "file:///etc/shadow")


class FetchLimitsTest(base.TestCase):
    """Redirects, attempt deadlines and redaction against a local
    server."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        self.data = os.urandom(200000)
        self.path = os.path.join(self.dir, "image")
        with open(self.path, "wb") as stream:
            stream.write(self.data)
        self.digest = {"sha256": hashlib.sha256(self.data).hexdigest()}
        self.server = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.url = self.server.add("/image", self.path)
        self.port = self.server.server_address[1]
        self.connections = loopback.OnlyLoopback()
        patcher = mock.patch("socket.create_connection",
                             side_effect=self.connections)
        patcher.start()
        self.addCleanup(patcher.stop)

    def fetch(self, urls, hashes=None, **kwargs):
        out = io.BytesIO()
        kwargs.setdefault("sleep", lambda delay: None)
        result = download.fetch(urls, hashes or self.digest, out.write,
                                buffer_size=65536, **kwargs)
        return result, out.getvalue()

    def test_redirect_to_loopback_is_refused_without_connecting(self):
        for target in ("http://127.0.0.2:%d/image" % self.port,
                       "http://169.254.169.254/latest/meta-data/",
                       "http://[::1]:%d/image" % self.port):
            with self.subTest(target):
                self.server.redirects["/r"] = target
                self.connections.calls.clear()
                with self.assertRaises(errors.NoUsableURL) as caught:
                    self.fetch([self.server.url("/r")])
                self.assertIn("refused", str(caught.exception))
                self.assertIsInstance(caught.exception,
                                      errors.FinalDownloadError)
                [rejection] = caught.exception.rejections.values()
                self.assertIsInstance(rejection, errors.RedirectRefused)
                # Only the redirecting server was ever connected to.
                self.assertEqual(["127.0.0.1"], self.connections.calls)

    def test_redirect_allowed_by_allowed_networks(self):
        self.server.redirects["/r"] = self.url
        result, data = self.fetch([self.server.url("/r")],
                                  redirects=http_source.RedirectPolicy(
                                      ["127.0.0.0/8"]))
        self.assertEqual(self.data, data)
        self.assertEqual(["/r", "/image"],
                         [path for path, _ in self.server.requests])

    def test_refused_redirect_fails_over_to_the_next_url(self):
        self.server.redirects["/r"] = "http://127.0.0.2:%d/x" % self.port
        result, data = self.fetch([self.server.url("/r"), self.url])
        self.assertEqual(self.data, data)

    def test_redirect_hops_are_bounded(self):
        for index in range(4):
            self.server.redirects["/r%d" % index] = self.server.url(
                "/r%d" % (index + 1))
        with self.assertRaisesRegex(errors.DownloadError,
                                    "more than 2 redirects"):
            self.fetch([self.server.url("/r0")],
                       redirects=http_source.RedirectPolicy(["127.0.0.0/8"],
                                                            max_hops=2))

    def test_slow_drip_server_fails_the_attempt_and_the_download(self):
        self.server.drip["/image"] = 0.2
        with self.assertRaises(errors.DownloadError) as caught:
            self.fetch([self.url], retries=1, attempt_timeout=0.5,
                       min_rate=MIB)
        self.assertIn("ran past its deadline", str(caught.exception))
        self.assertIn("download_attempt_timeout", str(caught.exception))
        # One retry: two attempts, each cut off by its deadline.
        self.assertEqual(2, len(self.server.requests))

    def test_slow_drip_fails_over_to_a_good_mirror(self):
        slow = self.server.add("/slow", self.path)
        self.server.drip["/slow"] = 0.2
        result, data = self.fetch([slow, self.url], retries=2,
                                  attempt_timeout=0.5, min_rate=MIB)
        self.assertEqual(self.data, data)
        self.assertEqual(self.url, result["url"])

    def test_deadline_grows_with_the_bytes_received(self):
        now = [100.0]
        source = http_source.HTTPSource([self.url], attempt_timeout=10.0,
                                        min_rate=1000, clock=lambda: now[0])
        self.addCleanup(source.close)
        source._begin_attempt(self.url)
        source._count(5000)
        now[0] = 114.9
        source.check_deadline()
        self.assertIsNone(source._too_slow())
        now[0] = 115.1
        source.check_deadline()
        self.assertIsInstance(source._too_slow(), errors.AttemptDeadline)

    def test_credentials_never_reach_logs_or_errors(self):
        secret_url = ("http://operator:pa55word@127.0.0.1:%d/missing"
                      "?temp_url_sig=S1GNATURE&temp_url_expires=1"
                      % self.port)
        self.server.redirects["/r"] = (
            "http://127.0.0.2:%d/x?X-Amz-Signature=AMZS1G" % self.port)
        redirecting = "http://u:pa55word@127.0.0.1:%d/r?sig=S1GNATURE" \
            % self.port
        with self.assertLogs("teeth_agent", "DEBUG") as logs:
            with self.assertRaises(errors.DownloadError) as caught:
                self.fetch([secret_url, redirecting])
        text = "\n".join(logs.output) + str(caught.exception)
        for secret in ("pa55word", "S1GNATURE", "AMZS1G", "operator"):
            self.assertNotIn(secret, text)
        self.assertIn("temp_url_sig=***", text)
        self.assertIn("http://***@127.0.0.1", text)

    def test_a_raw_control_character_in_a_redirect_leaks_no_credentials(self):
        # http.client refuses such a URL with an error quoting its query.
        self.server.redirects["/r"] = "/b\x1b[2J?temp_url_sig=S1GNATURE"
        with self.assertLogs("teeth_agent", "DEBUG") as logs:
            with self.assertRaises(errors.DownloadError) as caught:
                self.fetch(
                    [self.server.url("/r")],
                    redirects=http_source.RedirectPolicy(["127.0.0.0/8"]))
        text = "\n".join(logs.output) + str(caught.exception)
        self.assertNotIn("S1GNATURE", text)
        self.assertNotIn("\x1b", text)
        self.assertIn("/b%1B[2J?temp_url_sig=***", text)
        self.assertIn("printable ASCII", str(caught.exception))
        self.assertEqual(["/r"], [path for path, _ in self.server.requests])

    def test_a_raw_control_character_in_a_url_is_refused_unechoed(self):
        url = "http://127.0.0.1:%d/a\x01b?temp_url_sig=S1GNATURE" % self.port
        with self.assertRaises(ValueError) as caught:
            self.fetch([url])
        self.assertNotIn("S1GNATURE", str(caught.exception))
        self.assertNotIn("\x01", str(caught.exception))
        self.assertEqual([], self.server.requests)

    def test_user_information_is_sent_as_basic_authentication(self):
        url = "http://op:pw@127.0.0.1:%d/image" % self.port
        self.fetch([url])
        self.assertEqual("Basic b3A6cHc=",
                         self.server.headers[-1].get("Authorization"))

    def test_waiting_for_the_sink_does_not_count_against_the_attempt(self):
        now = [0.0]
        source = http_source.HTTPSource([self.url], attempt_timeout=10.0,
                                        min_rate=1000, clock=lambda: now[0])
        self.addCleanup(source.close)
        source._begin_attempt(self.url)
        now[0] = 30.0
        source.credit(25.0)
        source.check_deadline()
        self.assertIsNone(source._too_slow())
