"""What the agent sends and keeps under the trust and size rules.

Session tokens (kept per endpoint, on disk with mode 0600, tied to the
agent_id), task summaries in the handshake and ``status``, the peer's
announced ``max_line_length`` (never a longer line), the stable-link
backoff, and ``Conflict`` for a task_id reused for other work.
"""

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time

from teeth_agent import protocol
from teeth_agent.runtime import agent as agent_mod
from teeth_agent.runtime import logforward
from teeth_agent.runtime import session_tokens
from teeth_agent import tasks
from teeth_agent import transport
from tests import base
from tests.unit.runtime import test_agent
from tests.unit import test_tasks

KIB = 1024


def record(task_id, method="x.y", state="complete", result=None, msg=None,
           details=None, acknowledged=False, digest=None, started=None):
    """A state-dir record exactly as ``Task.record`` writes it."""
    entry = {"task_id": task_id, "method": method, "state": state,
             "msg": msg, "result": result, "details": details,
             "started": started or time.time(), "finished": time.time(),
             "acknowledged": acknowledged}
    if digest is not None:
        entry["params_digest"] = digest
    return entry


def write_records(state_dir, records):
    """Write records under the file names ``TaskRegistry`` uses."""
    os.makedirs(state_dir, exist_ok=True)
    for entry in records:
        name = "task-%s.json" % hashlib.sha256(
            entry["task_id"].encode("utf-8")).hexdigest()[:40]
        with open(os.path.join(state_dir, name), "w") as stream:
            json.dump(entry, stream)


def many_records(count=200, result_size=KIB, msg_size=1000):
    """``count`` unacknowledged final states: every third an error with a
    long message, the others complete with a result of ``result_size``."""
    now = time.time() - 1000
    records = []
    for index in range(count):
        task_id = "task-%03d" % index
        if index % 3 == 0:
            records.append(record(task_id, state="error",
                                  msg="m" * msg_size,
                                  details={"blob": "d" * result_size},
                                  started=now + index))
        else:
            records.append(record(task_id, result={"blob": "r" * result_size},
                                  started=now + index))
    return records


class TempDirMixin:
    def make_dir(self):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, True)
        return path


# -- protocol ----------------------------------------------------------------

class PeerLineLimitTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.session = protocol.Session(id_prefix="abcd1234")
        self.session.limit_sent_lines(4096)

    def test_command_longer_than_the_peer_accepts_is_refused(self):
        with self.assertRaises(protocol.LineTooLong) as caught:
            self.session.send_command("log", {"message": "x" * 5000})
        self.assertEqual(4096, caught.exception.limit)
        self.assertGreater(caught.exception.size, 4096)
        # Nothing is outstanding: no answer is awaited for it.
        self.assertEqual({}, self.session.outstanding)

    def test_room_for_params_is_an_exact_upper_bound(self):
        room = self.session.room_for_params("log")
        base_size = protocol.encoded_size({"m": ""})
        fits = {"m": "x" * (room - base_size)}
        self.assertEqual(room, protocol.encoded_size(fits))
        _, data = self.session.send_command("log", fits)
        self.assertLessEqual(len(data) - 1, 4096)
        with self.assertRaises(protocol.LineTooLong):
            # The longest id new_id() can produce is assumed in the room;
            # a few bytes more than the room and a long id do not fit.
            self.session.send_command("log", {"m": "x" * (room + 40)})

    def test_result_too_large_becomes_response_too_large(self):
        room = self.session.room_for_result("id-1")
        data = self.session.send_result("id-1", {"v": "x" * room})
        message = json.loads(data)
        self.assertEqual("ResponseTooLarge", message["error"]["type"])
        self.assertEqual(-32004, message["error"]["code"])
        self.assertLessEqual(len(data) - 1, 4096)
        fits = {"v": "x" * (room - protocol.encoded_size({"v": ""}))}
        data = self.session.send_result("id-1", fits)
        self.assertIn("result", json.loads(data))
        self.assertEqual(4096, len(data) - 1)

    def test_error_too_large_is_replaced(self):
        data = self.session.send_error("id-2", protocol.InvalidParams(
            "x" * 10000))
        message = json.loads(data)
        self.assertEqual("ResponseTooLarge", message["error"]["type"])
        self.assertIn("InvalidParams", message["error"]["msg"])
        self.assertLessEqual(len(data) - 1, 4096)

    def test_fatal_reason_is_cut_to_the_limit(self):
        data = self.session.send_fatal("r" * 10000)
        self.assertLessEqual(len(data) - 1, 4096)
        self.assertTrue(json.loads(data)["fatal_error"].startswith("rrr"))

    def test_bad_limit_is_a_local_error(self):
        for bad in (True, 0, "4096", 1.5):
            self.assertRaises(protocol.LocalProtocolError,
                              protocol.Session().limit_sent_lines, bad)

    def test_without_announced_limit_commands_are_not_limited(self):
        session = protocol.Session()
        self.assertIsNone(session.room_for_params("log"))
        session.send_command("log", {"m": "x" * (2 * 1024 * 1024)})

    def test_printable_escapes_and_cuts(self):
        text = protocol.printable("refused\nFAKE 2026 ERROR root\x1b[31m")
        self.assertNotIn("\n", text)
        self.assertNotIn("\x1b", text)
        self.assertIn("\\n", text)
        long_text = protocol.printable("y" * 2000, limit=100)
        self.assertLess(len(long_text), 200)
        self.assertIn("2000 characters", long_text)

    def test_shorten_to_fit(self):
        message = {"message": "\u00e9" * 3000, "level": "INFO"}
        short = protocol.shorten_to_fit(message, "message", 1000)
        self.assertLessEqual(protocol.encoded_size(short), 1000)
        self.assertTrue(short["message"].endswith("[truncated]"))
        self.assertIs(message, protocol.shorten_to_fit(message, "level",
                                                       100000))
        self.assertIsNone(protocol.shorten_to_fit({"a": "b" * 100}, "z", 10))

    def test_conflict_error_type(self):
        error = protocol.Conflict("taken", details={"task_id": "t",
                                                    "method": "m"})
        self.assertIsInstance(error, protocol.WireError)
        self.assertEqual({"type": "Conflict", "code": -32005, "msg": "taken",
                          "details": {"task_id": "t", "method": "m"}},
                         error.to_dict())


