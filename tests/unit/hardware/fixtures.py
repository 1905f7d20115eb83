"""Shared bases for the hardware unit tests."""

from teeth_agent.hardware import testing
from tests import base


class FakeMachineTestCase(testing.HardwareManagerTestCase, base.TestCase):
    """A faked machine (see :mod:`teeth_agent.hardware.testing`).

    External tools stay blocked twice over: by ``tests.base`` and by the
    fixture's own canned-answer table.
    """
