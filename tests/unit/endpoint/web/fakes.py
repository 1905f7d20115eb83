"""An in-process endpoint with agents on fake connections, for the
dashboard's unit tests (no sockets for the agents)."""

from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import transport


class FakeConnection:
    def __init__(self, peer="10.0.0.1:1000", tls=False):
        self.name = "agent at %s" % peer
        self.closed = False
        self.fatal_reason = None
        self.last_received = transport.monotonic()
        self.user_data = {"address": peer.split(":")[0], "peer": peer,
                          "agent": None, "tls": tls, "cert_agent_id": None}

    def fatal(self, reason):
        self.fatal_reason = reason
        self.closed = True

    def close(self, reason="closed"):
        self.closed = True


class Command:
    def __init__(self, method, params):
        self.method = method
        self.params = params


class Fleet:
    """An endpoint (not listening) and helpers that play its agents."""

    def __init__(self, **kwargs):
        self.endpoint = endpoint_mod.Endpoint(port=0, **kwargs)
        self.links = {}

    def connect(self, agent_id, tls=False, peer=None, name=None):
        """Handshake as ``agent_id`` on a new link kept under ``name``
        (the agent_id by default)."""
        link = FakeConnection(peer or "10.0.0.%d:1000" % (len(self.links)
                                                          + 1), tls=tls)
        self.links[name or agent_id] = link
        return self.endpoint._dispatch(link, Command("handshake", {
            "agent_id": agent_id, "protocol_versions": ["v1"],
            "agent_version": "1.0", "tasks": []}))

    def send(self, agent_id, method, params):
        return self.endpoint._dispatch(self.links[agent_id],
                                       Command(method, params))

    def task(self, agent_id, task_id, state, **fields):
        params = {"task_id": task_id, "state": state}
        params.update(fields)
        return self.send(agent_id, "task_status", params)

    def log(self, agent_id, message, level="INFO"):
        return self.send(agent_id, "log", {"level": level,
                                           "message": message,
                                           "logger": "test", "time": 1.0})

    def disconnect(self, agent_id):
        link = self.links[agent_id]
        link.closed = True
        self.endpoint._on_close(link, "test")


def erase_result(*devices):
    """A decom.disk_erase result: ``devices`` are (path, outcome, bytes)."""
    return {"devices": [
        {"path": path, "outcome": outcome, "bytes": size,
         "method": "overwrite", "nist_category": "clear",
         "verified": outcome == "erased", "duration_s": 1.5}
        for path, outcome, size in devices]}
