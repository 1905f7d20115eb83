"""Test bases shared by the unit tests.

:class:`TestCase` blocks every external process: a unit test that reaches
``teeth_agent.processes`` without mocking it fails loudly instead of running
a tool on the machine.
"""

import unittest
from unittest import mock

from teeth_agent.hardware import testing
from teeth_agent import processes


class BlockedProcess(AssertionError):
    pass


def _blocked(argv, *args, **kwargs):
    raise BlockedProcess("unit tests must not run external tools: %s"
                         % " ".join(argv))


#: See :func:`teeth_agent.hardware.testing.make_conf`.
make_conf = testing.make_conf


class TestCase(unittest.TestCase):
    def setUp(self):
        super().setUp()
        patcher = mock.patch.object(processes, "_spawn", _blocked)
        patcher.start()
        self.addCleanup(patcher.stop)
        pipe_patcher = mock.patch.object(
            processes, "_open", lambda argv, *args: _blocked(argv))
        pipe_patcher.start()
        self.addCleanup(pipe_patcher.stop)
