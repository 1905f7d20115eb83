"""teeth_agent.cmd.follow and lifecycle: following a task, ``watch --all``,
exit statuses, and claiming the control socket (the server is faked)."""

import io
import json
import os
import shutil
import signal
import socket
import tempfile

from teeth_agent.cmd import follow
from teeth_agent.cmd import lifecycle
from teeth_agent import protocol
from teeth_agent import transport
from tests import base
from tests.unit.cmd import samples


class FakeConnection:
    """Answers ``watch_task`` with ``answer`` (or raises it)."""

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def call(self, method, params, timeout=None):
        self.calls.append((method, params, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def complete(task_id="t1"):
    return {"task_id": task_id, "state": "complete", "result": {"x": 1}}


class UpdatesTest(base.TestCase):
    def command(self, method, params):
        return protocol.Command(id="1", method=method, params=params)

    def test_draws_task_status_and_answers_ping(self):
        stream = io.StringIO()
        updates = follow.Updates(stream)
        self.assertEqual({}, updates(None, self.command(
            "task_status", samples.running(percent=25.0))))
        self.assertEqual({"x": 1}, updates(None, self.command(
            "ping", {"x": 1})))
        with self.assertRaises(protocol.UnknownMethod):
            updates(None, self.command("reboot", {}))
        updates.finish()
        (line,) = stream.getvalue().splitlines()
        self.assertEqual(("t1", "25.0", "01:05"),
                         samples.PROGRESS.match(line).groups())

    def test_json_updates_are_one_object_a_line(self):
        out = io.StringIO()
        updates = follow.Updates(as_json=True, out=out, agent_id="a1")
        updates.update(samples.running(percent=10.0))
        updates.update({"task_id": "t1", "state": "complete"})  # not drawn
        updates.final(complete())
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(["running", "complete"],
                         [line["state"] for line in lines])
        self.assertEqual({"a1"}, {line["agent_id"] for line in lines})


class ClosedOutput(io.StringIO):
    """An output whose reader went away."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


class ClosingConnection:
    def __init__(self):
        self.closed = []

    def close(self, reason="closed"):
        self.closed.append(reason)


class ClosedOutputTest(base.TestCase):
    def test_a_push_to_a_closed_output_ends_the_follow(self):
        updates = follow.Updates(as_json=True, out=ClosedOutput(),
                                 agent_id="a1")
        connection = ClosingConnection()
        command = protocol.Command(id="1", method="task_status",
                                   params=samples.running(percent=10.0))
        # Answered (the server is not told of the local failure), the
        # error kept and the connection closed, once per push.
        self.assertEqual({}, updates(connection, command))
        self.assertIsInstance(updates.broken, BrokenPipeError)
        self.assertEqual({}, updates(connection, command))
        self.assertEqual(["the output was closed"] * 2, connection.closed)
        # The follow then raises it (not "lost the server"), for
        # cmd.output to end the command quietly.
        lost = FakeConnection(transport.ConnectionLost("closed"))
        with self.assertRaises(BrokenPipeError):
            follow.follow_task(lost, "a1", "t1", None, updates)

    def test_a_lost_server_is_still_a_follow_error(self):
        lost = FakeConnection(transport.ConnectionLost("closed"))
        with self.assertRaises(follow.FollowError):
            follow.follow_task(lost, "a1", "t1", None,
                               follow.Updates(io.StringIO()))


class FollowTaskTest(base.TestCase):
    def test_final_status_is_returned(self):
        connection = FakeConnection({"status": complete(),
                                     "terminal": True})
        status = follow.follow_task(connection, "a1", "t1", None,
                                    follow.Updates(io.StringIO()))
        self.assertEqual("complete", status["state"])
        method, params, timeout = connection.calls[0]
        self.assertEqual("watch_task", method)
        self.assertEqual({"agent_id": "a1", "task_id": "t1",
                          "timeout": None}, params)
        self.assertIsNone(timeout)

    def test_server_timeout_is_still_running(self):
        connection = FakeConnection({"status": samples.running(),
                                     "terminal": False})
        with self.assertRaises(follow.StillRunning) as caught:
            follow.follow_task(connection, "a1", "t1", 4.0,
                               follow.Updates(io.StringIO()))
        self.assertIn("--timeout 4s", caught.exception.message())
        self.assertIn("`teeth-endpoint watch a1 t1`",
                      caught.exception.message())

    def test_ctrl_c_is_still_running(self):
        connection = FakeConnection(KeyboardInterrupt())
        with self.assertRaises(follow.StillRunning) as caught:
            follow.follow_task(connection, "a1", "t1", None,
                               follow.Updates(io.StringIO()))
        self.assertEqual("interrupted", caught.exception.why)

    def test_refusal_and_lost_server_are_follow_errors(self):
        for answer in (transport.RemoteError({"type": "NotFound",
                                              "msg": "agent a1 is unknown"}),
                       transport.ConnectionLost("gone")):
            with self.assertRaises(follow.FollowError):
                follow.follow_task(FakeConnection(answer), "a1", "t1", None,
                                   follow.Updates(io.StringIO()))

    def test_exit_statuses(self):
        cases = [({"status": complete(), "terminal": True}, follow.EXIT_OK),
                 ({"status": {"task_id": "t1", "state": "error",
                              "msg": "boom"}, "terminal": True},
                  follow.EXIT_TASK_ERROR),
                 ({"status": samples.running(), "terminal": False},
                  follow.EXIT_STILL_RUNNING),
                 (KeyboardInterrupt(), follow.EXIT_STILL_RUNNING),
                 (transport.ConnectionLost("x"), follow.EXIT_TASK_ERROR)]
        for answer, expected in cases:
            stderr, out = io.StringIO(), io.StringIO()
            updates = follow.Updates(io.StringIO(), out=out)
            code = follow.follow_and_report(FakeConnection(answer), "a1",
                                            "t1", 5.0, updates, stderr)
            self.assertEqual(expected, code, stderr.getvalue())
            self.assertNotIn("Traceback", stderr.getvalue())
            self.assertLessEqual(len(stderr.getvalue().splitlines()), 1)

    def test_a_fast_task_bar_ends_at_100(self):
        stream = io.StringIO()
        updates = follow.Updates(stream, out=io.StringIO())
        follow.finish_follow(updates, complete(), io.StringIO())
        self.assertIn("100.0%  done", stream.getvalue())


class WatchAllTest(base.TestCase):
    def agents(self, *tasks):
        return [{"agent_id": "a1", "tasks": list(tasks)}]

    def test_until_nothing_runs(self):
        pages = [self.agents(samples.running("t1", 10.0),
                             samples.running("t2", 50.0)),
                 self.agents(samples.running("t1", 60.0), complete("t2")),
                 self.agents(complete("t1"), complete("t2"))]
        out, stderr = io.StringIO(), io.StringIO()
        updates = follow.Updates(as_json=True, out=out)
        code = follow.watch_all(lambda: pages.pop(0), updates,
                                sleep=lambda seconds: None, stderr=stderr)
        self.assertEqual(follow.EXIT_OK, code)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(
            [("t1", "running"), ("t2", "running"), ("t1", "running"),
             ("t2", "complete"), ("t1", "complete")],
            [(line["task_id"], line["state"]) for line in lines])
        self.assertEqual({"a1"}, {line["agent_id"] for line in lines})

    def test_plain_lines_name_agent_and_task(self):
        pages = [self.agents(samples.running("t1", 10.0)),
                 self.agents(complete("t1"))]
        stream = io.StringIO()
        code = follow.watch_all(lambda: pages.pop(0),
                                follow.Updates(stream),
                                sleep=lambda seconds: None,
                                stderr=io.StringIO())
        self.assertEqual(follow.EXIT_OK, code)
        first, last = stream.getvalue().splitlines()
        self.assertTrue(first.startswith("a1 t1 ["), first)
        self.assertIn("100.0%  done", last)

    def test_timeout_while_running_exits_3(self):
        now = [0.0]

        def sleep(seconds):
            now[0] += seconds
        stderr = io.StringIO()
        code = follow.watch_all(
            lambda: self.agents(samples.running("t1")),
            follow.Updates(io.StringIO()), timeout=2.5,
            clock=lambda: now[0], sleep=sleep, stderr=stderr)
        self.assertEqual(follow.EXIT_STILL_RUNNING, code)
        self.assertIn("1 task(s) still running", stderr.getvalue())

    def test_ctrl_c_exits_3(self):
        def interrupted(seconds):
            raise KeyboardInterrupt
        stderr = io.StringIO()
        code = follow.watch_all(lambda: self.agents(samples.running("t1")),
                                follow.Updates(io.StringIO()),
                                sleep=interrupted, stderr=stderr)
        self.assertEqual(follow.EXIT_STILL_RUNNING, code)
        self.assertIn("interrupted", stderr.getvalue())


class ClaimControlSocketTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="teeth-sock-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "control.sock")

    def bound(self, listen):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(self.path)
        if listen:
            sock.listen(1)
        return sock

    def test_no_socket_is_fine(self):
        lifecycle.claim_control_socket(self.path)

    def test_a_stale_socket_is_removed(self):
        self.bound(listen=False).close()
        self.assertTrue(os.path.exists(self.path))
        with self.assertLogs(lifecycle.LOG, "WARNING") as logs:
            lifecycle.claim_control_socket(self.path)
        self.assertFalse(os.path.exists(self.path))
        self.assertIn("stale control socket", logs.output[0])

    def test_a_live_server_is_refused(self):
        self.bound(listen=True)
        with self.assertRaises(lifecycle.StartError) as caught:
            lifecycle.claim_control_socket(self.path)
        self.assertIn("holds the control socket", str(caught.exception))
        self.assertTrue(os.path.exists(self.path))

    def test_a_file_is_not_taken_over(self):
        with open(self.path, "w") as handle:
            handle.write("precious")
        with self.assertRaises(lifecycle.StartError):
            lifecycle.claim_control_socket(self.path)
        with open(self.path) as handle:
            self.assertEqual("precious", handle.read())


class FakeEndpoint:
    host, port = "127.0.0.1", 9999

    def __init__(self, error):
        self.error = error

    def start(self):
        raise self.error


class LifecycleTest(base.TestCase):
    def test_port_in_use_is_one_sentence(self):
        with self.assertRaises(lifecycle.StartError) as caught:
            lifecycle.start_listening(FakeEndpoint(
                OSError(98, "EADDRINUSE")))
        self.assertEqual("port 9999 on 127.0.0.1 is in use (another "
                         "teeth-endpoint serve or another program holds "
                         "it); stop it or choose another [endpoint] port",
                         str(caught.exception))

    def test_os_error_text_says_it_once(self):
        self.assertEqual("connection refused", lifecycle.os_error_text(
            ConnectionRefusedError(111, "ECONNREFUSED")))

    def test_sigterm_raises_stop_and_is_released(self):
        before = signal.getsignal(signal.SIGTERM)
        with lifecycle.StopSignals() as signals:
            with self.assertRaises(lifecycle.Stop) as caught:
                os.kill(os.getpid(), signal.SIGTERM)
            signals.release()
        self.assertEqual("SIGTERM received", caught.exception.reason)
        self.assertEqual(before, signal.getsignal(signal.SIGTERM))


class FallbackTest(base.TestCase):
    def test_a_task_the_server_forgot_comes_from_the_fallback(self):
        gone = FakeConnection(transport.RemoteError(
            {"type": "NotFound", "msg": "agent a1 is unknown"}))
        out, stderr = io.StringIO(), io.StringIO()
        code = follow.follow_and_report(
            gone, "a1", "t1", None, follow.Updates(io.StringIO(), out=out),
            stderr, fallback=lambda: complete())
        self.assertEqual(follow.EXIT_OK, code, stderr.getvalue())
        self.assertEqual("complete", json.loads(out.getvalue())["state"])

    def test_no_fallback_status_is_the_follow_error(self):
        gone = FakeConnection(transport.ConnectionLost("gone"))
        stderr = io.StringIO()
        code = follow.follow_and_report(
            gone, "a1", "t1", None, follow.Updates(io.StringIO()), stderr,
            fallback=lambda: None)
        self.assertEqual(follow.EXIT_TASK_ERROR, code)
        self.assertIn("lost the server", stderr.getvalue())


class WatchAllOnATerminalTest(base.TestCase):
    def test_live_lines_for_every_task(self):
        pages = [[{"agent_id": "a1", "tasks": [samples.running("t1", 10.0)]},
                  {"agent_id": "a2\x1b[2J", "tasks": [
                      samples.running("t2", 20.0)]}],
                 [{"agent_id": "a1", "tasks": [complete("t1")]},
                  {"agent_id": "a2\x1b[2J", "tasks": [complete("t2")]}]]
        terminal = samples.Terminal()
        code = follow.watch_all(lambda: pages.pop(0),
                                follow.Updates(terminal),
                                sleep=lambda seconds: None,
                                stderr=io.StringIO())
        self.assertEqual(follow.EXIT_OK, code)
        drawn = terminal.getvalue()
        self.assertIn("a1 t1", drawn)
        self.assertIn("done", drawn)
        # An agent's escape sequence is shown, not obeyed.
        self.assertNotIn("\x1b[2J", drawn)
