"""The command table every server dispatches through (teeth_agent.commands)
and the tables of the agent, the endpoint and the control socket."""

from teeth_agent import commands
from teeth_agent.endpoint import control
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import params
from teeth_agent import protocol
from tests import base
from tests.unit.runtime import test_agent


def command(method, given=None):
    return protocol.Command("1", method, given if given is not None else {})


class Server:
    def __init__(self):
        self.calls = []
        self.commands = commands.CommandTable.of(self)

    @commands.command(params={
        "name": params.String(required=True),
        "items": params.List(params.Integer(minimum=0)),
    })
    def strict(self, context, checked):
        self.calls.append(("strict", context, checked))
        return checked

    @commands.command(name="loose", extra=True, params={
        "count": params.Integer(default=1),
        "note": params.String(default=params.OMIT),
    })
    def _loose(self, context, checked):
        self.calls.append(("loose", context, checked))
        return checked

    def helper(self):
        """Not decorated: not in the table."""


class TestCommandTable(base.TestCase):
    def setUp(self):
        super().setUp()
        self.server = Server()
        self.table = self.server.commands

    def test_of_collects_the_decorated_methods_by_wire_name(self):
        self.assertEqual(["loose", "strict"], self.table.names())
        self.assertIn("loose", self.table)
        self.assertNotIn("_loose", self.table)
        self.assertNotIn("helper", self.table)
        self.assertTrue(self.table.spec("loose").extra)
        self.assertIsNone(self.table.spec("helper"))

    def test_handler_gets_the_context_and_the_checked_params(self):
        result = self.table.dispatch("strict", {"name": "n"}, "ctx")
        self.assertEqual({"name": "n", "items": None}, result)
        self.assertEqual([("strict", "ctx", {"name": "n", "items": None})],
                         self.server.calls)

    def test_unknown_method_names_it(self):
        with self.assertRaises(protocol.UnknownMethod) as caught:
            self.table.dispatch("nope", {}, "ctx")
        self.assertEqual("unknown method nope", caught.exception.msg)
        self.assertEqual({"method": "nope"}, caught.exception.details)

    def test_bad_params_are_refused_before_the_handler_runs(self):
        for raw, path, text in [
                ({}, "name", "name: is required"),
                ({"name": 5}, "name", "name: must be a string"),
                ({"name": "n", "items": [1, -1]}, "items[1]",
                 "items[1]: must be at least 0"),
                ({"name": "n", "other": 1}, "other",
                 "other: unknown parameter")]:
            with self.subTest(raw=raw):
                with self.assertRaises(protocol.InvalidParams) as caught:
                    self.table.dispatch("strict", raw, "ctx")
                self.assertEqual(text, caught.exception.msg)
                self.assertEqual({"param": path}, caught.exception.details)
        self.assertEqual([], self.server.calls)

    def test_extra_params_are_kept_in_the_callers_order(self):
        result = self.table.dispatch("loose", {"z": 1, "count": 3, "a": 2},
                                     "ctx")
        self.assertEqual(["z", "count", "a"], list(result))

    def test_omitted_default_leaves_the_field_out(self):
        self.assertEqual({"count": 1},
                         self.table.dispatch("loose", {}, "ctx"))
        self.assertEqual({"note": "n", "count": 1},
                         self.table.dispatch("loose", {"note": "n"}, "ctx"))

    def test_a_name_is_served_once(self):
        with self.assertRaises(ValueError) as caught:
            self.table.add("strict", self.table.spec("strict"), print)
        self.assertEqual("method strict is defined twice",
                         str(caught.exception))

    def test_an_unchecked_handler_gets_the_raw_params(self):
        seen = []
        self.table.add("raw", commands.CommandSpec("raw", {}),
                       lambda context, raw: seen.append(raw) or {},
                       checked=False)
        raw = {"anything": object()}
        self.table.dispatch("raw", raw, "ctx")
        self.assertIs(raw, seen[0])

    def test_a_handlers_parameter_names_cannot_clash_with_params(self):
        # Params arrive as one dict, never as keyword arguments.
        self.assertEqual({"context": 1, "self": 2, "count": 1},
                         self.table.dispatch("loose",
                                             {"context": 1, "self": 2}, "c"))