# -- tasks: summaries, stand-ins, digests, Conflict ---------------------------

class SummaryTest(base.TestCase):
    def test_summary_has_no_result_and_a_bounded_msg(self):
        registry = tasks.TaskRegistry()
        done, _ = registry.start("t1", "x.big",
                                 lambda task: {"blob": "r" * 100000})

        def fail(task):
            raise tasks.TaskFailed("e" * 5000, {"blob": "d" * 100000})
        failed, _ = registry.start("t2", "x.fail", fail)
        test_tasks.wait_terminal(done)
        test_tasks.wait_terminal(failed)
        by_id = {s["task_id"]: s for s in registry.summaries()}
        self.assertEqual({"task_id": "t1", "method": "x.big",
                          "state": "complete", "percent": 100.0},
                         by_id["t1"])
        self.assertEqual({"task_id", "method", "state", "percent", "msg"},
                         set(by_id["t2"]))
        self.assertLess(len(by_id["t2"]["msg"]),
                        tasks.SUMMARY_MSG_LENGTH + 20)
        # The full state is still there for task_status and a repeat.
        self.assertEqual(100000, len(done.status()["result"]["blob"]))
        self.assertEqual(5000, len(failed.status()["msg"]))

    def test_shrink_status_replaces_an_oversized_result(self):
        status = {"task_id": "t1", "state": "complete", "method": "x",
                  "result": {"blob": "r" * 100000}}
        small = tasks.shrink_status(status, 4000)
        self.assertLessEqual(protocol.encoded_size(small), 4000)
        self.assertEqual("complete", small["state"])
        self.assertTrue(small["result"]["truncated"])
        self.assertEqual(protocol.encoded_size(status["result"]),
                         small["result"]["size"])
        self.assertIs(status, tasks.shrink_status(status, 10 ** 6))

    def test_shrink_status_of_an_error(self):
        status = {"task_id": "t1", "state": "error", "method": "x",
                  "msg": "e" * 100000, "details": {"blob": "d" * 100000}}
        small = tasks.shrink_status(status, 4000)
        self.assertLessEqual(protocol.encoded_size(small), 4000)
        self.assertTrue(small["details"]["truncated"])
        self.assertTrue(small["msg"].startswith("eee"))
        self.assertTrue(small["msg"].endswith("[truncated]"))


