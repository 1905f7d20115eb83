"""The one backoff policy."""

from teeth_agent import retry
from teeth_agent.runtime import agent
from tests import base


class BackoffTest(base.TestCase):

    def test_doubles_up_to_the_maximum(self):
        backoff = retry.Backoff(1.0, 5.0)
        self.assertEqual([1.0, 2.0, 4.0, 5.0, 5.0],
                         [backoff.next_delay() for _ in range(5)])
        backoff.reset()
        self.assertEqual(1.0, backoff.next_delay())

    def test_zero_never_waits(self):
        backoff = retry.Backoff(0, 30.0)
        self.assertEqual([0, 0, 0], [backoff.next_delay() for _ in range(3)])

    def test_initial_above_the_maximum_is_capped(self):
        self.assertEqual(30.0, retry.Backoff(100.0, 30.0).next_delay())

    def test_jitter_draws_from_half_to_full(self):
        low = retry.Backoff(2.0, 8.0, jitter=True, rng=lambda: 0.0)
        high = retry.Backoff(2.0, 8.0, jitter=True, rng=lambda: 1.0)
        self.assertEqual([1.0, 2.0, 4.0, 4.0],
                         [low.next_delay() for _ in range(4)])
        self.assertEqual([2.0, 4.0, 8.0, 8.0],
                         [high.next_delay() for _ in range(4)])

    def test_the_agent_reconnect_policy_is_built_on_it(self):
        self.assertTrue(issubclass(agent.Backoff, retry.Backoff))
