"""The endpoint's trust decisions and bounds, without sockets."""

import json
import os
import shutil
import stat
import tempfile
from unittest import mock

from teeth_agent.endpoint import books
from teeth_agent.endpoint import errors
from teeth_agent.endpoint import identity
from teeth_agent.endpoint import server as endpoint_mod
from tests import base


class FakeConnection:
    """What the endpoint reads from a connection, and what it does to it."""

    def __init__(self, peer="10.0.0.1:1000", cert_agent_id=None, tls=False):
        self.name = "agent at %s" % peer
        self.closed = False
        self.fatal_reason = None
        self.user_data = {"address": peer.split(":")[0], "peer": peer,
                          "agent": None, "tls": tls,
                          "cert_agent_id": cert_agent_id}

    def fatal(self, reason):
        self.fatal_reason = reason
        self.closed = True

    def close(self, reason="closed"):
        self.closed = True


def handshake(agent_id, token=None, tasks=(), **extra):
    params = {"agent_id": agent_id, "protocol_versions": ["v1"],
              "tasks": list(tasks)}
    params.update(extra)
    if token is not None:
        params["session_token"] = token
    return params


class Command:
    def __init__(self, method, params):
        self.method = method
        self.params = params


class TestPrintable(base.TestCase):
    def test_control_characters_are_escaped(self):
        self.assertEqual('"a\\nb\\r\\tc\\u001b[31m\\u0007\\u0000"',
                         books.printable("a\nb\r\tc\x1b[31m\x07\x00"))

    def test_unicode_separators_and_bidi_overrides(self):
        for text in ("a\u2028b", "a\u202eb", "a\x85b"):
            shown = books.printable(text)
            self.assertTrue(shown.isprintable(), shown)
            self.assertTrue(shown.startswith('"'), shown)

    def test_printable_text_is_unchanged(self):
        self.assertEqual("Grüße 🦀 ok \\n",
                         books.printable("Grüße 🦀 ok \\n"))

    def test_non_strings_and_limit(self):
        self.assertEqual("None", books.printable(None))
        shown = books.printable("x" * 10, limit=3)
        self.assertTrue(shown.startswith('"xxx"'), shown)
        self.assertNotIn("xxxx", shown)


class TestCertificateIdentity(base.TestCase):
    def test_san_uri_wins_over_the_common_name(self):
        cert = {"subject": ((("commonName", "cn-name"),),),
                "subjectAltName": (("DNS", "x.example"),
                                   ("URI", "teeth-agent:machine-a"))}
        self.assertEqual("machine-a",
                         identity.agent_id_from_certificate(cert))

    def test_common_name_without_san_uri(self):
        cert = {"subject": ((("organizationName", "o"),),
                            (("commonName", "machine-cn"),),)}
        self.assertEqual("machine-cn",
                         identity.agent_id_from_certificate(cert))

    def test_two_san_uris_are_ambiguous(self):
        cert = {"subject": ((("commonName", "cn"),),),
                "subjectAltName": (("URI", "teeth-agent:a"),
                                   ("URI", "teeth-agent:b"))}
        self.assertIsNone(identity.agent_id_from_certificate(cert))

    def test_an_endpoint_certificate_names_no_agent(self):
        cert = {"subject": ((("commonName", "10.0.0.11"),),),
                "subjectAltName": (("IP Address", "10.0.0.11"),
                                   ("URI", "teeth-endpoint:10.0.0.11"))}
        self.assertIsNone(identity.agent_id_from_certificate(cert))

    def test_no_certificate(self):
        self.assertIsNone(identity.agent_id_from_certificate(None))
        self.assertIsNone(identity.agent_id_from_certificate({}))


