"""The agent's method table, task reporting and log forwarding, with the
agent and an endpoint connected through an in-process socket pair."""

import logging
import time
from unittest import mock

from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import extensions
from teeth_agent.extensions import base as ext_base
from teeth_agent import hardware
from teeth_agent.hardware import power
from teeth_agent import params
from teeth_agent import protocol
from teeth_agent.runtime import agent as agent_mod
from teeth_agent.runtime import logforward
from teeth_agent import tasks
from teeth_agent import transport
from tests import base


class FakeManager(hardware.HardwareManager):
    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.GENERIC


class Work(ext_base.Extension):
    @ext_base.command(params={"word": params.String(required=True)})
    def shout(self, word):
        return {"word": word.upper()}

    @ext_base.task_command(params={"steps": params.Integer(minimum=1,
                                                           required=True),
                                   "fail": params.Boolean(default=False)},
                           exclusive=True, validator="validate_grind")
    def grind(self, task, steps, fail):
        for step in range(steps):
            task.progress(done=step + 1, total=steps)
        if fail:
            raise tasks.TaskFailed("ground to a halt")
        return {"steps": steps}

    def validate_grind(self, steps, fail):
        if steps > 1000:
            raise protocol.InvalidParams("steps: too many for this machine",
                                         details={"param": "steps"})
        return {"steps": steps, "fail": fail}


def make_agent(conf, registry=None):
    dispatcher = hardware.build_dispatcher([("fake", FakeManager)], conf)
    if registry is None:
        registry = tasks.TaskRegistry()
    controller = power.PowerController(simulate=True)
    context = ext_base.ExtensionContext(conf, dispatcher, registry,
                                        controller, "agent-1")
    loaded = extensions.instantiate([("work", Work)], context)
    return agent_mod.Agent(conf, dispatcher, loaded, registry, controller,
                           "agent-1", hardware_summary={"macs": []})


class DispatchTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(task_status_interval=0.0)
        self.agent = make_agent(self.conf)

    def call(self, method, params):
        return self.agent.dispatch(None, protocol.Command("1", method,
                                                          params))

    def test_core_methods(self):
        self.assertEqual({"a": [1]}, self.call("ping", {"a": [1]}))
        status = self.call("status", {})
        for key in ("agent_id", "agent_version", "uptime", "extensions",
                    "hardware_manager", "tasks"):
            self.assertIn(key, status)
        self.assertEqual({"work": ["work.grind", "work.shout"]},
                         status["extensions"])
        self.assertEqual("fake", status["hardware_manager"][0]["name"])

    def test_unknown_method(self):
        with self.assertRaises(protocol.UnknownMethod):
            self.call("work.nope", {})
        with self.assertRaises(protocol.UnknownMethod):
            self.call("handshake", {})

    def test_handshake_params(self):
        params = self.agent.handshake_params()
        self.assertEqual({"agent_id", "agent_version", "protocol_versions",
                          "hardware", "extensions", "tasks"}, set(params))
        self.assertEqual(["v1"], params["protocol_versions"])

    def test_validation_before_task(self):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.call("work.grind", {"task_id": "t1", "steps": 5000})
        self.assertEqual("steps", caught.exception.details["param"])
        self.assertIsNone(self.agent.tasks.get("t1"))
        with self.assertRaises(protocol.InvalidParams):
            self.call("work.grind", {"task_id": "../t", "steps": 1})
        self.assertEqual([], self.agent.tasks.statuses())


class BackoffTest(base.TestCase):
    def test_doubles_with_jitter_up_to_cap(self):
        backoff = agent_mod.Backoff(0.5, 4.0, rng=lambda: 1.0)
        self.assertEqual([0.5, 1.0, 2.0, 4.0, 4.0],
                         [backoff.next_delay() for _ in range(5)])
        backoff.reset()
        low = agent_mod.Backoff(0.5, 4.0, rng=lambda: 0.0)
        self.assertEqual(0.25, low.next_delay())
        self.assertEqual(0.5, backoff.next_delay())

    def test_parse_endpoint(self):
        self.assertEqual(("10.0.2.100", 9999),
                         agent_mod.parse_endpoint("10.0.2.100:9999"))
        self.assertEqual(("::1", 80), agent_mod.parse_endpoint("[::1]:80"))
        for bad in ("host", "host:0", "host:x", ":80"):
            self.assertRaises(ValueError, agent_mod.parse_endpoint, bad)


class LogHandlerTest(base.TestCase):
    def test_bounded_buffer_reports_drops(self):
        handler = logforward.ForwardingLogHandler(capacity=2)
        logger = logging.getLogger("teeth_agent.test_forward")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        logger.propagate = False
        self.addCleanup(setattr, logger, "propagate", True)
        for i in range(5):
            logger.warning("record %d", i)
        first = handler.pop()
        self.assertEqual(3, first["dropped"])
        self.assertEqual("record 3", handler.pop()["message"])
        self.assertEqual("record 4", handler.pop()["message"])
        self.assertIsNone(handler.pop())

    def test_transport_records_are_not_forwarded(self):
        handler = logforward.ForwardingLogHandler(capacity=10)
        handler.emit(logging.LogRecord("teeth_agent.transport", 30, "", 0,
                                       "loop", (), None))
        self.assertIsNone(handler.pop())


