"""The test kits block every way of starting a program.

Each test calls one way with a program that does not exist, so a way the
kit failed to block fails with FileNotFoundError or a non-zero status
instead of running anything. The ways that replace or fork the test process
(``os.exec*``, ``os.spawn*``, ``pty.spawn``, ``fork_exec``) are first
checked to be patched, so a broken kit cannot fork or replace pytest.
"""

import asyncio
import multiprocessing
import os
import pty
import subprocess
from subprocess import Popen as EarlyPopen
import unittest

from teeth_agent.hardware import testing
from teeth_agent import processes
from tests import base

MISSING = "/nonexistent/teeth-test-tool"

# The real calls, taken before any test patched them.
ORIGINALS = {label: getattr(owner, attribute)
             for owner, attribute, label, _ in testing.BLOCKED_CALLS}


def run_case(case_class, name="test"):
    """Run one test of ``case_class``; return the unittest result."""
    result = unittest.TestResult()
    case_class(name).run(result)
    return result


class BlockingMixin:
    """The checks, for both kits; ``hint`` is a phrase each message
    carries."""

    hint = None

    def assertBlocked(self, label, call, *args, **kwargs):
        """``call(*args, **kwargs)`` raises BlockedProcess naming
        ``label``, the program and the hint; the refusal is then
        acknowledged so the test itself passes."""
        with self.assertRaises(testing.BlockedProcess) as caught:
            call(*args, **kwargs)
        message = str(caught.exception)
        self.assertIn(label, message)
        self.assertIn("teeth-test-tool", message)
        self.assertIn(self.hint, message)
        self.assertEqual([message], self.process_block.refused)
        self.process_block.refused.clear()
        return message

    def assertPatched(self, label):
        owner, attribute = [(owner, attribute) for owner, attribute, name, _
                            in testing.BLOCKED_CALLS if name == label][0]
        self.assertIsNot(ORIGINALS[label], getattr(owner, attribute))

    def test_every_listed_call_is_patched(self):
        labels = [label for _, _, label, _ in testing.BLOCKED_CALLS]
        for label in labels:
            self.assertPatched(label)
        expected = {"subprocess.Popen", "os.system", "pty.spawn",
                    "os.execv", "os.execve", "os.execvp", "os.execvpe",
                    "os.execl", "os.execle", "os.execlp", "os.execlpe",
                    "os.spawnv", "os.spawnve", "os.spawnvp", "os.spawnvpe",
                    "os.spawnl", "os.spawnle", "os.spawnlp", "os.spawnlpe",
                    "os.posix_spawn", "os.posix_spawnp",
                    "_posixsubprocess.fork_exec"}
        self.assertEqual(expected, set(labels))

    def test_subprocess_run(self):
        self.assertBlocked("subprocess.Popen", subprocess.run, [MISSING])

    def test_subprocess_call_and_check_call(self):
        self.assertBlocked("subprocess.Popen", subprocess.call, [MISSING])
        self.assertBlocked("subprocess.Popen", subprocess.check_call,
                           [MISSING, "--flag"])

    def test_subprocess_check_output_and_getoutput(self):
        self.assertBlocked("subprocess.Popen", subprocess.check_output,
                           [MISSING])
        self.assertBlocked("subprocess.Popen", subprocess.getoutput,
                           MISSING)

    def test_popen_imported_before_the_test(self):
        self.assertBlocked("subprocess.Popen", EarlyPopen, [MISSING])

    def test_popen_keyword_args(self):
        message = self.assertBlocked("subprocess.Popen", subprocess.Popen,
                                     args=[MISSING, "x"], shell=False)
        self.assertIn("teeth-test-tool x", message)

    def test_os_popen(self):
        self.assertBlocked("subprocess.Popen", os.popen, MISSING)

    def test_os_system(self):
        self.assertBlocked("os.system", os.system, MISSING)

    def test_os_exec(self):
        for name, args in (("execv", (MISSING, [MISSING])),
                           ("execve", (MISSING, [MISSING], {})),
                           ("execvp", (MISSING, [MISSING])),
                           ("execvpe", (MISSING, [MISSING], {})),
                           ("execl", (MISSING, MISSING)),
                           ("execle", (MISSING, MISSING, {})),
                           ("execlp", (MISSING, MISSING)),
                           ("execlpe", (MISSING, MISSING, {}))):
            with self.subTest(name):
                self.assertPatched("os." + name)
                self.assertBlocked("os." + name, getattr(os, name), *args)

    def test_os_spawn(self):
        for name, args in (("spawnv", (MISSING, [MISSING])),
                           ("spawnve", (MISSING, [MISSING], {})),
                           ("spawnvp", (MISSING, [MISSING])),
                           ("spawnvpe", (MISSING, [MISSING], {})),
                           ("spawnl", (MISSING, MISSING)),
                           ("spawnle", (MISSING, MISSING, {})),
                           ("spawnlp", (MISSING, MISSING)),
                           ("spawnlpe", (MISSING, MISSING, {}))):
            with self.subTest(name):
                self.assertPatched("os." + name)
                self.assertBlocked("os." + name, getattr(os, name),
                                   os.P_WAIT, *args)

    def test_os_posix_spawn(self):
        for name in ("posix_spawn", "posix_spawnp"):
            with self.subTest(name):
                self.assertPatched("os." + name)
                self.assertBlocked("os." + name, getattr(os, name), MISSING,
                                   [MISSING], {})

    def test_pty_spawn(self):
        self.assertPatched("pty.spawn")
        self.assertBlocked("pty.spawn", pty.spawn, [MISSING])

    def test_asyncio_subprocess_exec(self):
        self.assertBlocked("subprocess.Popen", asyncio.run,
                           asyncio.create_subprocess_exec(MISSING))

    def test_asyncio_subprocess_shell(self):
        self.assertBlocked("subprocess.Popen", asyncio.run,
                           asyncio.create_subprocess_shell(MISSING))

    def test_multiprocessing_spawn(self):
        self.assertPatched("_posixsubprocess.fork_exec")
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=print)
        with self.assertRaises(testing.BlockedProcess) as caught:
            process.start()
        self.assertIn("_posixsubprocess.fork_exec", str(caught.exception))
        self.assertIn(self.hint, str(caught.exception))
        self.process_block.refused.clear()


