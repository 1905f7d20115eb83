"""Following tasks from the command line: ``call``'s bar and ``watch``.

``teeth-endpoint call`` (for a task command) and ``teeth-endpoint watch
AGENT TASK_ID`` follow one task through the server's ``watch_task``
(:func:`follow_task`, the one follow loop); ``teeth-endpoint watch --all``
shows one progress line per running task of every agent
(:func:`watch_all`). Both end cleanly on Ctrl-C or ``--timeout``: the task
goes on, and the tool says how to follow it again and exits
:data:`EXIT_STILL_RUNNING`, which a script tells apart from a task that
ended in error (:data:`EXIT_TASK_ERROR`).

With ``--json`` every update is one JSON object on one line of stdout (a
task status, as the agent sent it, with ``agent_id`` added) and the final
status is the last line; without it the progress is drawn on stderr
(:mod:`teeth_agent.cmd.display`) and the final status printed as indented
JSON.
"""

import json
import sys

from teeth_agent.cmd import display
from teeth_agent.cmd import usage
from teeth_agent.endpoint import books
from teeth_agent import protocol
from teeth_agent import transport

#: The task ended ``complete`` (or the command was not a task).
EXIT_OK = 0
#: The task ended in ``error``, or the server refused the command.
EXIT_TASK_ERROR = 1
#: A usage or start-up error (:mod:`teeth_agent.cmd.usage`).
EXIT_USAGE = usage.EXIT_USAGE
#: Following stopped (Ctrl-C or ``--timeout``) while the task still runs.
EXIT_STILL_RUNNING = 3

#: How often ``watch --all`` asks the server for the agents' tasks.
POLL_INTERVAL = 1.0


class StillRunning(Exception):
    """Following stopped before the task ended; the task goes on."""

    def __init__(self, agent_id, task_id, why):
        super().__init__(why)
        self.agent_id = agent_id
        self.task_id = task_id
        self.why = why

    def message(self):
        show = books.printable
        return ("stopped following (%s); task %s is still running, follow "
                "it with `teeth-endpoint watch %s %s`"
                % (self.why, show(self.task_id), show(self.agent_id),
                   show(self.task_id)))


class FollowError(Exception):
    """The server could not follow the task (one line for the operator)."""


def json_line(value, stream):
    # ensure_ascii: control characters an agent sent arrive as \u escapes.
    stream.write(json.dumps(value, sort_keys=True, ensure_ascii=True)
                 + "\n")
    stream.flush()


class Updates:
    """Where a followed task's updates go: a progress display on
    ``stream`` or, with ``as_json``, JSON lines on ``out``.

    It is also the control connection's dispatcher: it answers the
    server's ``ping`` and draws its ``task_status`` pushes. When the
    reader of the output went away (BrokenPipeError while drawing a push)
    it keeps the error in :attr:`broken` and closes the connection, so the
    follow ends at once and raises it in the main thread
    (:func:`follow_task`), where :mod:`teeth_agent.cmd.output` ends the
    command quietly.
    """

    def __init__(self, stream=None, as_json=False, out=None, agent_id=None):
        self.as_json = as_json
        self.out = out or sys.stdout
        self.agent_id = agent_id
        self.progress = None if as_json else display.TaskProgress(
            stream or sys.stderr)
        #: The BrokenPipeError a push met, or None.
        self.broken = None

    def __call__(self, connection, command):
        if command.method == "ping":
            return command.params
        if command.method != "task_status":
            raise protocol.UnknownMethod("unknown method %s"
                                         % command.method)
        if isinstance(command.params, dict) and self.broken is None:
            try:
                self.update(command.params)
            except BrokenPipeError as exc:
                self.broken = exc
        if self.broken is not None:
            connection.close("the output was closed")
        return {}

    def update(self, status, label=None):
        if self.as_json:
            if status.get("state") == "running":
                json_line(self._tagged(status), self.out)
            return
        self.progress.update(status, label)

    def end(self, status, label=None):
        """The task's last status: the bar to 100% for a complete one."""
        if not self.as_json:
            self.progress.end(status, label)

    def final(self, status):
        """Print the final status (after :meth:`finish`)."""
        if self.as_json:
            json_line(self._tagged(status), self.out)
        else:
            print(json.dumps(status, indent=2, sort_keys=True),
                  file=self.out, flush=True)

    def _tagged(self, status):
        if self.agent_id is None or "agent_id" in status:
            return status
        return {"agent_id": self.agent_id, **status}

    def finish(self):
        if self.progress is not None:
            self.progress.finish()


