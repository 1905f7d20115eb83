"""docs/operators.md, run: every ``sh`` block of the guide, in order.

The blocks run with bash (``-e -o pipefail``) against real processes on
127.0.0.1: a throwaway CA made by the guide itself, a real ``teeth-endpoint
serve`` and a real ``teeth-agent`` with the ``decom`` extension erasing two
loop devices. Only the machine's own places are moved out of the way, by
text substitution (listed in the guide's introduction): the directories
under a temporary one, 127.0.0.1 for the endpoint's address, a free port,
loop devices for ``/dev/sdb`` and ``/dev/sdc``. A block that would still
name a host disk or a host directory after that is refused before anything
runs.

In a block, ``# expect: REGEX`` lines must each match its output (stdout
and stderr); in a ``sh background`` block (a server started and left
running) ``# wait for: REGEX`` is waited for in its output. A block marked
``sh requires=COMMAND`` needs a ``teeth-endpoint COMMAND``: when that
command does not exist, the test fails naming it (after every other block
ran); nothing in the guide is skipped. The guide's last block stops every
process it started: the test sends no signal, it checks that each exited
0 and logged why, and that the endpoints removed their control sockets.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from tests.functional import harness
from tests.functional import loopdev

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "docs", "operators.md")
BLOCK = re.compile(r"^```sh([^\n]*)\n(.*?)^```", re.M | re.S)
#: What must not be left in a command after the substitutions.
FORBIDDEN = re.compile(r"/dev/(sd|vd|nvme|hd|xvd)|/etc/teeth|/var/lib/teeth|"
                       r"/run/teeth|192\.0\.2\.")
WAIT = 90


def blocks(text):
    """``[(kind, requires, script)]`` of the guide's sh blocks."""
    found = []
    for match in BLOCK.finditer(text):
        words = match.group(1).split()
        requires = [word.split("=", 1)[1] for word in words
                    if word.startswith("requires=")]
        kind = "background" if "background" in words else "run"
        found.append((kind, requires, match.group(2)))
    return found


def directives(script, name):
    return [line.split(":", 1)[1].strip() for line in script.splitlines()
            if line.strip().startswith("# %s:" % name)]


class OperatorsGuideTest(unittest.TestCase):
    def setUp(self):
        loopdev.require_root(self)
        self.dir = tempfile.mkdtemp(prefix="teeth-guide-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        disks = [self.loops.create(32 * 1024 * 1024, name="sd%s.img" % x,
                                   fill="random") for x in "bc"]
        self.disks = disks
        port = harness.free_port()
        self.substitutions = [
            ("/etc/teeth-endpoint", os.path.join(self.dir, "etc-endpoint")),
            ("/etc/teeth-agent", os.path.join(self.dir, "etc-agent")),
            ("/var/lib/teeth-endpoint",
             os.path.join(self.dir, "var-endpoint")),
            ("/var/lib/teeth-agent", os.path.join(self.dir, "var-agent")),
            ("/run/teeth-endpoint", os.path.join(self.dir, "run")),
            ("192.0.2.10", "127.0.0.1"),
            ("9999", str(port)),
            ("9998", str(harness.free_port())),
            ("8780", str(harness.free_port())),
            ("/dev/sdb", disks[0]),
            ("/dev/sdc", disks[1]),
        ]
        os.makedirs(os.path.join(self.dir, "etc-agent", "tls"))
        bin_dir = os.path.dirname(sys.executable)
        self.env = harness.plugin_env({
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": ROOT})
        self.background = []

    def substitute(self, script):
        for old, new in self.substitutions:
            script = script.replace(old, new)
        leftover = FORBIDDEN.search(script)
        if leftover:
            raise AssertionError("refusing to run a guide block that names "
                                 "%r after substitution:\n%s"
                                 % (leftover.group(), script))
        return script

    def command_exists(self, name):
        done = subprocess.run(
            ["teeth-endpoint", name, "--help"], capture_output=True,
            text=True, env=self.env, cwd=self.dir, timeout=120,
            stdin=subprocess.DEVNULL)
        return done.returncode == 0

    def run_block(self, script):
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            capture_output=True, text=True, env=self.env, cwd=self.dir,
            timeout=300, stdin=subprocess.DEVNULL)
        output = done.stdout + done.stderr
        self.assertEqual(0, done.returncode, "guide block failed (%d):\n%s"
                         "\n--- output ---\n%s"
                         % (done.returncode, script, output))
        for pattern in directives(script, "expect"):
            self.assertRegex(output, re.compile(pattern, re.M),
                             "guide block:\n%s" % script)

    def start_block(self, script):
        log_path = os.path.join(self.dir, "background-%d.log"
                                % len(self.background))
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            ["bash", "-e", "-c", "exec " + script.strip().splitlines()[0]],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(self.stop, process)
        self.background.append((process, log_path))

        def output():
            with open(log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        for pattern in directives(script, "wait for"):
            deadline = time.monotonic() + WAIT
            while not re.search(pattern, output()):
                if process.poll() is not None or time.monotonic() > deadline:
                    self.fail("%r never appeared (exit %s):\n%s"
                              % (pattern, process.poll(), output()[-4000:]))
                time.sleep(0.2)
        return output

    @staticmethod
    def stop(process):
        if process.poll() is None:
            process.kill()
            process.wait(10)

    def test_every_command_of_the_guide(self):
        with open(GUIDE, encoding="utf-8") as handle:
            found = blocks(handle.read())
        self.assertGreater(len(found), 10)
        left_out = []
        outputs = []
        for kind, requires, script in found:
            missing = [name for name in requires
                       if not self.command_exists(name)]
            if missing:
                left_out.extend(missing)
                continue
            script = self.substitute(script)
            if kind == "background":
                outputs.append(self.start_block(script))
            else:
                self.run_block(script)
        # The erase the guide ran really erased both disks.
        for disk in self.disks:
            with open(self.loops.backing_file(disk), "rb") as stream:
                data = stream.read()
            self.assertEqual(len(data), data.count(0), disk)
        # The guide's last block stopped every process it started (no
        # signal is sent here: one that is still running fails the test):
        # each exits 0 and logs why, and each endpoint removes its control
        # socket.
        for process, _ in self.background:
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                code = "still running"
            self.assertEqual(0, code, process.args)
        for output in outputs:
            self.assertRegex(output(), r"shutting down: SIGTERM received")
        for name in ("control.sock", "control-2.sock"):
            self.assertFalse(os.path.exists(os.path.join(self.dir, "run",
                                                         name)), name)
        self.assertEqual([], left_out, "the guide names teeth-endpoint "
                         "commands that do not exist")
