"""transport.hub: timers the hub can always arm."""

import socket
import threading
import time

from teeth_agent.transport import hub
from tests import base


class LongTimerTest(base.TestCase):
    def test_a_timer_longer_than_epoll_takes_does_not_stop_the_hub(self):
        # The only pending timer is 10**7 s (115 days: more milliseconds
        # than epoll's C int holds). Unbounded, the hub's poll raised
        # OverflowError and every green thread stopped with it.
        reader, writer = socket.socketpair()
        self.addCleanup(reader.close)
        self.addCleanup(writer.close)
        threading.Timer(0.2, writer.sendall, (b"x",)).start()
        green_reader = hub.eventlet.green.socket.socket(fileno=reader.detach())
        self.addCleanup(green_reader.close)
        with hub.Timeout(10 ** 7, False):
            self.assertEqual(b"x", green_reader.recv(1))

    def test_bounded(self):
        self.assertIsNone(hub.bounded(None))
        self.assertEqual(5.0, hub.bounded(5))
        self.assertEqual(hub.MAX_WAIT, hub.bounded(10 ** 9))
        self.assertLess(hub.MAX_WAIT * 1000, 2 ** 31)

    def test_long_sleep_and_event_wait_are_bounded_too(self):
        event = hub.Event()
        hub.spawn_after(0.05, event.set)
        started = time.monotonic()
        self.assertTrue(event.wait(10 ** 8))
        self.assertLess(time.monotonic() - started, 60)