def follow_task(connection, agent_id, task_id, timeout, updates):
    """Follow one task until it ends: returns its final status.

    The updates the server pushes go to ``updates``. Raises
    :class:`StillRunning` on Ctrl-C or when ``timeout`` seconds (None: no
    limit) pass first, and :class:`FollowError` when the server refuses
    or is lost.
    """
    try:
        answer = connection.call(
            "watch_task", {"agent_id": agent_id, "task_id": task_id,
                           "timeout": timeout},
            timeout=None if timeout is None else timeout + 10)
    except KeyboardInterrupt:
        raise StillRunning(agent_id, task_id, "interrupted") from None
    except transport.CallTimeout:
        raise StillRunning(agent_id, task_id,
                           "--timeout %gs passed" % timeout) from None
    except transport.RemoteError as exc:
        raise FollowError("the server cannot follow task %s: %s"
                          % (books.printable(task_id),
                             books.printable(exc.msg))) from None
    except transport.ConnectionLost:
        if getattr(updates, "broken", None) is not None:
            # Not the server: the reader of the output went away.
            raise updates.broken from None
        raise FollowError("lost the server while following task %s; it "
                          "may still be running"
                          % books.printable(task_id)) from None
    if not answer.get("terminal"):
        raise StillRunning(agent_id, task_id,
                           "--timeout %gs passed" % timeout)
    return answer["status"]


def finish_follow(updates, status, stderr=None):
    """Show a followed task's end; returns the exit status."""
    stderr = stderr or sys.stderr
    updates.end(status)
    updates.finish()
    updates.final(status)
    if status.get("state") == "error":
        print("teeth-endpoint: task %s failed: %s"
              % (books.printable(status.get("task_id")),
                 books.printable(status.get("msg"))), file=stderr)
        return EXIT_TASK_ERROR
    return EXIT_OK


def follow_and_report(connection, agent_id, task_id, timeout, updates,
                      stderr=None, fallback=None):
    """:func:`follow_task` and its report; returns the exit status.

    When the server cannot follow the task, ``fallback()`` (if given) may
    return its final status from elsewhere (the endpoint's database).
    """
    stderr = stderr or sys.stderr
    try:
        status = follow_task(connection, agent_id, task_id, timeout, updates)
    except StillRunning as exc:
        updates.finish()
        print("teeth-endpoint: %s" % exc.message(), file=stderr)
        return EXIT_STILL_RUNNING
    except FollowError as exc:
        status = fallback() if fallback is not None else None
        if status is None:
            updates.finish()
            print("teeth-endpoint: %s" % exc, file=stderr)
            return EXIT_TASK_ERROR
    return finish_follow(updates, status, stderr)


def running_tasks(agents):
    """``[(agent_id, status)]`` of every running task in an ``agents``
    listing."""
    found = []
    for agent in agents:
        for status in agent.get("tasks") or []:
            if isinstance(status, dict) and status.get("state") == "running":
                found.append((agent.get("agent_id"), status))
    return found


def watch_all(list_agents, updates, timeout=None, clock=None, sleep=None,
              stderr=None):
    """Show every running task of every agent until none is left running
    (exit 0), Ctrl-C or ``timeout`` (exit 3 while tasks still run).

    ``list_agents()`` returns the agents the server knows (the
    ``agents`` listing, tasks included). A task seen running that has
    ended by the next look is drawn with its final state.
    """
    import time
    clock = clock or time.monotonic
    sleep = sleep or transport.sleep
    stderr = stderr or sys.stderr
    deadline = None if timeout is None else clock() + timeout
    seen = {}
    try:
        while True:
            agents = list(list_agents())
            running = running_tasks(agents)
            now_running = {}
            for agent_id, status in running:
                key = (agent_id, status.get("task_id"))
                now_running[key] = status
                updates.update(_with_agent(agent_id, status), _label(key))
            for key in set(seen) - set(now_running):
                final = _status_of(agents, *key) or dict(
                    seen[key], state="gone")
                updates.end(final, _label(key))
                if updates.as_json:
                    json_line(_with_agent(key[0], final), updates.out)
            seen = now_running
            if not seen:
                updates.finish()
                if not updates.as_json:
                    print("no task is running", file=stderr)
                return EXIT_OK
            if deadline is not None and clock() >= deadline:
                updates.finish()
                print("teeth-endpoint: stopped watching (--timeout %gs "
                      "passed); %d task(s) still running"
                      % (timeout, len(seen)), file=stderr)
                return EXIT_STILL_RUNNING
            sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        updates.finish()
        print("teeth-endpoint: stopped watching (interrupted); %d task(s) "
              "still running" % len(seen), file=stderr)
        return EXIT_STILL_RUNNING


def _label(key):
    return "%s %s" % (books.printable(key[0]), books.printable(key[1]))


def _with_agent(agent_id, status):
    return {"agent_id": agent_id, **status}


def _status_of(agents, agent_id, task_id):
    for agent in agents:
        if agent.get("agent_id") != agent_id:
            continue
        for status in agent.get("tasks") or []:
            if isinstance(status, dict) and \
                    status.get("task_id") == task_id:
                return status
    return None
