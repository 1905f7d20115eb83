"""The live-update streams: coalescing, bounds, slow clients."""

import json
from unittest import mock

from teeth_agent.endpoint.web import events
from teeth_agent.endpoint.web import records
from teeth_agent.endpoint.web import views
from tests import base
from tests.unit.endpoint.web import fakes


def decode(data):
    lines = data.decode("ascii").split("\n")
    assert lines[0].startswith("event: ") and lines[1].startswith("data: ")
    assert lines[2:] == ["", ""], lines
    return lines[0][len("event: "):], json.loads(lines[1][len("data: "):])


class TestEventStream(base.TestCase):
    def setUp(self):
        super().setUp()
        self.fleet = fakes.Fleet()
        self.book = records.ErasureBook(self.fleet.endpoint).attach()
        self.dropped = []
        self.stream = events.EventStream(
            self.fleet.endpoint,
            views.DashboardView(self.fleet.endpoint), self.book,
            max_clients=2, queue_size=10,
            on_drop=lambda: self.dropped.append(1))
        # Not started: no flusher, the test flushes by hand.
        self.fleet.endpoint.subscribe(self.stream.on_event)
        self.book.subscribe(self.stream.on_erasures)

    def test_the_first_event_is_the_whole_picture(self):
        self.fleet.connect("a")
        client = self.stream.open()
        event, state = decode(client.next(0))
        self.assertEqual("state", event)
        self.assertEqual(["a"], [a["agent_id"] for a in state["agents"]])

    def test_a_chatty_task_is_sent_once_per_batch(self):
        self.fleet.connect("a")
        client = self.stream.open()
        client.next(0)
        for n in range(1000):
            self.fleet.task("a", "t", "running", percent=n / 10.0)
        self.stream.flush()
        event, batch = decode(client.next(0))
        self.assertEqual("batch", event)
        self.assertEqual([99.9], [t["percent"] for t in batch["tasks"]])
        self.assertIsNone(client.next(0))

    def test_log_floods_are_cut_to_the_newest(self):
        self.fleet.connect("a")
        client = self.stream.open()
        client.next(0)
        for n in range(events.MAX_BATCH_LOGS + 50):
            self.fleet.log("a", "line %d" % n)
        self.stream.flush()
        _, batch = decode(client.next(0))
        self.assertEqual(events.MAX_BATCH_LOGS, len(batch["logs"]))
        self.assertEqual("line %d" % (events.MAX_BATCH_LOGS + 49),
                         batch["logs"][-1]["message"])
        self.assertEqual(50, batch["logs_dropped"])

    def test_a_client_that_falls_behind_is_dropped_not_waited_for(self):
        self.fleet.connect("a")
        slow = self.stream.open()
        fast = self.stream.open()
        for n in range(30):
            self.fleet.task("a", "t", "running", percent=float(n))
            self.stream.flush()
            fast.next(0)  # the fast one keeps reading
        self.assertTrue(slow.dropped.is_set())
        self.assertFalse(fast.dropped.is_set())
        self.assertEqual({fast}, self.stream.clients)
        self.assertIsNone(slow.next(0))
        self.assertEqual([1], self.dropped)
        # Its slot is free again.
        self.stream.open()

    def test_without_clients_changes_are_forgotten_unbuilt(self):
        self.fleet.connect("a")
        self.fleet.task("a", "t", "running", percent=1.0)
        self.fleet.log("a", "x")
        with mock.patch.object(self.stream.view, "agent_row") as row:
            self.stream.flush()
        row.assert_not_called()
        client = self.stream.open()
        client.next(0)
        self.stream.flush()
        _, batch = decode(client.next(0))
        self.assertEqual(([], [], []), (batch["agents"], batch["tasks"],
                                        batch["logs"]))  # nothing left over

    def test_clients_are_bounded(self):
        self.stream.open()
        self.stream.open()
        with self.assertRaises(events.TooManyClients):
            self.stream.open()
        self.assertEqual([1], self.dropped)

    def test_forgotten_agents_and_new_erasures(self):
        self.fleet.connect("a")
        client = self.stream.open()
        client.next(0)
        self.fleet.task("a", "e", "complete", method="decom.disk_erase",
                        result=fakes.erase_result(("/dev/sdb", "erased", 1)))
        self.fleet.disconnect("a")
        self.fleet.endpoint.forget("a")
        self.stream.flush()
        _, batch = decode(client.next(0))
        self.assertEqual(["a"], batch["forgotten"])
        self.assertEqual([], batch["agents"])
        self.assertEqual(["/dev/sdb"], [r["path"] for r in batch["erasures"]])

    def test_too_many_changes_ask_for_a_resync(self):
        client = self.stream.open()
        client.next(0)
        for n in range(events.MAX_BATCH_ROWS + 1):
            self.stream._agents.add("agent-%d" % n)
        self.stream.flush()
        _, batch = decode(client.next(0))
        self.assertTrue(batch["resync"])
        self.assertEqual([], batch["agents"])

    def test_no_line_break_or_markup_hides_in_an_event(self):
        data = events.encode("batch", {"x": "a\nb\r\nc\u2028</script>&"})
        self.assertEqual(3, data.count(b"\n"))
        self.assertNotIn(b"\r", data)
        self.assertNotIn(b"<", data)
        self.assertEqual({"x": "a\nb\r\nc\u2028</script>&"},
                         decode(data)[1])
