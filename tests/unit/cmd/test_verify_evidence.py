"""``teeth-agent verify-evidence``: one line per record, exit 0/1/2."""

import io
import json
import os
import shutil
import tempfile

from cryptography.hazmat.primitives.asymmetric import ed25519

from teeth_agent.cmd import agent as agent_cmd
from teeth_agent.cmd import verify_evidence
from teeth_agent.hardware import evidence
from tests import base
from tests.unit.hardware import test_evidence


class VerifyEvidenceTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.public = test_evidence.write_public_key(self.tmp, self.key)
        self.signer = evidence.Signer(self.key)

    def write(self, text, name="report.json"):
        path = os.path.join(self.tmp, name)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return path

    def run_cli(self, path, public=None):
        out, err = io.StringIO(), io.StringIO()
        status = verify_evidence.main(
            [path, "--public-key", public or self.public], out, err)
        return status, out.getvalue().splitlines(), err.getvalue()

    def record(self, path, serial):
        return self.signer.sign(dict(test_evidence.RECORD, path=path,
                                     serial=serial))

    def test_a_valid_result_exits_0_with_one_line_per_record(self):
        result = {"devices": [self.record("/dev/sda", "A1"),
                              self.record("/dev/sdb", "B2"),
                              {"path": "/dev/sdz", "outcome": "excluded"}]}
        status, lines, err = self.run_cli(self.write(json.dumps(result)))
        self.assertEqual(0, status, lines)
        self.assertEqual(
            ["devices[0]: /dev/sda serial A1: valid: signature valid",
             "devices[1]: /dev/sdb serial B2: valid: signature valid",
             "devices[2]: /dev/sdz: not an erase record (outcome excluded, "
             "unsigned): nothing to check"],
            lines)
        self.assertEqual("", err)

    def test_a_signed_erase_record_edited_to_skipped_is_invalid(self):
        # Reported "not an erase record" and exit 0 before: the signature
        # of a record is checked whatever its outcome says.
        edited = dict(self.record("/dev/sda", "A1"), outcome="skipped")
        status, lines, _ = self.run_cli(self.write(json.dumps(
            {"devices": [self.record("/dev/sdb", "B2"), edited]})))
        self.assertEqual(1, status)
        self.assertEqual("devices[1]: /dev/sda serial A1: INVALID: the "
                         "signature does not match the record (it was "
                         "changed after signing)", lines[1])

    def test_a_signed_record_skipped_on_its_own_is_verified(self):
        signed = self.signer.sign({"path": "/dev/sdc", "outcome": "skipped",
                                   "reason": "mounted",
                                   "detail": "mounted at /srv"})
        status, lines, _ = self.run_cli(self.write(json.dumps(signed)))
        self.assertEqual((0, ["record: /dev/sdc: valid: signature valid"]),
                         (status, lines))

    def test_an_erase_record_edited_to_skipped_and_unsigned_is_invalid(self):
        edited = dict(self.record("/dev/sda", "A1"), outcome="skipped")
        del edited[evidence.SIGNATURE], edited[evidence.FINGERPRINT]
        status, lines, _ = self.run_cli(self.write(json.dumps(
            [self.record("/dev/sdb", "B2"), edited])))
        self.assertEqual(1, status)
        self.assertTrue(lines[1].startswith(
            "[1]: /dev/sda serial A1: INVALID: the record has no signature, "
            "and its outcome skipped comes with fields only an erase record "
            "has (agent_version, duration_s, ended_at, firmware, "), lines)

    def test_a_signature_removed_from_an_excluded_entry_is_invalid(self):
        # The fingerprint left behind says a signature is expected.
        entry = self.signer.sign({"path": "/dev/sdz", "outcome": "excluded",
                                  "reason": "excluded", "detail": "x"})
        del entry[evidence.SIGNATURE]
        status, lines, _ = self.run_cli(self.write(json.dumps(entry)))
        self.assertEqual((1, ["record: /dev/sdz: INVALID: the record has "
                              "no signature"]), (status, lines))

    def test_a_file_with_nothing_signed_verifies_nothing_and_exits_1(self):
        entries = [{"path": "/dev/sdz", "outcome": "excluded",
                    "reason": "excluded", "detail": "not matched"},
                   {"path": "/dev/sdy", "outcome": "skipped",
                    "reason": "mounted", "detail": "mounted at /mnt"},
                   {"path": "/dev/nvme0n2", "outcome": "skipped",
                    "reason": "mounted", "detail": "mounted at /srv",
                    "covered_by": "/dev/nvme0n1",
                    "namespaces": {"controller": "nvme0", "reset": True}}]
        status, lines, err = self.run_cli(self.write(json.dumps(
            {"result": {"devices": entries}})))
        self.assertEqual(1, status)
        self.assertEqual(3, len(lines))
        self.assertTrue(all(line.endswith(": nothing to check")
                            for line in lines), lines)
        self.assertIn("nothing was verified: the file holds no signed erase "
                      "record, only 3 entries for which no erase was "
                      "attempted", err)
        status, _, err = self.run_cli(self.write(json.dumps(entries[0])))
        self.assertEqual(1, status)
        self.assertIn("only 1 entry for which", err)

    def test_json_lines_with_a_tampered_and_an_unsigned_record_exit_1(self):
        good = self.record("/dev/sda", "A1")
        tampered = dict(self.record("/dev/sdb", "B2"), nist_category="Purge",
                        method="nvme_sanitize_crypto")
        unsigned = dict(test_evidence.RECORD, path="/dev/sdc", serial="C3")
        text = "\n".join(json.dumps(r) for r in (good, tampered, unsigned))
        status, lines, _ = self.run_cli(self.write(text + "\n"))
        self.assertEqual(1, status)
        self.assertEqual(3, len(lines))
        self.assertTrue(lines[0].endswith(": valid: signature valid"))
        self.assertIn("line 2: /dev/sdb serial B2: INVALID: the signature "
                      "does not match", lines[1])
        self.assertEqual("line 3: /dev/sdc serial C3: INVALID: the record "
                         "has no signature", lines[2])

    def test_wrong_public_key_exits_1(self):
        other = test_evidence.write_public_key(
            self.tmp, ed25519.Ed25519PrivateKey.generate(), "other.pub")
        path = self.write(json.dumps(self.record("/dev/sda", "A1")))
        status, lines, _ = self.run_cli(path, other)
        self.assertEqual(1, status)
        self.assertIn("INVALID: the record names signing key", lines[0])

    def test_unusable_inputs_exit_2_with_one_sentence(self):
        status, lines, err = self.run_cli(os.path.join(self.tmp, "none"))
        self.assertEqual((2, []), (status, lines))
        self.assertIn("cannot read", err)
        status, _, err = self.run_cli(self.write(""))
        self.assertEqual(2, status)
        self.assertIn("holds no erase record", err)
        status, _, err = self.run_cli(self.write("{}"),
                                      self.write("x", "bad.pub"))
        self.assertEqual(2, status)
        self.assertIn("is not a PEM public key", err)
        self.assertNotIn("Traceback", err)

    def test_the_agent_command_dispatches_without_reading_config(self):
        path = self.write(json.dumps(self.record("/dev/sda", "A1")))
        self.assertEqual(0, agent_cmd.main(["verify-evidence", path,
                                            "--public-key", self.public]))