class TestTokenStore(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.path = os.path.join(self.directory, "state", "tokens.json")

    def test_issue_and_verify(self):
        store = identity.TokenStore()
        token = store.issue("a")
        self.assertGreaterEqual(len(token), 22)
        self.assertTrue(store.verify("a", token))
        self.assertFalse(store.verify("a", token + "x"))
        self.assertFalse(store.verify("a", None))
        self.assertFalse(store.verify("b", token))
        self.assertNotEqual(token, store.issue("b"))

    def test_saved_file_holds_hashes_only_with_mode_0600(self):
        store = identity.TokenStore(self.path)
        token = store.issue("a")
        store.flush()
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))
        with open(self.path) as stream:
            text = stream.read()
        self.assertNotIn(token, text)
        self.assertEqual({"a": identity.hash_token(token)},
                         json.loads(text)["tokens"])
        self.assertEqual(["tokens.json"],
                         os.listdir(os.path.dirname(self.path)))
        again = identity.TokenStore(self.path)
        again.load()
        self.assertTrue(again.verify("a", token))
        again.forget("a")
        again.flush()
        third = identity.TokenStore(self.path)
        third.load()
        self.assertNotIn("a", third)

    def test_a_failed_write_keeps_the_old_file(self):
        store = identity.TokenStore(self.path)
        token = store.issue("a")
        store.flush()
        store.issue("b")
        with mock.patch.object(os, "fsync", side_effect=OSError("disk")):
            self.assertRaises(OSError, store.flush)
        # Still unsaved: the next flush tries again.
        self.assertTrue(store.dirty)
        again = identity.TokenStore(self.path)
        again.load()
        self.assertTrue(again.verify("a", token))
        self.assertNotIn("b", again)
        self.assertEqual(["tokens.json"],
                         os.listdir(os.path.dirname(self.path)))

    def test_unreadable_file_is_a_config_error(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as stream:
            stream.write("not json")
        store = identity.TokenStore(self.path)
        self.assertRaises(errors.EndpointConfigError, store.load)


class TestTaskBook(base.TestCase):
    def test_finished_tasks_are_bounded_oldest_first(self):
        book = books.TaskBook(history=3, running_limit=10)
        for n in range(5):
            book.record({"task_id": "t%d" % n, "state": "complete"})
        self.assertEqual(["t2", "t3", "t4"], sorted(book.tasks))

    def test_running_tasks_are_bounded(self):
        book = books.TaskBook(history=3, running_limit=2)
        outcomes = [book.record({"task_id": "r%d" % n, "state": "running"})
                    for n in range(4)]
        self.assertEqual(["recorded", "recorded", "over_limit",
                          "over_limit"], outcomes)
        # Updates of known running tasks and finals still go through.
        self.assertEqual("recorded", book.record(
            {"task_id": "r0", "state": "running", "percent": 50.0}))
        self.assertEqual("recorded", book.record(
            {"task_id": "r0", "state": "complete"}))
        self.assertEqual("recorded", book.record(
            {"task_id": "r9", "state": "running"}))
        self.assertEqual(2, book.running)

    def test_final_state_is_never_changed(self):
        book = books.TaskBook()
        book.record({"task_id": "t", "state": "complete", "result": {"n": 1}})
        self.assertEqual("duplicate", book.record(
            {"task_id": "t", "state": "complete", "result": {"n": 1}}))
        self.assertEqual("conflict", book.record(
            {"task_id": "t", "state": "error", "msg": "x"}))
        self.assertEqual("conflict", book.record(
            {"task_id": "t", "state": "complete", "result": {"n": 2}}))
        self.assertEqual("late_running", book.record(
            {"task_id": "t", "state": "running"}))
        self.assertEqual({"task_id": "t", "state": "complete",
                          "result": {"n": 1}}, book.get("t"))

    def test_summary_never_overwrites_a_full_final(self):
        book = books.TaskBook()
        book.record({"task_id": "t", "state": "complete", "result": {"n": 1}})
        self.assertEqual("summary_ignored", book.record(
            {"task_id": "t", "state": "complete", "percent": 100.0},
            summary=True))
        self.assertEqual({"n": 1}, book.get("t")["result"])

    def test_full_final_replaces_a_summary_final(self):
        book = books.TaskBook()
        book.record({"task_id": "t", "state": "running", "percent": 10.0})
        book.record({"task_id": "t", "state": "complete"}, summary=True)
        self.assertEqual("recorded", book.record(
            {"task_id": "t", "state": "complete", "result": {"n": 1}}))
        self.assertEqual({"n": 1}, book.get("t")["result"])
        self.assertEqual("duplicate", book.record(
            {"task_id": "t", "state": "complete", "result": {"n": 1}}))
        self.assertEqual(0, book.running)


class TestTaskBookSizes(base.TestCase):
    def test_finished_tasks_are_bounded_by_bytes_newest_kept(self):
        book = books.TaskBook(history=100, running_limit=10,
                              max_bytes=1200)
        for n in range(10):
            book.record({"task_id": "t%d" % n, "state": "complete",
                         "result": {"pad": "x" * 300}})
        self.assertLessEqual(book.bytes, 1200)
        self.assertEqual(["t7", "t8", "t9"], sorted(book.tasks))
        book.record({"task_id": "big", "state": "complete",
                     "result": {"pad": "x" * 5000}})
        self.assertEqual(["big"], sorted(book.tasks))

    def test_running_statuses_keep_only_small_known_fields(self):
        book = books.TaskBook()
        book.record({"task_id": "r", "state": "running", "percent": 5.0,
                     "eta": None, "method": "m" * 500, "bulk": "x" * 10000,
                     "msg": "x"})
        self.assertEqual({"task_id": "r", "state": "running",
                          "percent": 5.0, "eta": None}, book.get("r"))
        book.record({"task_id": "r", "state": "running",
                     "percent": {"not": "a number"}})
        self.assertEqual({"task_id": "r", "state": "running"},
                         book.get("r"))


class TestLogBook(base.TestCase):
    def test_bounded_by_records_and_bytes(self):
        logs = books.LogBook(max_records=3, max_bytes=100)
        for n in range(5):
            logs.append({"n": n}, 10)
        self.assertEqual([2, 3, 4], [record["n"] for record in logs])
        logs.append({"n": 5}, 90)
        self.assertEqual([4, 5], [record["n"] for record in logs])
        self.assertLessEqual(logs.bytes, 100)
        self.assertFalse(logs.append({"n": 6}, 101))


class TestIdentityDecisions(base.TestCase):
    def make(self, **kwargs):
        endpoint = endpoint_mod.Endpoint(port=0, **kwargs)
        self.events = []
        endpoint.subscribe(lambda event, agent, data:
                           self.events.append((event, data)))
        return endpoint

    def handshake(self, endpoint, connection, params):
        return endpoint._dispatch(connection, Command("handshake", params))

    def test_first_use_issues_a_token_then_requires_it(self):
        endpoint = self.make()
        first = FakeConnection("10.0.0.1:1")
        answer = self.handshake(endpoint, first, handshake("a"))
        token = answer["session_token"]
        first.closed = True
        impostor = FakeConnection("10.0.0.9:9")
        self.handshake(endpoint, impostor, handshake("a"))
        self.assertIn("session_token missing for agent_id a",
                      impostor.fatal_reason)
        wrong = FakeConnection("10.0.0.9:10")
        self.handshake(endpoint, wrong, handshake("a", "nope"))
        self.assertIn("session_token mismatch", wrong.fatal_reason)
        back = FakeConnection("10.0.0.1:2")
        again = self.handshake(endpoint, back, handshake("a", token))
        self.assertNotIn("session_token", again)
        self.assertIs(back, endpoint.agents["a"].connection)
        refused = [data for event, data in self.events if event == "refused"]
        self.assertEqual(["10.0.0.9:9", "10.0.0.9:10"],
                         [data["peer"] for data in refused])

    def test_live_link_is_kept_against_an_impostor(self):
        endpoint = self.make()
        live = FakeConnection("10.0.0.1:1")
        token = self.handshake(endpoint, live, handshake("a"))[
            "session_token"]
        impostor = FakeConnection("10.0.0.9:9")
        self.handshake(endpoint, impostor, handshake("a"))
        self.assertIn("held by a live connection from 10.0.0.1:1",
                      impostor.fatal_reason)
        self.assertFalse(live.closed)
        self.assertIs(live, endpoint.agents["a"].connection)
        (refused,) = [data for event, data in self.events
                      if event == "refused"]
        self.assertEqual("10.0.0.1:1", refused["live_peer"])
        # The real agent's new link (half-open case) replaces the old one.
        new = FakeConnection("10.0.0.1:2")
        self.handshake(endpoint, new, handshake("a", token))
        self.assertTrue(live.closed)
        self.assertIs(new, endpoint.agents["a"].connection)

    def test_certificate_identity(self):
        context = mock.Mock(verify_mode=endpoint_mod.ssl.CERT_REQUIRED)
        endpoint = self.make(tls_context=context,
                             agent_identity="certificate")
        good = FakeConnection(cert_agent_id="machine-a", tls=True)
        answer = self.handshake(endpoint, good, handshake("machine-a"))
        self.assertNotIn("session_token", answer)
        bad = FakeConnection(cert_agent_id="machine-a", tls=True)
        self.handshake(endpoint, bad, handshake("machine-b"))
        self.assertEqual("handshake refused: certificate names agent_id "
                         "machine-a, handshake claims machine-b",
                         bad.fatal_reason)
        # A link proving machine-a by its certificate replaces the old one.
        again = FakeConnection(cert_agent_id="machine-a", tls=True)
        self.handshake(endpoint, again, handshake("machine-a"))
        self.assertTrue(good.closed)

    def test_token_mode_never_ignores_a_client_certificate(self):
        endpoint = self.make()
        other = FakeConnection("10.0.0.9:9", cert_agent_id="machine-a",
                               tls=True)
        self.handshake(endpoint, other, handshake("machine-b"))
        self.assertEqual("handshake refused: certificate names agent_id "
                         "machine-a, handshake claims machine-b",
                         other.fatal_reason)
        self.assertNotIn("machine-b", endpoint.agents)
        self.assertNotIn("machine-b", endpoint.tokens)
        (refused,) = [data for event, data in self.events
                      if event == "refused"]
        self.assertEqual("CertificateMismatch", refused["type"])
        # Its own agent_id is accepted (and gets a token as usual); a
        # valid token does not make another machine's certificate pass.
        own = FakeConnection("10.0.0.1:1", cert_agent_id="machine-b",
                             tls=True)
        token = self.handshake(endpoint, own, handshake("machine-b"))[
            "session_token"]
        own.closed = True
        stolen = FakeConnection("10.0.0.9:10", cert_agent_id="machine-a",
                                tls=True)
        self.handshake(endpoint, stolen, handshake("machine-b", token))
        self.assertIn("certificate names agent_id machine-a",
                      stolen.fatal_reason)
        # Without a certificate (or one naming nobody) the token decides.
        plain = FakeConnection("10.0.0.1:2", tls=True)
        self.handshake(endpoint, plain, handshake("machine-b", token))
        self.assertIsNone(plain.fatal_reason)

    def test_certificate_identity_needs_mutual_tls(self):
        self.assertRaises(errors.EndpointConfigError,
                          endpoint_mod.Endpoint, port=0,
                          agent_identity="certificate")
        one_way = mock.Mock(verify_mode=endpoint_mod.ssl.CERT_NONE)
        self.assertRaises(errors.EndpointConfigError,
                          endpoint_mod.Endpoint, port=0, tls_context=one_way,
                          agent_identity="certificate")

    def test_one_handshake_per_connection(self):
        endpoint = self.make()
        link = FakeConnection()
        token = self.handshake(endpoint, link, handshake("a"))[
            "session_token"]
        self.handshake(endpoint, link, handshake("a", token))
        self.assertEqual("handshake already done on this connection",
                         link.fatal_reason)

    def test_only_the_owner_records_task_states(self):
        endpoint = self.make()
        old = FakeConnection("10.0.0.1:1")
        token = self.handshake(endpoint, old, handshake("a"))[
            "session_token"]
        new = FakeConnection("10.0.0.1:2")
        self.handshake(endpoint, new, handshake("a", token))
        # The replaced link still has the agent in user_data in this fake.
        old.closed = False
        old.user_data["agent"] = endpoint.agents["a"]
        with self.assertRaises(endpoint_mod.protocol.InvalidRequest):
            endpoint._dispatch(old, Command("task_status", {
                "task_id": "t", "state": "complete"}))
        self.assertIsNone(endpoint.agents["a"].tasks.get("t"))

    def test_handshake_summaries_do_not_overwrite(self):
        endpoint = self.make()
        link = FakeConnection()
        token = self.handshake(endpoint, link, handshake("a"))[
            "session_token"]
        endpoint._dispatch(link, Command("task_status", {
            "task_id": "t", "state": "complete", "result": {"full": 1}}))
        link.closed = True
        self.handshake(endpoint, FakeConnection(), handshake(
            "a", token, tasks=[{"task_id": "t", "state": "complete",
                                "method": "x"}]))
        self.assertEqual({"full": 1},
                         endpoint.agents["a"].tasks["t"]["result"])

    def test_token_never_reaches_subscribers_or_listings(self):
        endpoint = self.make()
        link = FakeConnection()
        token = self.handshake(endpoint, link, handshake("a"))[
            "session_token"]
        link.closed = True
        self.handshake(endpoint, FakeConnection(), handshake("a", token))
        self.assertNotIn(token, json.dumps(
            endpoint.agents["a"].describe(), default=str))
        self.assertNotIn(token, json.dumps(self.events, default=str))

    def test_forget_after_drops_the_agent_and_its_token(self):
        endpoint = self.make(forget_after=100.0)
        link = FakeConnection()
        self.handshake(endpoint, link, handshake("a"))
        link.closed = True
        endpoint._on_close(link, "gone")
        gone_at = endpoint.agents["a"].disconnected_at
        self.assertEqual(0, endpoint.forget_gone(gone_at + 99))
        self.assertEqual(1, endpoint.forget_gone(gone_at + 101))
        self.assertNotIn("a", endpoint.agents)
        self.assertNotIn("a", endpoint.tokens)
        # The next handshake is a first use again.
        answer = self.handshake(endpoint, FakeConnection(), handshake("a"))
        self.assertIn("session_token", answer)

    def test_max_agents_forgets_the_longest_gone(self):
        endpoint = self.make(max_agents=2)
        links = {}
        for name in ("a", "b"):
            links[name] = FakeConnection()
            self.handshake(endpoint, links[name], handshake(name))
        refused = FakeConnection()
        self.handshake(endpoint, refused, handshake("c"))
        self.assertIn("max_agents", refused.fatal_reason)
        links["a"].closed = True
        endpoint._on_close(links["a"], "gone")
        self.handshake(endpoint, FakeConnection(), handshake("c"))
        self.assertEqual({"b", "c"}, set(endpoint.agents))

    def test_a_refused_handshake_makes_nobody_forgotten(self):
        endpoint = self.make(max_agents=2)
        links = {}
        for name in ("a", "b"):
            links[name] = FakeConnection()
            self.handshake(endpoint, links[name], handshake(name))
        links["a"].closed = True
        endpoint._on_close(links["a"], "gone")
        # Refused for a certificate naming another agent, and for a token
        # the endpoint holds from before a restart (no AgentHandle yet).
        cert = FakeConnection(cert_agent_id="b", tls=True)
        self.handshake(endpoint, cert, handshake("c"))
        self.assertIn("certificate names agent_id b", cert.fatal_reason)
        endpoint.tokens.issue("d")
        wrong = FakeConnection()
        self.handshake(endpoint, wrong, handshake("d", "wrong"))
        self.assertIn("session_token mismatch", wrong.fatal_reason)
        self.assertEqual({"a", "b"}, set(endpoint.agents))
        self.assertIn("a", endpoint.tokens)
        # An accepted newcomer still makes room.
        self.handshake(endpoint, FakeConnection(), handshake("c"))
        self.assertEqual({"b", "c"}, set(endpoint.agents))

    def test_connection_limits(self):
        endpoint = self.make(max_connections_per_address=2,
                             max_connections=3)
        self.assertTrue(endpoint._admit(("10.0.0.1", 1)))
        self.assertTrue(endpoint._admit(("10.0.0.1", 2)))
        self.assertFalse(endpoint._admit(("10.0.0.1", 3)))
        self.assertTrue(endpoint._admit(("10.0.0.2", 1)))
        self.assertFalse(endpoint._admit(("10.0.0.3", 1)))
        endpoint._release("10.0.0.1")
        self.assertTrue(endpoint._admit(("10.0.0.3", 1)))

    def test_long_task_ids_are_invalid(self):
        endpoint = self.make()
        link = FakeConnection()
        self.handshake(endpoint, link, handshake("a"))
        with self.assertRaises(endpoint_mod.protocol.InvalidParams):
            endpoint._dispatch(link, Command("task_status", {
                "task_id": "x" * 257, "state": "running"}))
        self.assertEqual({}, endpoint.agents["a"].tasks)

    def test_stored_handshake_is_bounded_and_has_no_tasks(self):
        endpoint = self.make()
        link = FakeConnection()
        self.handshake(endpoint, link, handshake("a", tasks=[
            {"task_id": "t", "state": "running"}]))
        self.assertNotIn("tasks", endpoint.agents["a"].handshake)
        self.assertIn("t", endpoint.agents["a"].tasks)
        big = FakeConnection()
        self.handshake(endpoint, big, handshake(
            "b", hardware={"pad": "x" * 100000}, agent_version="1\n2"))
        self.assertEqual({"agent_id": "b", "agent_version": '"1\\n2"',
                          "truncated": True},
                         endpoint.agents["b"].handshake)

    def test_agent_id_is_bounded(self):
        endpoint = self.make()
        for bad in ("a" * 257, "\u202e" * 100000):
            self.assertRaises(endpoint_mod.protocol.InvalidParams,
                              self.handshake, endpoint, FakeConnection(),
                              handshake(bad))
        self.assertEqual({}, endpoint.agents)
        self.assertEqual(0, len(endpoint.tokens))
        self.handshake(endpoint, FakeConnection(), handshake("a" * 256))
        self.assertIn("a" * 256, endpoint.agents)

    def test_handshake_tasks_keep_summaries_only(self):
        endpoint = self.make()
        link = FakeConnection()
        self.handshake(endpoint, link, handshake("a", tasks=[
            {"task_id": "t1", "state": "complete", "method": "decom.qc",
             "result": {"pad": "x" * 500000}, "extra": "y" * 1000},
            {"task_id": "t2", "state": "error", "msg": "m" * 100000,
             "details": {"pad": "z" * 100000}, "method": ["not", "str"]},
            {"task_id": "t3", "state": "running", "percent": 5,
             "eta": 3, "junk": "j" * 1000}]))
        tasks = endpoint.agents["a"].tasks
        self.assertEqual({"task_id": "t1", "state": "complete",
                          "method": "decom.qc"}, tasks["t1"])
        self.assertEqual({"task_id", "state", "msg"}, set(tasks["t2"]))
        self.assertEqual(books.LOG_TEXT_LIMIT, len(tasks["t2"]["msg"]))
        self.assertEqual({"task_id": "t3", "state": "running",
                          "percent": 5}, tasks["t3"])
        self.assertLess(endpoint.agents["a"].book.bytes, 10000)

    def test_forget_gone_takes_the_longest_gone_first(self):
        endpoint = self.make(forget_after=10.0)
        links = {}
        for name in ("a", "b", "c"):
            links[name] = FakeConnection()
            self.handshake(endpoint, links[name], handshake(name))
        for name, when in (("b", 1.0), ("a", 5.0)):
            links[name].closed = True
            with mock.patch.object(endpoint_mod.transport, "monotonic",
                                   return_value=when):
                endpoint._on_close(links[name], "gone")
        self.assertEqual(1, endpoint.forget_gone(12.0))
        self.assertEqual({"a", "c"}, set(endpoint.agents))
        self.assertEqual(1, endpoint.forget_gone(16.0))
        self.assertEqual({"c"}, set(endpoint.agents))


class TestLineLimitOption(base.TestCase):
    def test_option_minimum_is_what_agents_accept(self):
        from teeth_agent.conf import endpoint as conf_endpoint
        from teeth_agent.runtime import agent as agent_mod
        (opt,) = [opt for opt in conf_endpoint.opts
                  if opt.name == "max_line_length"]
        self.assertEqual(agent_mod.MIN_PEER_LINE_LENGTH, opt.type.min)
        self.assertEqual(agent_mod.MIN_PEER_LINE_LENGTH,
                         endpoint_mod.MIN_LINE_LENGTH)
        self.assertRaises(ValueError, base.make_conf().set_override,
                          "max_line_length", 2048, group="endpoint")

    def test_library_refuses_a_limit_agents_refuse(self):
        self.assertRaises(errors.EndpointConfigError,
                          endpoint_mod.Endpoint, port=0,
                          max_line_length=2048)
        endpoint_mod.Endpoint(port=0, max_line_length=4096)


class TestStateDir(base.TestCase):
    def setUp(self):
        super().setUp()
        self.parent = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.parent)

    def test_default_keeps_tokens_across_restarts(self):
        from teeth_agent.conf import endpoint as conf_endpoint
        (opt,) = [opt for opt in conf_endpoint.opts
                  if opt.name == "state_dir"]
        self.assertEqual("/var/lib/teeth-endpoint", opt.default)

    def test_created_0700_at_start_up(self):
        state_dir = os.path.join(self.parent, "a", "state")
        conf = base.make_conf(**{"endpoint.state_dir": state_dir,
                                 "endpoint.tls_enabled": False})
        with self.assertLogs(endpoint_mod.conf_tls.LOG, "WARNING"):
            endpoint = endpoint_mod.Endpoint.from_conf(conf)
        self.addCleanup(endpoint.persistence.store.close)
        # The token hashes are in the database file, mode 0600.
        self.assertIsNone(endpoint.tokens.path)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(
            os.path.join(state_dir, "endpoint.sqlite")).st_mode))
        self.assertEqual(0o700,
                         stat.S_IMODE(os.stat(state_dir).st_mode))

    def test_uncreatable_state_dir_is_a_config_error(self):
        blocker = os.path.join(self.parent, "file")
        open(blocker, "w").close()
        for state_dir in (blocker, os.path.join(blocker, "state")):
            endpoint = endpoint_mod.Endpoint(port=0, state_dir=state_dir)
            self.assertRaises(errors.EndpointConfigError,
                              endpoint.load_state)

    def test_empty_keeps_tokens_in_memory_with_a_warning(self):
        endpoint = endpoint_mod.Endpoint(port=0, state_dir="")
        with self.assertLogs(endpoint_mod.LOG, "WARNING") as logs:
            endpoint.load_state()
        self.assertIsNone(endpoint.tokens.path)
        self.assertIn("state_dir is empty", logs.output[0])
