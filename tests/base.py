"""Test bases shared by the unit tests.

:class:`TestCase` blocks every external process: a unit test that reaches
``teeth_agent.processes`` without mocking it fails loudly instead of running
a tool on the machine.
"""

import unittest
from unittest import mock

from oslo_config import cfg

from teeth_agent import conf as teeth_conf
from teeth_agent import processes


class BlockedProcess(AssertionError):
    pass


def _blocked(argv, *args, **kwargs):
    raise BlockedProcess("unit tests must not run external tools: %s"
                         % " ".join(argv))


def make_conf(**overrides):
    """A fresh ConfigOpts with every agent option registered.

    ``overrides`` maps ``"group.name"`` (or ``"name"`` for DEFAULT) to a
    value.
    """
    conf = cfg.ConfigOpts()
    teeth_conf.register_agent_opts(conf)
    teeth_conf.register_endpoint_opts(conf)
    conf([], project="teeth-agent", default_config_files=[],
         default_config_dirs=[])
    # Unit tests never create the default /var/lib/teeth-endpoint.
    overrides.setdefault("endpoint.state_dir", "")
    for key, value in overrides.items():
        group, _, name = key.rpartition(".")
        conf.set_override(name, value, group=group or None)
    return conf


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
