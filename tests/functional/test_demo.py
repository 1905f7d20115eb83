"""The README's first command ends in tools/demo.py: it must keep working.

Runs the demo as a new user would (a child process, the whole cycle on loop
devices when root) and checks that it reports every step and leaves no
loop device, process or directory behind.
"""

import os
import re
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def backing_files():
    """``{loop device: backing file}`` of every attached loop device."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output",
                          "NAME,BACK-FILE"], capture_output=True, text=True,
                         check=False).stdout
    return dict(line.split(None, 1) for line in out.splitlines()
                if len(line.split(None, 1)) == 2)


class DemoTest(unittest.TestCase):
    def test_demo_runs_the_whole_cycle_and_cleans_up(self):
        if os.geteuid() != 0:
            self.skipTest("the demo's cycle needs root for loop devices")
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "demo.py")],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
            check=False)
        output = result.stdout + result.stderr
        self.assertEqual(0, result.returncode, output[-4000:])
        for step in ("handshake", "ping", "status", "decom.qc",
                     "decom.disk_erase", "standbye.cache_images",
                     "standbye.prepare_image", "standbye.run_image"):
            self.assertIn("== %s" % step, output)
        for task in ("demo-qc", "demo-erase", "demo-cache", "demo-prepare",
                     "demo-run"):
            self.assertRegex(output, r"%s: complete" % re.escape(task))
        self.assertRegex(output, r"listening on 127\.0\.0\.1:\d+ over TLS")
        self.assertRegex(output, r"connected after .* over TLSv1\.[23]")
        self.assertIn("first MiB reads back as zeroes: True", output)
        self.assertIn("device content equals the image: True", output)
        self.assertIn('"method": "kexec"', output)
        used = re.search(r"loop devices for the agent: .* \(files in (.*)\)",
                         output)
        self.assertIsNotNone(used, output[-2000:])
        left = [device for device, backing in backing_files().items()
                if backing.startswith(used.group(1) + "/")]
        self.assertEqual([], left, "the demo left loop devices attached")
        self.assertFalse(os.path.exists(used.group(1)))