class ConflictTest(TempDirMixin, base.TestCase):
    def test_digest_is_canonical(self):
        self.assertEqual(tasks.params_digest("m", {"a": 1, "b": [1, 2]}),
                         tasks.params_digest("m", {"b": [1, 2], "a": 1}))
        self.assertNotEqual(tasks.params_digest("m", {"a": 1}),
                            tasks.params_digest("m", {"a": 2}))
        self.assertNotEqual(tasks.params_digest("m", {"a": 1}),
                            tasks.params_digest("n", {"a": 1}))

    # The methods are made up: the bodies are stand-ins, not the commands
    # whose results docs/schema/ describes (tests/result_schemas.py).
    def start(self, registry, task_id, method, params):
        task, created = registry.start(
            task_id, method, lambda task: {"done": True},
            params_digest=tasks.params_digest(method, params))
        test_tasks.wait_terminal(task)
        return task, created

    def test_other_method_or_params_is_a_conflict(self):
        registry = tasks.TaskRegistry()
        erase, _ = self.start(registry, "t1", "fake.erase",
                              {"task_id": "t1", "devices": []})
        with self.assertRaises(protocol.Conflict) as caught:
            self.start(registry, "t1", "fake.read",
                       {"task_id": "t1", "spec": {}})
        self.assertEqual({"task_id": "t1", "method": "fake.erase"},
                         caught.exception.details)
        self.assertEqual(-32005, caught.exception.code)
        with self.assertRaises(protocol.Conflict):
            self.start(registry, "t1", "fake.erase",
                       {"task_id": "t1", "devices": ["/dev/sdz"]})
        again, created = self.start(registry, "t1", "fake.erase",
                                    {"devices": [], "task_id": "t1"})
        self.assertIs(erase, again)
        self.assertFalse(created)

    def test_digest_survives_a_restart(self):
        state_dir = self.make_dir()
        registry = tasks.TaskRegistry(state_dir=state_dir)
        self.start(registry, "t1", "fake.erase", {"task_id": "t1"})
        restarted = tasks.TaskRegistry(state_dir=state_dir)
        with self.assertRaises(protocol.Conflict):
            restarted.existing("t1", "fake.erase",
                               tasks.params_digest("fake.erase",
                                                   {"task_id": "t1",
                                                    "devices": ["/x"]}))
        self.assertIsNotNone(restarted.existing(
            "t1", "fake.erase",
            tasks.params_digest("fake.erase", {"task_id": "t1"})))

    def test_older_record_without_digest_compares_the_method(self):
        state_dir = self.make_dir()
        write_records(state_dir, [record("old-1", "fake.erase",
                                         result={"devices": []})])
        registry = tasks.TaskRegistry(state_dir=state_dir)
        self.assertIsNotNone(registry.existing(
            "old-1", "fake.erase", tasks.params_digest("x", {})))
        with self.assertRaises(protocol.Conflict) as caught:
            registry.existing("old-1", "fake.read", None)
        self.assertEqual("fake.erase",
                         caught.exception.details["method"])

    def test_records_that_are_not_objects_do_not_stop_loading(self):
        state_dir = self.make_dir()
        write_records(state_dir, [record("good", started=5)])
        for name, content in (("task-list.json", "[1, 2]"),
                              ("task-num.json", "7"),
                              ("task-badstart.json",
                               json.dumps(record("odd", started="x")))):
            with open(os.path.join(state_dir, name), "w") as stream:
                stream.write(content)
        registry = tasks.TaskRegistry(state_dir=state_dir)
        self.assertEqual({"good", "odd"},
                         {s["task_id"] for s in registry.summaries()})


# -- the agent's messages ----------------------------------------------------

