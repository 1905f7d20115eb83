"""The one checksum rule (teeth_agent.fetch.hashes) and the one URL rule
(teeth_agent.fetch.urls), and their users."""

from teeth_agent.extensions.decom import firmware
from teeth_agent.fetch import errors
from teeth_agent.fetch import hashes
from teeth_agent.fetch import http_source
from teeth_agent.fetch import urls
from teeth_agent import params
from teeth_agent import protocol
from tests import base


class NamesTest(base.TestCase):

    def test_normalise_name(self):
        for name in ("SHA-256", "sha256", "Sha-2-5-6"):
            self.assertEqual("sha256", hashes.normalise_name(name))

    def test_the_rules_agree(self):
        # Every required algorithm is accepted, and every accepted or weak
        # one has a known length.
        self.assertEqual(set(), set(hashes.REQUIRED) - set(hashes.ACCEPTED))
        for algorithm in hashes.ACCEPTED + hashes.WEAK:
            self.assertIn(algorithm, hashes.HEX_LENGTHS)


class SelectTest(base.TestCase):
    """The image rule; download.select_hash is the same function."""

    def test_download_uses_it(self):
        self.assertIs(hashes.select, http_source.select_hash)

    def test_prefers_sha256_then_sha512(self):
        self.assertEqual(("sha256", "ab" * 32), hashes.select(
            {"sha512": "cd" * 64, "SHA-256": "AB" * 32}))
        self.assertEqual(("sha512", "cd" * 64),
                         hashes.select({"sha512": "CD" * 64, "crc": "x"}))

    def test_refusals_name_the_key(self):
        with self.assertRaises(hashes.InvalidHashes) as caught:
            hashes.select({"SHA-256": "a" * 63})
        self.assertEqual("SHA-256", caught.exception.name)
        with self.assertRaises(hashes.InvalidHashes) as caught:
            hashes.select({"sha256": 5})
        self.assertEqual("sha256", caught.exception.name)
        with self.assertRaisesRegex(hashes.InvalidHashes, "md5") as caught:
            hashes.select({"md5": "a" * 32})
        self.assertIsNone(caught.exception.name)

    def test_invalid_hashes_is_a_value_error(self):
        # Callers that catch ValueError (standbye's parameter checks) keep
        # working.
        self.assertTrue(issubclass(hashes.InvalidHashes, ValueError))


class CheckAllTest(base.TestCase):
    """The firmware rule; firmware.check_hashes reports it as params."""

    def test_normalises_and_keeps_every_accepted_algorithm(self):
        self.assertEqual(
            {"sha256": "ab" * 32, "sha384": "cd" * 48},
            hashes.check_all({"SHA-256": "AB" * 32, "sha384": "cd" * 48}))

    def test_refusals(self):
        for given, key in (({"md5": "0" * 32}, "md5"),
                           ({"sha256": "xyz"}, "sha256"),
                           ({"sha256": 5}, "sha256"),
                           ({"sha384": "0" * 96}, None)):
            with self.subTest(given):
                with self.assertRaises(hashes.InvalidHashes) as caught:
                    hashes.check_all(given)
                self.assertEqual(key, caught.exception.name)

    def test_firmware_reports_the_key_as_a_param(self):
        with self.assertRaises(protocol.InvalidParams) as caught:
            firmware.check_hashes({"sha-256": "x"}, "firmware[2].hashes")
        self.assertEqual("firmware[2].hashes.sha-256",
                         caught.exception.details["param"])
        with self.assertRaises(protocol.InvalidParams) as caught:
            firmware.check_hashes({}, "firmware[2].hashes")
        self.assertEqual("firmware[2].hashes",
                         caught.exception.details["param"])

    def test_verify_every_checks_each_digest(self):
        hasher = http_source.Hasher.every(
            hashes.check_all({"sha512": "0" * 128, "sha256": "0" * 64}))
        self.assertEqual("sha256", hasher.algorithm)
        hasher.update(b"data")
        with self.assertRaises(errors.ChecksumMismatch):
            hasher.verify()


class URLRuleTest(base.TestCase):

    def test_download_and_params_use_it(self):
        self.assertIs(urls.check, http_source.check_url)
        self.assertIs(urls.redact, http_source.redact_url)
        spec = params.URL()
        for url, reason in (("ftp://h/x", "only http:// and https:// URLs"),
                            ("http:///x", "has no host")):
            with self.subTest(url):
                with self.assertRaises(urls.InvalidURL) as caught:
                    urls.check(url)
                self.assertIn(reason, caught.exception.reason)
                with self.assertRaises(protocol.InvalidParams) as caught:
                    spec.check(url, "image.urls[0]")
                self.assertIn(reason, str(caught.exception))
                self.assertEqual("image.urls[0]",
                                 caught.exception.details["param"])

    def test_message_is_redacted(self):
        with self.assertRaises(ValueError) as caught:
            urls.check("ftp://u:pw@h/x?sig=s1")
        self.assertNotIn("pw", str(caught.exception))
        self.assertNotIn("s1", str(caught.exception))
