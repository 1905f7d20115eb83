"""A real endpoint that a test can kill and restart, and its control socket.

:class:`RestartableEndpoint` runs ``teeth-endpoint serve`` on a fixed port in
one work directory, so an agent pointed at that port finds every new
incarnation; :meth:`RestartableEndpoint.kill` ends the current process with
SIGKILL (no goodbye on any socket). :class:`ControlClient` asks the running
server what it knows through its control socket, with bounded waits.
"""

import json
import os
import signal
import socket

from tests.functional import harness


class ControlClient:
    """A connection to an endpoint's control socket (``agents``, ``call``).

    It answers the ``task_status`` commands the server forwards while a
    task is watched, like the CLI does.
    """

    def __init__(self, path, timeout=harness.MESSAGE_TIMEOUT):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        self.peer = harness.JsonLinePeer(sock, name="control socket")

    def close(self):
        self.peer.close()

    def agents(self):
        response = self.peer.call("agents", {})
        if "error" in response:
            raise AssertionError("agents failed: %r" % (response,))
        return response["result"]["agents"]

    def agent(self, agent_id):
        """The agent's description, or None when the endpoint has none."""
        for agent in self.agents():
            if agent["agent_id"] == agent_id:
                return agent
        return None

    def task(self, agent_id, task_id):
        """The latest state of a task the endpoint knows, or None."""
        agent = self.agent(agent_id)
        for status in (agent or {}).get("tasks") or []:
            if status.get("task_id") == task_id:
                return status
        return None

    def call(self, agent_id, method, params, timeout=10.0):
        """Send a command to an agent; returns the response message (a
        dict with ``result`` ({"result": ...}) or ``error``)."""
        return self.peer.call("call", {"agent_id": agent_id,
                                       "method": method, "params": params,
                                       "timeout": timeout},
                              timeout=timeout + 5)


class RestartableEndpoint:
    """``teeth-endpoint serve`` on a fixed port, killed and restarted."""

    def __init__(self, testcase, overrides=None):
        self._testcase = testcase
        self.workdir = harness.make_workdir(testcase)
        self.port = harness.free_port()
        self._overrides = harness.merge_sections(
            overrides or {}, {"endpoint": {"listen_port": self.port}})
        self.processes = []
        self.current = None
        self.start()

    @property
    def address(self):
        return "%s:%d" % (harness.HOST, self.port)

    def start(self):
        process = harness.EndpointProcess(self.workdir, self._overrides)
        self._testcase.addCleanup(process.stop)
        self.processes.append(process)
        self.current = process
        process.wait_ready()
        return process

    def kill(self):
        """SIGKILL the running server and wait until it is gone."""
        process = self.current.process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(harness.START_TIMEOUT)
        self.current = None

    def restart(self):
        self.kill()
        return self.start()

    def control(self):
        """A :class:`ControlClient` of the running server; the test closes
        it (it is also closed at cleanup)."""
        client = ControlClient(self.current.control_socket)
        self._testcase.addCleanup(client.close)
        return client

    def ask(self, func):
        """``func(ControlClient)`` over a fresh connection, closed after."""
        client = ControlClient(self.current.control_socket)
        try:
            return func(client)
        finally:
            client.close()

    def wait_agent(self, agent_id, timeout=harness.START_TIMEOUT):
        """Wait until the running server has ``agent_id`` connected."""
        def connected():
            agent = self.ask(lambda client: client.agent(agent_id))
            return agent if agent and agent["connected"] else None
        return harness.wait_until(connected, timeout,
                                  what="agent %s connected" % agent_id)

    def wait_task(self, agent_id, task_id, states,
                  timeout=harness.START_TIMEOUT):
        """Wait until the server knows the task in one of ``states``."""
        def reached():
            status = self.ask(lambda client: client.task(agent_id, task_id))
            return status if status and status["state"] in states else None
        return harness.wait_until(reached, timeout, what="task %s in %s"
                                  % (task_id, "/".join(states)))

    def outputs(self):
        """The logs of every incarnation, oldest first."""
        return [process.output() for process in self.processes]


def task_statuses(lines, task_id):
    """The ``task_status`` params of ``task_id`` among tapped lines.

    ``lines`` is ``[(link, bytes)]`` from the proxy's tap; returns
    ``[(link, params)]`` in order.
    """
    found = []
    for number, line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            raise AssertionError("the tap recorded a line that is not JSON: "
                                 "%r" % line[:200]) from None
        if harness.is_task_status(message, task_id):
            found.append((number, message["params"]))
    return found