class FitSummariesTest(base.TestCase):
    def summaries(self, count):
        return [{"task_id": "t%03d" % i, "method": "x", "percent": 100.0,
                 "state": tasks.RUNNING if i == 3 else tasks.COMPLETE}
                for i in range(count)]

    def test_all_fit_nothing_omitted(self):
        message = agent_mod.fit_task_summaries({"a": 1}, self.summaries(5),
                                               100000)
        self.assertEqual(5, len(message["tasks"]))
        self.assertNotIn("tasks_omitted", message)

    def test_newest_and_running_kept_with_a_count(self):
        summaries = self.summaries(100)
        for room in (300, 1000, 4000):
            message = agent_mod.fit_task_summaries({"a": 1}, summaries, room)
            self.assertLessEqual(protocol.encoded_size(message), room)
            listed = [s["task_id"] for s in message["tasks"]]
            self.assertEqual(100, len(listed) + message["tasks_omitted"])
            self.assertIn("t003", listed)  # running: kept first
            self.assertIn("t099", listed)  # the newest
            self.assertEqual(sorted(listed), listed)  # oldest first
            # The room is used: one more summary would not have fit.
            self.assertGreater(protocol.encoded_size(message)
                               + protocol.encoded_size(summaries[0]) + 1,
                               room)

    def test_fit_log_record(self):
        entry = {"level": "ERROR", "message": "m" * 100000, "time": 1.0,
                 "logger": "x", "exception": "E" * 100000}
        small = logforward.fit_log_record(entry, 4000)
        self.assertLessEqual(protocol.encoded_size(small), 4000)
        self.assertTrue(small["truncated"])
        self.assertTrue(small["message"].startswith("mmm"))
        short = {"level": "ERROR", "message": "short", "time": 1.0,
                 "logger": "x", "exception": "E" * 100000}
        kept = logforward.fit_log_record(short, 4000)
        self.assertEqual("short", kept["message"])
        self.assertTrue(kept["exception"].startswith("EEE"))
        self.assertIs(entry, logforward.fit_log_record(entry, None))


class HandshakeSizeTest(TempDirMixin, base.TestCase):
    def make_agent(self, state_dir):
        conf = base.make_conf(task_status_interval=0.0)
        agent = test_agent.make_agent(conf)
        agent.tasks = tasks.TaskRegistry(state_dir=state_dir)
        return agent

    def test_handshake_of_200_tasks_fits_64_kib_and_lists_no_result(self):
        state_dir = self.make_dir()
        write_records(state_dir, many_records(200, result_size=4 * KIB,
                                              msg_size=4000))
        agent = self.make_agent(state_dir)
        session = protocol.Session()
        room = session.room_for_params("handshake",
                                       agent_mod.HANDSHAKE_LINE_BUDGET)
        params = agent.handshake_params("127.0.0.1:1", room)
        _, data = session.send_command("handshake", params)
        self.assertLessEqual(len(data) - 1, 64 * KIB)
        self.assertEqual(200, len(params["tasks"])
                         + params.get("tasks_omitted", 0))
        for summary in params["tasks"]:
            self.assertNotIn("result", summary)
            self.assertNotIn("details", summary)
        # The unbounded old form would not have fit.
        full = dict(params, tasks=agent.tasks.statuses())
        self.assertGreater(protocol.encoded_size(full), 64 * KIB)

    def test_status_fits_the_peer_limit(self):
        state_dir = self.make_dir()
        write_records(state_dir, many_records(200, msg_size=4000))
        agent = self.make_agent(state_dir)
        agent_sock, other = transport.socketpair()
        self.addCleanup(other.close)
        connection = transport.Connection(agent_sock, agent.dispatch)
        self.addCleanup(connection.close)
        connection.session.limit_sent_lines(16 * KIB)
        command = protocol.Command("status-1", "status", {})
        result = agent.dispatch(connection, command)
        data = connection.session.send_result("status-1", result)
        self.assertLessEqual(len(data) - 1, 16 * KIB)
        self.assertIn("result", json.loads(data))
        self.assertGreater(result["tasks_omitted"], 0)


class BackoffPolicyTest(base.TestCase):
    def make(self):
        self.now = 100.0
        return agent_mod.Backoff(0.2, 2.0, rng=lambda: 1.0,
                                 clock=lambda: self.now, stable_after=10.0)

    def test_short_links_do_not_reset(self):
        backoff = self.make()
        delays = []
        for _ in range(6):
            backoff.link_up()
            self.now += 0.01  # the endpoint drops the link at once
            self.assertFalse(backoff.link_down())
            delay = backoff.next_delay()
            delays.append(delay)
            self.now += delay
        self.assertEqual([0.2, 0.4, 0.8, 1.6, 2.0, 2.0], delays)

    def test_a_stable_link_resets(self):
        backoff = self.make()
        for _ in range(4):
            backoff.next_delay()
        backoff.link_up()
        self.now += 10.0
        self.assertTrue(backoff.link_down())
        self.assertEqual(0.2, backoff.next_delay())

    def test_no_link_at_all_does_not_reset(self):
        backoff = self.make()
        backoff.next_delay()
        self.assertFalse(backoff.link_down())
        self.assertEqual(0.4, backoff.next_delay())