class TestParamProblem(base.TestCase):
    def check(self, fields, values):
        with self.assertRaises(protocol.InvalidParams) as caught:
            params.validate_fields(fields, values)
        return caught.exception.msg

    def test_problem_replaces_every_refusal_of_the_param(self):
        field = {"id": params.String(required=True, min_length=1,
                                     max_length=3, problem="is wrong")}
        for values in ({}, {"id": None}, {"id": 5}, {"id": ""},
                       {"id": "long"}):
            with self.subTest(values=values):
                self.assertEqual("id: is wrong", self.check(field, values))

    def test_problem_leaves_the_refusals_of_items_alone(self):
        field = {"ids": params.List(params.Integer(), problem="is wrong")}
        self.assertEqual("ids[0]: must be an integer",
                         self.check(field, {"ids": ["x"]}))
        self.assertEqual("ids: is wrong", self.check(field, {"ids": 5}))

    def test_string_without_upper_bound(self):
        field = {"s": params.String(max_length=None)}
        self.assertEqual({"s": "x" * 100000},
                         params.validate_fields(field, {"s": "x" * 100000}))


class FakeConnection:
    def __init__(self, peer="10.0.0.1:1000"):
        self.name = "agent at %s" % peer
        self.closed = False
        self.fatal_reason = None
        self.user_data = {"address": peer.split(":")[0], "peer": peer,
                          "agent": None, "tls": False,
                          "cert_agent_id": None}

    def fatal(self, reason):
        self.fatal_reason = reason
        self.closed = True

    def close(self, reason="closed"):
        self.closed = True


class TestEndpointTable(base.TestCase):
    def setUp(self):
        super().setUp()
        self.endpoint = endpoint_mod.Endpoint(port=0)
        self.events = []
        self.endpoint.subscribe(lambda event, agent, data:
                                self.events.append((event, data)))

    def dispatch(self, connection, method, given=None):
        return self.endpoint._dispatch(connection, command(method, given))

    def test_every_inbound_method_is_answered_inline(self):
        self.assertEqual(sorted(endpoint_mod.Endpoint.INLINE_METHODS),
                         self.endpoint.commands.names())

    def test_with_a_database_only_final_states_leave_the_reader(self):
        # Without a database every inbound method runs in the reader.
        self.assertIsNone(self.endpoint._inline_if())
        self.endpoint.persistence = object()
        self.assertNotIn("task_status", self.endpoint._inline_methods())
        runs_inline = self.endpoint._inline_if()
        for state, inline in (("running", True), ("complete", False),
                              ("error", False)):
            with self.subTest(state=state):
                self.assertIs(inline, runs_inline(command("task_status", {
                    "task_id": "t", "state": state})))
        self.assertFalse(runs_inline(command("task_status", None)))
        self.assertFalse(runs_inline(protocol.Command(
            "1", "task_status", ["running"])))

    def test_sessions_are_declared(self):
        spec = self.endpoint.commands.spec
        self.assertIsNone(spec("ping").session)
        self.assertEqual(endpoint_mod.SESSION_HANDSHAKE,
                         spec("handshake").session)
        self.assertEqual(endpoint_mod.SESSION_AGENT, spec("log").session)
        self.assertEqual(endpoint_mod.SESSION_AGENT,
                         spec("task_status").session)

    def test_handshake_agent_id_errors_keep_their_text(self):
        for given in ({}, {"agent_id": None}, {"agent_id": 5},
                      {"agent_id": ""}):
            with self.subTest(given=given):
                with self.assertRaises(protocol.InvalidParams) as caught:
                    self.dispatch(FakeConnection(), "handshake", given)
                self.assertEqual("agent_id: is required",
                                 caught.exception.msg)
                self.assertEqual({"param": "agent_id"},
                                 caught.exception.details)

    def test_a_repeated_handshake_is_refused_before_its_params_are_read(self):
        link = FakeConnection()
        self.dispatch(link, "handshake", {"agent_id": "a"})
        self.assertEqual({}, self.dispatch(link, "handshake",
                                           {"agent_id": 5}))
        self.assertEqual("handshake already done on this connection",
                         link.fatal_reason)

    def test_the_handshake_is_kept_as_sent(self):
        self.dispatch(FakeConnection(), "handshake",
                      {"hardware": {"x": 1}, "agent_id": "a",
                       "extensions": "free-form"})
        self.assertEqual(["hardware", "agent_id", "extensions"],
                         list(self.endpoint.agents["a"].handshake))

    def test_task_status_errors_keep_their_text(self):
        link = FakeConnection()
        self.dispatch(link, "handshake", {"agent_id": "a"})
        for given, text in [
                ({"state": "running"},
                 "task_id: must be a string of 1 to 256 characters"),
                ({"task_id": 5, "state": 5},
                 "task_id: must be a string of 1 to 256 characters"),
                ({"task_id": "t" * 257, "state": "running"},
                 "task_id: must be a string of 1 to 256 characters"),
                ({"task_id": "t"},
                 "state: must be one of running, error, complete"),
                ({"task_id": "t", "state": ["running"]},
                 "state: must be one of running, error, complete"),
                ({"task_id": "t", "state": "done"},
                 "state: must be one of running, error, complete")]:
            with self.subTest(given=given):
                with self.assertRaises(protocol.InvalidParams) as caught:
                    self.dispatch(link, "task_status", given)
                self.assertEqual(text, caught.exception.msg)

    def test_log_fields_named_like_handler_arguments(self):
        link = FakeConnection()
        self.dispatch(link, "handshake", {"agent_id": "a"})
        record = {"agent": 1, "params": 2, "self": 3, "message": "m"}
        self.assertEqual({}, self.dispatch(link, "log", record))
        self.assertEqual(("log", record), self.events[-1])

    def test_session_refusals(self):
        early = FakeConnection()
        with self.assertRaises(protocol.InvalidRequest):
            self.dispatch(early, "log", {})
        with self.assertRaises(protocol.UnknownMethod):
            self.dispatch(early, "nope", {})
        self.assertEqual({"a": 1}, self.dispatch(early, "ping", {"a": 1}))
        self.dispatch(early, "handshake", {"agent_id": "a"})
        stranger = FakeConnection("10.0.0.2:1")
        stranger.user_data["agent"] = self.endpoint.agents["a"]
        with self.assertRaises(protocol.InvalidRequest):
            self.dispatch(stranger, "nope", {})


