"""Every tool run on the tenant's ESP or kernel (mdir, mmd, mcopy,
sbverify) goes through the same prlimit bounds; what a bounded run's
failure becomes."""

from unittest import mock

from teeth_agent.images import uefi
from teeth_agent import processes
from tests import base

LIMITS = ("prlimit", "--cpu=%d" % uefi.MDIR_CPU_SECONDS,
          "--as=%d" % uefi.MDIR_ADDRESS_SPACE)


class FakePipe:
    """What open_pipe returns, with an empty listing."""

    class Stream:
        def read(self, size):
            return b""

        def close(self):
            pass

    def __init__(self):
        self.stdout = self.Stream()

    def finish(self, timeout, check):
        return 0, ""

    def kill(self):
        pass


class LimitsTest(base.TestCase):

    def run_answers(self, *answers):
        calls = []
        answers = list(answers)

        def run(*argv, **kwargs):
            calls.append((argv, kwargs))
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        patcher = mock.patch.object(processes, "run", side_effect=run)
        patcher.start()
        self.addCleanup(patcher.stop)
        return calls

    def test_mdir_mmd_mcopy_and_sbverify_share_the_bounds(self):
        pipes = []

        def open_pipe(*argv, **kwargs):
            pipes.append(argv)
            return FakePipe()
        calls = self.run_answers((0, "", ""), (0, "", ""),
                                 (0, "signature 1\n", ""))
        with mock.patch.object(processes, "open_pipe",
                               side_effect=open_pipe):
            uefi.list_directory("/dev/loop9p1", "/EFI")
        uefi._mtools("mmd", "-i", "/dev/loop9p1", "::/EFI/debian")
        uefi._mtools("mcopy", "-o", "-i", "/dev/loop9p1", "/s", "::/EFI/x")
        self.assertTrue(uefi.kernel_signed("/w/kernel"))
        self.assertEqual(LIMITS, pipes[0][:3])
        self.assertIn("mdir", pipes[0])
        self.assertEqual(
            [LIMITS + ("mmd", "-i", "/dev/loop9p1", "::/EFI/debian"),
             LIMITS + ("mcopy", "-o", "-i", "/dev/loop9p1", "/s",
                       "::/EFI/x"),
             LIMITS + ("sbverify", "--list", "/w/kernel")],
            [argv for argv, _ in calls])
        # mtools keep their environment and the timeouts stay.
        self.assertEqual("/dev/null", calls[0][1]["env"]["MTOOLSRC"])
        self.assertEqual(300, calls[1][1]["timeout"])
        self.assertEqual(60, calls[2][1]["timeout"])

    def test_a_bounded_mtools_failure(self):
        self.run_answers(
            # prlimit could not find mcopy.
            (127, "", "prlimit: failed to execute mcopy: No such file or "
                      "directory\n"),
            # mcopy killed at its CPU limit (SIGXCPU).
            (-24, "", ""),
            (1, "", "Disk full\n"),
            processes.ToolNotFound(["prlimit"]),
            processes.ProcessError(["prlimit"], None, reason="timed out"))
        with self.assertRaises(processes.ToolNotFound) as caught:
            uefi._mtools("mcopy", "-o", "-i", "/d", "/s", "::/x")
        self.assertIn("mcopy is not installed", str(caught.exception))
        for expected in ("exit status -24", "Disk full"):
            with self.assertRaises(uefi.EspError) as caught:
                uefi._mtools("mcopy", "-o", "-i", "/d", "/s", "::/x")
            self.assertIn(expected, str(caught.exception))
            self.assertIn("mcopy failed on the EFI system partition",
                          str(caught.exception))
        with self.assertRaises(processes.ToolNotFound):
            uefi._mtools("mmd", "-i", "/d", "::/x")
        with self.assertRaises(uefi.EspError) as caught:
            uefi._mtools("mmd", "-i", "/d", "::/x")
        self.assertIn("timed out", str(caught.exception))

    def test_a_bounded_sbverify_that_cannot_tell(self):
        self.run_answers(
            (127, "", "prlimit: failed to execute sbverify: No such file\n"),
            (-24, "", ""),
            (0, "", "No signature table present\n"))
        self.assertIsNone(uefi.kernel_signed("/k"))
        self.assertIsNone(uefi.kernel_signed("/k"))
        self.assertFalse(uefi.kernel_signed("/k"))