# -- session tokens ---------------------------------------------------------

class SessionTokensTest(TempDirMixin, base.TestCase):
    def test_kept_on_disk_0600_and_read_back(self):
        state_dir = os.path.join(self.make_dir(), "state")
        store = session_tokens.SessionTokens("agent-1", state_dir)
        self.assertIsNone(store.get("h:1"))
        self.assertTrue(store.set("h:1", "tok-1"))
        self.assertTrue(store.set("h:2", "tok-2"))
        mode = stat.S_IMODE(os.stat(store.path).st_mode)
        self.assertEqual(0o600, mode)
        self.assertEqual([session_tokens.FILE_NAME], os.listdir(state_dir))
        again = session_tokens.SessionTokens("agent-1", state_dir)
        self.assertEqual("tok-1", again.get("h:1"))
        self.assertEqual("tok-2", again.get("h:2"))
        again.set("h:1", "tok-3")
        self.assertEqual("tok-3", session_tokens.SessionTokens(
            "agent-1", state_dir).get("h:1"))

    def test_an_endpoint_without_a_token_gets_the_newest_of_its_fleet(self):
        store = session_tokens.SessionTokens("agent-1", self.make_dir())
        fleet = ["a:1", "b:1", "c:1"]
        self.assertIsNone(store.for_handshake("a:1", fleet))
        store.set("b:1", "tok-b")
        store.set("elsewhere:1", "tok-other-fleet")
        store.set("c:1", "tok-c")
        self.assertEqual("tok-c", store.for_handshake("a:1", fleet))
        # Its own token first; none for an endpoint outside the list.
        self.assertEqual("tok-b", store.for_handshake("b:1", fleet))
        self.assertIsNone(store.for_handshake("a:1", ["a:1"]))
        # Newest: the order survives a restart.
        store.set("b:1", "tok-b2")
        again = session_tokens.SessionTokens("agent-1", store.state_dir)
        self.assertEqual("tok-b2", again.for_handshake("a:1", fleet))

    def test_accepted_and_reissued_tokens_follow_the_fleet(self):
        store = session_tokens.SessionTokens("agent-1", self.make_dir())
        fleet = ["a:1", "b:1"]
        store.set("a:1", "tok-1")
        store.set("other:1", "tok-x")
        store.accepted("b:1", store.for_handshake("b:1", fleet))
        self.assertEqual("tok-1", store.get("b:1"))
        # The fleet forgot the agent; b issues a new token: a's copy of
        # the old one goes too, another fleet's token stays.
        store.set("b:1", "tok-2")
        self.assertEqual("tok-2", store.get("a:1"))
        self.assertEqual("tok-x", store.get("other:1"))
        store.accepted("a:1", None)
        self.assertEqual("tok-2", store.get("a:1"))
        self.assertEqual("tok-2", session_tokens.SessionTokens(
            "agent-1", store.state_dir).get("a:1"))

    def test_other_agent_id_garbled_or_unreadable_start_without(self):
        state_dir = self.make_dir()
        session_tokens.SessionTokens("agent-1", state_dir).set("h:1", "tok")
        with self.assertLogs(
                "teeth_agent.runtime.session_tokens", "WARNING") as logs:
            other = session_tokens.SessionTokens("agent-2", state_dir)
        self.assertIsNone(other.get("h:1"))
        self.assertIn("belongs to agent_id", logs.output[0])
        path = os.path.join(state_dir, session_tokens.FILE_NAME)
        garbled = (b'{"agent_id": "agent-1", "tok', b"\xff\xfe",
                   b'["agent-1"]',
                   b'{"agent_id": "agent-1", "tokens": {"h:1": 5}}')
        for content in garbled:
            with open(path, "wb") as stream:
                stream.write(content)
            with self.assertLogs(
                    "teeth_agent.runtime.session_tokens", "WARNING"):
                store = session_tokens.SessionTokens("agent-1", state_dir)
            self.assertIsNone(store.get("h:1"))

    def test_file_readable_by_others_is_restricted(self):
        state_dir = self.make_dir()
        session_tokens.SessionTokens("agent-1", state_dir).set("h:1", "tok")
        path = os.path.join(state_dir, session_tokens.FILE_NAME)
        os.chmod(path, 0o644)
        with self.assertLogs("teeth_agent.runtime.session_tokens", "WARNING"):
            store = session_tokens.SessionTokens("agent-1", state_dir)
        self.assertEqual("tok", store.get("h:1"))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))

    def test_token_file_replaced_by_a_symlink_is_not_followed(self):
        state_dir = self.make_dir()
        elsewhere = os.path.join(self.make_dir(), "victim")
        session_tokens.SessionTokens("agent-1", state_dir).set("h:1", "tok")
        path = os.path.join(state_dir, session_tokens.FILE_NAME)
        os.rename(path, elsewhere)
        os.chmod(elsewhere, 0o644)
        os.symlink(elsewhere, path)
        with self.assertLogs(
                "teeth_agent.runtime.session_tokens", "WARNING") as logs:
            store = session_tokens.SessionTokens("agent-1", state_dir)
        self.assertIn("symbolic link", logs.output[0])
        # Neither read nor chmod-ed through the link.
        self.assertIsNone(store.get("h:1"))
        self.assertEqual(0o644, stat.S_IMODE(os.stat(elsewhere).st_mode))
        with open(elsewhere) as stream:
            before = stream.read()
        store.set("h:1", "tok-2")
        # The new token replaced the link; the target is untouched.
        self.assertFalse(os.path.islink(path))
        with open(elsewhere) as stream:
            self.assertEqual(before, stream.read())
        self.assertEqual("tok-2", session_tokens.SessionTokens(
            "agent-1", state_dir).get("h:1"))

    def test_token_file_that_is_a_fifo_does_not_block(self):
        state_dir = self.make_dir()
        os.mkfifo(os.path.join(state_dir, session_tokens.FILE_NAME))
        with self.assertLogs(
                "teeth_agent.runtime.session_tokens", "WARNING") as logs:
            store = session_tokens.SessionTokens("agent-1", state_dir)
        self.assertIn("not a regular file", logs.output[0])
        self.assertIsNone(store.get("h:1"))

    def test_bad_tokens_are_refused(self):
        store = session_tokens.SessionTokens("agent-1")
        for bad in (None, 5, "", "a b", "x" * 5000, "tok\n"):
            with self.assertLogs(
                    "teeth_agent.runtime.session_tokens", "WARNING"):
                self.assertFalse(store.set("h:1", bad))
        self.assertIsNone(store.get("h:1"))

    def test_without_state_dir_memory_only(self):
        store = session_tokens.SessionTokens("agent-1", None)
        store.set("h:1", "tok")
        self.assertEqual("tok", store.get("h:1"))
        self.assertIsNone(store.path)

    def test_unwritable_state_dir_keeps_the_token_in_memory(self):
        parent = self.make_dir()
        blocker = os.path.join(parent, "file")
        open(blocker, "w").close()
        store = session_tokens.SessionTokens("agent-1",
                                             os.path.join(blocker, "x"))
        with self.assertLogs("teeth_agent.runtime.session_tokens", "WARNING"):
            store.set("h:1", "tok")
        self.assertEqual("tok", store.get("h:1"))


