"""The one backoff policy: how long to wait before the next try.

Used by the download retries
(:class:`teeth_agent.fetch.http_source.HTTPSource`,
which also carries the firmware downloads) and by the agent's reconnects
(:class:`teeth_agent.runtime.agent.Backoff` adds its reset-after-a-stable-link
rule on top).
"""

import random


class Backoff:
    """Exponential backoff: the delay doubles from ``initial`` and is capped
    at ``maximum``; with ``jitter``, each delay is drawn from [d/2, d] (by
    ``rng``, a callable returning a float in [0, 1)), so that many waiters
    do not retry in step. An ``initial`` of 0 never waits.
    """

    def __init__(self, initial, maximum, jitter=False, rng=random.random):
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng
        self._current = initial

    def reset(self):
        """Start again from ``initial``."""
        self._current = self.initial

    def next_delay(self):
        """The seconds to wait before the next try."""
        delay = min(self._current, self.maximum)
        if self.jitter:
            delay *= 0.5 + 0.5 * self._rng()
        self._current = min(self._current * 2, self.maximum)
        return delay