class ProjectTestCaseTest(BlockingMixin, base.TestCase):
    """tests/base.py's TestCase, which every unit test of the project
    uses."""

    hint = "tests/functional"

    def test_processes_execute(self):
        message = self.assertBlocked("processes.execute", processes.execute,
                                     MISSING, "--flag")
        self.assertIn("teeth-test-tool --flag", message)

    def test_processes_open_pipe(self):
        self.assertBlocked("processes.open_pipe", processes.open_pipe,
                           MISSING)

    def test_blocked_process_is_the_kit_s(self):
        self.assertIs(testing.BlockedProcess, base.BlockedProcess)


class HardwareManagerTestCaseTest(BlockingMixin,
                                  testing.HardwareManagerTestCase):
    """The vendor kit's test case."""

    hint = "self.tools.answer"

    def test_unanswered_tool(self):
        with self.assertRaises(testing.BlockedProcess) as caught:
            processes.execute(MISSING, "--flag")
        self.assertIn("teeth-test-tool --flag", str(caught.exception))
        self.assertIn("self.tools.answer()", str(caught.exception))
        self.assertEqual([str(caught.exception)], self.process_block.refused)
        self.process_block.refused.clear()

    def test_answered_tool_runs_nothing(self):
        self.tools.answer([MISSING], stdout="canned\n")
        self.assertEqual(("canned\n", ""), processes.execute(MISSING))
        self.assertEqual([[MISSING]], self.tools.calls)
        self.assertEqual([], self.process_block.refused)

    def test_processes_open_pipe(self):
        with self.assertRaises(testing.BlockedProcess) as caught:
            processes.open_pipe(MISSING)
        self.assertIn("processes.open_pipe(%s)" % MISSING,
                      str(caught.exception))
        self.assertIn("mock teeth_agent.processes.open_pipe",
                      str(caught.exception))
        self.process_block.refused.clear()


class SwallowedRefusalTest(base.TestCase):
    """A refusal the code under test catches still fails the test, and the
    patches do not outlive the test."""

    def inner_cases(self, kit):
        class Swallowing(kit):
            def test(self):
                try:
                    subprocess.run([MISSING])
                except Exception:
                    pass

        class Acknowledging(kit):
            def test(self):
                with self.assertRaises(testing.BlockedProcess):
                    os.system(MISSING)
                self.process_block.refused.clear()

        return Swallowing, Acknowledging

    def check_kit(self, kit):
        swallowing, acknowledging = self.inner_cases(kit)
        before = {label: getattr(owner, attribute) for owner, attribute,
                  label, _ in testing.BLOCKED_CALLS}
        result = run_case(swallowing)
        self.assertEqual([], result.errors)
        self.assertEqual(1, len(result.failures), result.failures)
        self.assertIn("the code under test caught the error",
                      result.failures[0][1])
        self.assertIn("subprocess.Popen", result.failures[0][1])
        result = run_case(acknowledging)
        self.assertTrue(result.wasSuccessful(),
                        result.errors + result.failures)
        after = {label: getattr(owner, attribute) for owner, attribute,
                 label, _ in testing.BLOCKED_CALLS}
        self.assertEqual(before, after)
        self.assertEqual([], self.process_block.refused)

    def test_project_kit(self):
        self.check_kit(base.TestCase)

    def test_hardware_kit(self):
        self.check_kit(testing.HardwareManagerTestCase)

    def test_swallowed_unanswered_tool(self):
        class Swallowing(testing.HardwareManagerTestCase):
            def test(self):
                try:
                    processes.execute(MISSING)
                except Exception:
                    pass

        result = run_case(Swallowing)
        self.assertEqual(1, len(result.failures), result.failures)
        self.assertIn("self.tools.answer()", result.failures[0][1])

    def test_block_installed_once_per_test(self):
        block = testing.block_processes(self, "another hint")
        self.assertIs(self.process_block, block)
        self.assertEqual("another hint", block.hint)
        with self.assertRaises(testing.BlockedProcess) as caught:
            os.system(MISSING)
        self.assertIn("another hint", str(caught.exception))
        block.refused.clear()