class HandshakeAnswerTest(TempDirMixin, base.TestCase):
    """The agent acting on what the endpoint answers to its handshake."""

    def setUp(self):
        super().setUp()
        self.state_dir = self.make_dir()
        conf = base.make_conf(task_status_interval=0.0)
        self.agent = test_agent.make_agent(conf)
        self.agent.session_tokens = session_tokens.SessionTokens(
            "agent-1", self.state_dir)
        agent_sock, self.other = transport.socketpair()
        self.addCleanup(self.other.close)
        self.connection = transport.Connection(agent_sock,
                                               self.agent.dispatch)
        self.addCleanup(self.connection.close)

    def test_token_is_kept_and_sent_back_to_that_endpoint(self):
        self.assertNotIn("session_token",
                         self.agent.handshake_params("h:1"))
        self.assertTrue(self.agent._accept_handshake_answer(
            self.connection, "h:1", {"agent_id": "agent-1",
                                     "session_token": "tok-1"}))
        self.assertEqual("tok-1",
                         self.agent.handshake_params("h:1")["session_token"])
        self.assertNotIn("session_token",
                         self.agent.handshake_params("h:2"))
        restored = session_tokens.SessionTokens("agent-1", self.state_dir)
        self.assertEqual("tok-1", restored.get("h:1"))

    def test_a_token_of_the_list_is_sent_and_kept_when_accepted(self):
        self.agent.endpoints = [("h", 1), ("h", 2)]
        self.agent._accept_handshake_answer(
            self.connection, "h:1", {"session_token": "tok-1"})
        params = self.agent.handshake_params("h:2")
        self.assertEqual("tok-1", params["session_token"])
        self.assertNotIn("session_token",
                         self.agent.handshake_params("h:3"))
        self.assertTrue(self.agent._accept_handshake_answer(
            self.connection, "h:2", {}, params["session_token"]))
        self.assertEqual("tok-1", self.agent.session_tokens.get("h:2"))

    def test_announced_limit_bounds_the_connection(self):
        self.assertTrue(self.agent._accept_handshake_answer(
            self.connection, "h:1", {"max_line_length": 8192}))
        self.assertEqual(8192, self.connection.session.peer_max_line_length)
        self.assertEqual(8192, self.agent.peer_line_limits["h:1"])
        self.assertEqual(
            self.connection.session.room_for_params("handshake", 8192),
            self.agent._handshake_room(self.connection, "h:1"))

    def test_unusable_limit_fails_the_link(self):
        for bad in (100, "65536", True, -1, 4095):
            with self.assertLogs("teeth_agent.runtime.agent", "ERROR"):
                self.assertFalse(self.agent._accept_handshake_answer(
                    self.connection, "h:1", {"max_line_length": bad}))
        self.assertIsNone(self.connection.session.peer_max_line_length)
        # A token issued with an unusable limit is still kept.
        with self.assertLogs("teeth_agent.runtime.agent", "ERROR"):
            self.agent._accept_handshake_answer(
                self.connection, "h:1", {"max_line_length": 10,
                                         "session_token": "tok-9"})
        self.assertEqual("tok-9", self.agent.session_tokens.get("h:1"))

    def test_oversized_final_state_gets_a_stand_in(self):
        self.connection.session.limit_sent_lines(8192)
        status = {"task_id": "t1", "state": "complete", "method": "x",
                  "result": {"blob": "r" * 100000}}
        with self.assertLogs("teeth_agent.runtime.agent", "WARNING"):
            sent = self.agent._fit_task_status(self.connection, status)
        self.assertTrue(sent["result"]["truncated"])
        _, data = self.connection.session.send_command("task_status", sent)
        self.assertLessEqual(len(data) - 1, 8192)


