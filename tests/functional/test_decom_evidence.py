"""Signed erase evidence end to end (root only): a key made with the
documented openssl line, a real loop device erased by the agent's code, the
result checked by the ``teeth-agent verify-evidence`` console script.

The loop device is this module's own (tests/functional/loopdev.py), the only
device ``[hardware] device_include`` lets the agent see; it is detached in
cleanup, also after a failure.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent import tasks
from tests import base
from tests.functional import loopdev
from tests.unit.extensions.decom import runner

MIB = 1024 * 1024


def verify(path, public_key):
    """Run the console entry point as an auditor would."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from teeth_agent.cmd import "
         "agent; sys.exit(agent.main())", "verify-evidence", path,
         "--public-key", public_key],
        capture_output=True, text=True, check=False, timeout=120)


class SignedEvidenceTest(unittest.TestCase):
    def setUp(self):
        super().setUp()
        loopdev.require_root()
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.tmp = tempfile.mkdtemp(prefix="teeth-evidence-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.key = os.path.join(self.tmp, "evidence.pem")
        self.public = os.path.join(self.tmp, "evidence.pub")
        # The lines docs/decom.md gives operators.
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519",
                        "-out", self.key], check=True, capture_output=True)
        os.chmod(self.key, 0o600)
        subprocess.run(["openssl", "pkey", "-in", self.key, "-pubout",
                        "-out", self.public], check=True,
                       capture_output=True)

    def test_a_signed_report_verifies_and_a_tampered_one_does_not(self):
        device = self.loops.create(8 * MIB, fill="random")
        conf = base.make_conf(**{"hardware.device_include": [device],
                                 "decom.evidence_key": self.key})
        dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], conf)
        extension, registry, _ = runner.make_extension(conf, dispatcher)
        extension.start()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": [device]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual((8 * MIB, 512, "teeth-agent", "passed"),
                         (entry["size_bytes"], entry["logical_sector_size"],
                          entry["tool"], entry["verification"]["result"]))
        report = os.path.join(self.tmp, "report.json")
        with open(report, "w") as stream:
            json.dump(task.result, stream, indent=2)
        done = verify(report, self.public)
        self.assertEqual(0, done.returncode, done.stdout + done.stderr)
        self.assertEqual(["devices[0]: %s: valid: signature valid" % device],
                         done.stdout.splitlines())
        tampered = os.path.join(self.tmp, "tampered.jsonl")
        with open(tampered, "w") as stream:
            stream.write(json.dumps(dict(entry, nist_category="Purge")) +
                         "\n" + json.dumps(entry) + "\n")
        done = verify(tampered, self.public)
        self.assertEqual(1, done.returncode, done.stdout + done.stderr)
        first, second = done.stdout.splitlines()
        self.assertIn("line 1: %s: INVALID: the signature does not match"
                      % device, first)
        self.assertIn("line 2: %s: valid" % device, second)
