"""Erasure evidence: canonical JSON, Ed25519 signing and verification, and
the strict checks of the key file."""

import base64
import json
import os
import tempfile

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization

from teeth_agent.hardware import evidence
from tests import base


def write_private_key(directory, key=None, mode=0o600, name="evidence.pem",
                      password=None):
    key = key or ed25519.Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(password) if \
        password else serialization.NoEncryption()
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8, encryption)
    path = os.path.join(directory, name)
    with open(path, "wb") as stream:
        stream.write(data)
    os.chmod(path, mode)
    return path, key


def write_public_key(directory, key, name="evidence.pub"):
    path = os.path.join(directory, name)
    with open(path, "wb") as stream:
        stream.write(key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


RECORD = {"path": "/dev/sda", "outcome": "erased", "serial": "S3Z9NB0K",
          "model": "Samsung SSD 860", "wwn": "0x5002538e4", "firmware":
          "RVT04B6Q", "size_bytes": 500107862016, "logical_sector_size": 512,
          "method": "ata_security_erase_enhanced", "nist_category": "Purge",
          "verification": {"read_back": "...", "samples": 10,
                           "result": "passed"},
          "started_at": "2026-12-01T23:50:00.000Z",
          "ended_at": "2026-12-01T23:51:40.500Z", "tool": "hdparm",
          "tool_version": "9.65", "agent_version": "1.0.0",
          "duration_s": 100.5, "note": "Gerät ✓"}


class CanonicalJsonTest(base.TestCase):
    def test_sorted_keys_no_whitespace_utf8(self):
        self.assertEqual(
            '{"a":[1,{"b":"é","c":null}],"z":1.5}'.encode("utf-8"),
            evidence.canonical_json({"z": 1.5, "a": [1, {"c": None,
                                                         "b": "é"}]}))

    def test_nan_is_refused(self):
        with self.assertRaises(ValueError):
            evidence.canonical_json({"x": float("nan")})

    def test_signed_bytes_leave_out_the_signature_alone(self):
        with_signature = dict(RECORD, signature="abc",
                              signing_key_fingerprint="sha256:00")
        self.assertEqual(
            evidence.DOMAIN + evidence.canonical_json(
                dict(RECORD, signing_key_fingerprint="sha256:00")),
            evidence.signed_bytes(with_signature))

    def test_utc_timestamp_is_rfc3339(self):
        self.assertEqual("2026-12-01T23:59:01.250Z",
                         evidence.utc_timestamp(1796169541.25))


class SignVerifyTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.signer = evidence.Signer(self.key)
        self.public = self.key.public_key()
        self.signed = self.signer.sign(RECORD)

    def test_a_signed_record_verifies(self):
        verdict = evidence.verify_record(self.signed, self.public)
        self.assertEqual(evidence.Verdict(True, "signature valid"), verdict)
        self.assertEqual(self.signer.fingerprint,
                         self.signed["signing_key_fingerprint"])
        self.assertEqual(64, len(base64.b64decode(self.signed["signature"])))
        self.assertNotIn("signature", RECORD)

    def test_every_tampered_field_is_detected(self):
        for field, value in (("serial", "S3Z9NB0X"), ("method", "overwrite"),
                             ("nist_category", "Clear"),
                             ("verification", {"read_back": "...",
                                               "samples": 10,
                                               "result": "failed"}),
                             ("size_bytes", 500107862017),
                             ("extra", True)):
            with self.subTest(field=field):
                tampered = dict(self.signed, **{field: value})
                verdict = evidence.verify_record(tampered, self.public)
                self.assertFalse(verdict.valid)
                self.assertIn("does not match", verdict.reason)
        removed = dict(self.signed)
        del removed["firmware"]
        self.assertFalse(evidence.verify_record(removed, self.public).valid)

    def test_re_ordered_keys_still_verify(self):
        shuffled = json.loads(json.dumps(dict(reversed(list(
            self.signed.items())))))
        self.assertNotEqual(list(shuffled), list(self.signed))
        self.assertTrue(evidence.verify_record(shuffled, self.public).valid)

    def test_wrong_key_is_invalid(self):
        other = ed25519.Ed25519PrivateKey.generate().public_key()
        verdict = evidence.verify_record(self.signed, other)
        self.assertFalse(verdict.valid)
        self.assertIn("names signing key", verdict.reason)

    def test_a_fingerprint_swapped_to_the_checkers_key_is_invalid(self):
        other = ed25519.Ed25519PrivateKey.generate().public_key()
        forged = dict(self.signed, signing_key_fingerprint=evidence
                      .fingerprint(other))
        verdict = evidence.verify_record(forged, other)
        self.assertFalse(verdict.valid)
        self.assertIn("does not match", verdict.reason)

    def test_missing_or_malformed_signature_is_invalid(self):
        unsigned = dict(self.signed)
        del unsigned["signature"]
        self.assertEqual("the record has no signature",
                         evidence.verify_record(unsigned,
                                                self.public).reason)
        for bad in ("not base64!", 12, ""):
            with self.subTest(signature=bad):
                self.assertFalse(evidence.verify_record(
                    dict(self.signed, signature=bad), self.public).valid)
        self.assertFalse(evidence.verify_record(["x"], self.public).valid)

    def test_signing_again_replaces_the_old_signature(self):
        again = evidence.Signer(ed25519.Ed25519PrivateKey.generate()).sign(
            self.signed)
        self.assertFalse(evidence.verify_record(again, self.public).valid)


class KeyFileTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(self.tmp, f))
                                 for f in os.listdir(self.tmp)]
                        and os.rmdir(self.tmp))

    def test_0600_and_0400_keys_load(self):
        for mode in (0o600, 0o400):
            with self.subTest(mode=oct(mode)):
                path, key = write_private_key(self.tmp, mode=mode,
                                              name="k%o.pem" % mode)
                signer = evidence.Signer.from_file(path)
                self.assertEqual(evidence.fingerprint(key.public_key()),
                                 signer.fingerprint)

    def test_group_or_world_readable_key_is_refused(self):
        for mode in (0o640, 0o644, 0o604, 0o700):
            with self.subTest(mode=oct(mode)):
                path, _ = write_private_key(self.tmp, mode=mode)
                with self.assertRaises(evidence.EvidenceKeyError) as caught:
                    evidence.Signer.from_file(path)
                self.assertIn("has mode %04o; it must be 0600 or 0400"
                              % mode, str(caught.exception))

    def test_missing_key_is_refused(self):
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(os.path.join(self.tmp, "none.pem"))
        self.assertIn("does not exist", str(caught.exception))

    def test_symbolic_link_is_refused(self):
        path, _ = write_private_key(self.tmp)
        link = os.path.join(self.tmp, "link.pem")
        os.symlink(path, link)
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(link)
        self.assertIn("symbolic link", str(caught.exception))

    def test_directory_is_refused(self):
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(self.tmp)
        self.assertIn("not a regular file", str(caught.exception))

    def test_foreign_owner_is_refused(self):
        path, _ = write_private_key(self.tmp)
        if os.geteuid() != 0:
            self.skipTest("changing a file's owner needs root")
        os.chown(path, 12345, -1)
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(path)
        self.assertIn("owned by uid 12345", str(caught.exception))

    def test_other_key_types_and_garbage_are_refused(self):
        rsa_key = rsa.generate_private_key(public_exponent=65537,
                                           key_size=1024)
        path, _ = write_private_key(self.tmp, key=rsa_key, name="rsa.pem")
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(path)
        self.assertIn("must be an Ed25519 key", str(caught.exception))
        garbage = os.path.join(self.tmp, "garbage.pem")
        with open(garbage, "w") as stream:
            stream.write("not a key\n")
        os.chmod(garbage, 0o600)
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(garbage)
        self.assertIn("not a PEM private key", str(caught.exception))

    def test_encrypted_key_is_refused(self):
        path, _ = write_private_key(self.tmp, password=b"secret")
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.Signer.from_file(path)
        self.assertIn("is encrypted", str(caught.exception))

    def test_public_key_file(self):
        path, key = write_private_key(self.tmp)
        public = evidence.load_public_key(write_public_key(self.tmp, key))
        self.assertEqual(evidence.fingerprint(key.public_key()),
                         evidence.fingerprint(public))
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            evidence.load_public_key(path)
        self.assertIn("not a PEM public key", str(caught.exception))


class ParseRecordsTest(base.TestCase):
    def test_shapes(self):
        one = {"path": "/dev/sda"}
        self.assertEqual([("record", one)],
                         evidence.parse_records(json.dumps(one)))
        result = {"devices": [one, {"path": "/dev/sdb"}]}
        self.assertEqual(["devices[0]", "devices[1]"],
                         [label for label, _ in
                          evidence.parse_records(json.dumps(result))])
        task = {"state": "complete", "result": result}
        self.assertEqual(2, len(evidence.parse_records(json.dumps(task))))
        lines = json.dumps(one) + "\n\nnot json\n" + json.dumps(one) + "\n"
        self.assertEqual([("line 1", one), ("line 3", None),
                          ("line 4", one)], evidence.parse_records(lines))

    def test_empty_is_an_error(self):
        for text in ("", "\n\n", "[]", '{"devices": []}'):
            with self.subTest(text=text):
                with self.assertRaises(evidence.EvidenceFormatError):
                    evidence.parse_records(text)