class ForwardedLogLimitTest(base.TestCase):
    """Log records are cut to the endpoint's limit, not dropped."""

    def test_long_record_is_cut(self):
        conf = base.make_conf(task_status_interval=0.0)
        agent = test_agent.make_agent(conf)
        handler = logforward.ForwardingLogHandler(capacity=10)
        agent.attach_log_handler(handler)
        logger = logging.getLogger("teeth_agent.test_trust_forward")
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        logger.propagate = False
        self.addCleanup(setattr, logger, "propagate", True)
        logger.warning("%s", "w" * 200000)
        agent_sock, server_sock = transport.socketpair()
        received = []
        done = threading.Event()

        def serve(connection, command):
            received.append(command)
            done.set()
            return {}
        endpoint = transport.Connection(server_sock, serve).start()
        self.addCleanup(endpoint.close)
        link = transport.Connection(agent_sock, agent.dispatch).start()
        self.addCleanup(link.close)
        link.session.limit_sent_lines(8192)
        forwarder = transport.spawn(agent._forward_logs, link)
        self.addCleanup(forwarder.kill)
        for _ in range(200):
            if done.is_set():
                break
            transport.sleep(0.05)
        self.assertTrue(received, "no log record arrived")
        params = received[0].params
        self.assertTrue(params["truncated"])
        self.assertTrue(params["message"].startswith("www"))
        self.assertLessEqual(
            len(protocol.encode_json(received[0].to_wire())), 8192 + 40)