class LogHandlerSubscriberTest(base.TestCase):
    """The handler tells every subscriber; a second agent attached does
    not silence the first, and a replaced handler is let go."""

    def record(self, handler, message="m"):
        handler.emit(logging.LogRecord("teeth_agent.x", 30, "", 0, message,
                                       (), None))

    def test_every_subscriber_is_told(self):
        handler = logforward.ForwardingLogHandler(capacity=10)
        first, second = [], []
        handler.subscribe(lambda: first.append(1))
        handler.subscribe(lambda: second.append(1))
        self.record(handler)
        self.assertEqual([1], first)
        self.assertEqual([1], second)

    def test_unsubscribe(self):
        handler = logforward.ForwardingLogHandler(capacity=10)
        heard = []

        def listener():
            heard.append(1)
        handler.subscribe(listener)
        handler.unsubscribe(listener)
        self.record(handler)
        self.assertEqual([], heard)
        self.assertEqual("m", handler.pop()["message"])
        with self.assertRaises(ValueError):
            handler.unsubscribe(listener)

    def test_attaching_another_handler_lets_go_of_the_first(self):
        agent = make_agent(base.make_conf())
        old = logforward.ForwardingLogHandler(capacity=10)
        new = logforward.ForwardingLogHandler(capacity=10)
        with mock.patch.object(agent, "_wake") as wake:
            agent.attach_log_handler(old)
            agent.attach_log_handler(new)
            self.record(old)
            wake.assert_not_called()
            self.record(new)
            wake.assert_called_once_with(agent._log_wake)

    def test_the_agent_subscribes_to_its_registry(self):
        registry = tasks.TaskRegistry()
        heard = []
        registry.subscribe(lambda task: heard.append(task.task_id))
        agent = make_agent(base.make_conf(), registry=registry)
        with mock.patch.object(agent, "_wake") as wake:
            task, _ = registry.start("t1", "x", lambda task: {})
            deadline = time.monotonic() + 10
            while not task.terminal or len(heard) < 2:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.005)
        self.assertEqual(["t1", "t1"], heard)
        wake.assert_any_call(agent._status_wake)


class InMemoryLinkTest(base.TestCase):
    """Agent and endpoint on the two ends of a socket pair."""

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(task_status_interval=0.0)
        self.agent = make_agent(self.conf)
        self.agent.bridge.start()
        self.addCleanup(self.agent.bridge.stop)
        self.endpoint = endpoint_mod.Endpoint(port=0)
        self.updates = []
        self.endpoint.subscribe(
            lambda event, agent, data: self.updates.append((event, data)))
        agent_sock, server_sock = transport.socketpair()
        self.endpoint._on_socket(server_sock, "memory")
        self.link = transport.Connection(agent_sock, self.agent.dispatch,
                                         name="endpoint").start()
        self.addCleanup(self.link.close)
        self.link.call("handshake", self.agent.handshake_params())
        self.reporter = transport.spawn(self.agent._report_tasks, self.link)
        self.addCleanup(self.reporter.kill)

    def test_task_reported_through_the_link(self):
        result = self.endpoint.call("agent-1", "work.grind",
                                    {"task_id": "t1", "steps": 20})
        self.assertEqual({"task_id": "t1", "state": "running"}, result)
        final = self.endpoint.wait_for_task("agent-1", "t1", timeout=10)
        self.assertEqual({"steps": 20}, final["result"])
        # Duplicate id, same params: current state, no new work.
        again = self.endpoint.call("agent-1", "work.grind",
                                   {"task_id": "t1", "steps": 20})
        self.assertEqual("complete", again["state"])
        # The same id with other params is another command: Conflict.
        with self.assertRaises(transport.RemoteError) as caught:
            self.endpoint.call("agent-1", "work.grind",
                               {"task_id": "t1", "steps": 3})
        self.assertEqual("Conflict", caught.exception.type)
        statuses = [data for event, data in self.updates
                    if event == "task_status"]
        states = [s["state"] for s in statuses]
        self.assertEqual("complete", states[-1])
        self.assertEqual(1, states.count("complete"))
        percents = [s["percent"] for s in statuses if "percent" in s]
        self.assertEqual(sorted(percents), percents)
        transport.sleep(0.1)
        self.assertTrue(self.agent.tasks.get("t1").acknowledged.is_set())

    def test_failed_task_and_sync_command(self):
        self.assertEqual({"word": "HI"}, self.endpoint.call(
            "agent-1", "work.shout", {"word": "hi"}))
        self.endpoint.call("agent-1", "work.grind",
                           {"task_id": "t2", "steps": 2, "fail": True})
        final = self.endpoint.wait_for_task("agent-1", "t2", timeout=10)
        self.assertEqual("error", final["state"])
        self.assertEqual("ground to a halt", final["msg"])
        with self.assertRaises(transport.RemoteError) as caught:
            self.endpoint.call("agent-1", "work.shout", {"word": 5})
        self.assertEqual("InvalidParams", caught.exception.type)
        self.assertEqual(-32602, caught.exception.code)
