"""What the display tests feed the CLI's display: task updates, agents,
a terminal."""

import io
import re

# The functional tests' reading of a progress line
# (tests/functional/test_core_cli.py).
PROGRESS = re.compile(r"^(\S+) \[[#.]+\]\s+([0-9.]+)%\s+ETA (\S+)$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def running(task_id="t1", percent=42.0, eta=65.0):
    return {"task_id": task_id, "state": "running", "percent": percent,
            "eta": eta}


def agent(agent_id, connected=True, tls=True, peer="agent at 10.0.0.1:5",
          tasks=()):
    return {"agent_id": agent_id, "connected": connected, "tls": tls,
            "peer": peer, "tasks": [{"state": state} for state in tasks]}
