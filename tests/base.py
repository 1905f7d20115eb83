"""Test bases shared by the unit tests.

:class:`TestCase` blocks every external process: a unit test that reaches
``teeth_agent.processes`` without mocking it, or starts a program any other
way (``subprocess``, ``os.system``, ``os.exec*``, ``os.spawn*``,
``os.posix_spawn*``, ``pty.spawn``, asyncio), fails loudly instead of running
a tool on the machine. The blocking itself is
:func:`teeth_agent.hardware.testing.block_processes`, shared with the vendor
test kit.
"""

import threading
import unittest
from unittest import mock

from teeth_agent.hardware import testing
from teeth_agent import processes

BlockedProcess = testing.BlockedProcess

#: How a unit test of the project fakes a tool, said by every block.
HINT = ("fake the tool by mocking teeth_agent.processes.execute, run or "
        "open_pipe (or patching processes._spawn/_open) in the test; a test "
        "that really needs the program belongs in tests/functional")


#: See :func:`teeth_agent.hardware.testing.make_conf`.
make_conf = testing.make_conf


class TestCase(unittest.TestCase):
    """Blocks every way of starting a program (see the module docstring);
    ``self.process_block`` is the :class:`testing.ProcessBlock`."""

    def setUp(self):
        super().setUp()
        block = testing.block_processes(self, HINT)

        def blocked(argv, *args):
            raise block.refuse("unit tests must not run external tools: "
                               "processes.execute(%s) was blocked; %s"
                               % (" ".join(argv), HINT))

        def blocked_pipe(argv, *args):
            raise block.refuse("unit tests must not run external tools: "
                               "processes.open_pipe(%s) was blocked; %s"
                               % (" ".join(argv), HINT))

        patcher = mock.patch.object(processes, "_spawn", blocked)
        patcher.start()
        self.addCleanup(patcher.stop)
        pipe_patcher = mock.patch.object(processes, "_open", blocked_pipe)
        pipe_patcher.start()
        self.addCleanup(pipe_patcher.stop)


def prune_at_once(stores, older_than, timeout):
    """``store.prune_tasks(older_than)`` of every store at the same time,
    one thread each (each store's engine disposed after); returns the
    results and the exceptions raised."""
    results, errors = [], []

    def prune(store):
        try:
            results.append(store.prune_tasks(older_than))
        except Exception as exc:
            errors.append(exc)
        finally:
            store.engine.dispose()
    threads = [threading.Thread(target=prune, args=(store,))
               for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results, errors