class StubEndpoint:
    def __init__(self):
        self.agents = {}
        self.tokens = {}
        self.port = 1
        self.call_timeout = 7
        self.calls = []

    def call(self, agent_id, method, params, timeout=None):
        self.calls.append((agent_id, method, params, timeout))
        return {"ok": True}


class TestControlTable(base.TestCase):
    def setUp(self):
        super().setUp()
        self.endpoint = StubEndpoint()
        self.server = control.ControlServer(self.endpoint, "/nonexistent")

    def dispatch(self, method, given):
        return self.server._dispatch(None, command(method, given))

    def refusal(self, method, given):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.dispatch(method, given)
        return caught.exception.msg

    def test_methods(self):
        self.assertEqual(["agents", "call", "forget", "ping", "watch_task"],
                         self.server.commands.names())
        with self.assertRaises(protocol.UnknownMethod):
            self.dispatch("nope", {})

    def test_error_texts(self):
        for method, given, text in [
                ("forget", {}, "agent_id: must be a non-empty string"),
                ("forget", {"agent_id": ""},
                 "agent_id: must be a non-empty string"),
                ("call", {"agent_id": "a"},
                 "method: must be a non-empty string"),
                ("call", {"agent_id": "a", "method": "m", "params": [1]},
                 "params: must be an object"),
                ("watch_task", {"agent_id": "a", "task_id": None},
                 "task_id: must be a non-empty string"),
                ("agents", {"after": 5}, "after: must be a string"),
                ("agents", {"limit": 0}, "limit: must be a positive integer"),
                ("agents", {"limit": None},
                 "limit: must be a positive integer"),
                ("agents", {"limit": True},
                 "limit: must be a positive integer")]:
            with self.subTest(method=method, given=given):
                self.assertEqual(text, self.refusal(method, given))

    def test_call_takes_empty_params_and_the_default_timeout(self):
        for given in ({}, {"params": None}, {"params": []},
                      {"params": ""}, {"params": 0, "timeout": 0}):
            self.dispatch("call", dict(given, agent_id="a", method="m"))
        self.assertEqual([("a", "m", {}, 7)] * 5, self.endpoint.calls)
        self.dispatch("call", {"agent_id": "a", "method": "m",
                               "params": {"x": 1}, "timeout": 2,
                               "ignored": True})
        self.assertEqual(("a", "m", {"x": 1}, 2), self.endpoint.calls[-1])


class TestAgentTable(base.TestCase):
    def setUp(self):
        super().setUp()
        self.agent = test_agent.make_agent(
            base.make_conf(task_status_interval=0.0))

    def test_core_methods_and_extension_commands(self):
        self.assertEqual(["ping", "status", "work.grind", "work.shout"],
                         self.agent.commands.names())
        self.assertTrue(self.agent.commands.spec("work.grind").is_task)

    def test_ping_echoes_params_named_like_handler_arguments(self):
        given = {"connection": 1, "command": 2, "params": 3}
        self.assertEqual(given, self.agent.dispatch(
            None, command("ping", given)))

    def test_sync_command_params_are_checked(self):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.agent.dispatch(None, command("work.shout", {}))
        self.assertEqual("word: is required", caught.exception.msg)
        self.assertEqual({"word": "HI"}, self.agent.dispatch(
            None, command("work.shout", {"word": "hi"})))
