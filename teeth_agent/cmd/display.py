"""How the command-line tools show a task's progress and the agents table.

``teeth-endpoint call`` and ``agents`` and ``tools/demo.py`` draw with these
classes, so the CLI and the demo look alike. On a terminal they draw with
`rich`_: a live progress bar with the percent and the agent's ETA, and a
table coloured by state and link. Anywhere else (a pipe, a file, a test)
they write plain lines that scripts read, and whose form is kept:

- progress: one line per update, ``TASK_ID [#####.....]  42.0%  ETA 01:05``
  (``--:--`` while the agent has no estimate, ``1h05m`` past an hour);
- agents: a header line then one line per agent, columns padded with
  spaces, the agent id first (``AGENT STATE LINK PEER TASKS``), or ``no
  agents``; a disconnected agent's PEER is ``seen`` and when, in ISO 8601
  UTC (the holding process is in ``agents --json``: ``process``).

Text an agent supplied (its id, peer, task ids) is shown through
:func:`teeth_agent.endpoint.books.printable` and, on a terminal, as rich
``Text``
objects, never as markup: a forged ``[bold]`` or escape sequence is shown,
not obeyed.

.. _rich: https://rich.readthedocs.io/
"""

import math
import time

from rich import box
from rich import console as rich_console
from rich import progress as rich_progress
from rich import table as rich_table
from rich import text as rich_text

from teeth_agent.endpoint import books

BAR_WIDTH = 30
AGENT_HEADER = ("AGENT", "STATE", "LINK", "PEER", "TASKS")
_AGENT_ROW = "%-40s %-10s %-9s %-24s %s"
#: On a terminal, agents are drawn in tables of this many rows, so a large
#: fleet is shown as it arrives instead of held in memory.
TABLE_CHUNK = 500


def _number(value):
    """``value`` as a finite float, or None: ``percent`` and ``eta`` come
    from the agent, and a rogue one may send strings, NaN or infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_eta(eta):
    """``MM:SS``, ``HhMMm`` past an hour, ``--:--`` for no (or no usable)
    estimate."""
    eta = _number(eta)
    if eta is None or eta < 0:
        return "--:--"
    eta = int(round(eta))
    if eta >= 3600:
        return "%dh%02dm" % (eta // 3600, eta % 3600 // 60)
    return "%02d:%02d" % (eta // 60, eta % 60)


def _percent(status):
    """The status's percent within 0..100 (0 when it is not a number)."""
    percent = _number(status.get("percent"))
    return 0.0 if percent is None else min(max(percent, 0.0), 100.0)


def progress_line(status, width=BAR_WIDTH, label=None):
    """The plain one-line form of a ``task_status`` (``label`` in place
    of the task id); a ``complete`` task is drawn at 100% with ``done``."""
    complete = status.get("state") == "complete"
    percent = 100.0 if complete else _percent(status)
    filled = int(width * percent / 100.0)
    name = label if label is not None else books.printable(
        status.get("task_id"))
    return "%s [%s%s] %5.1f%%  %s" % (
        name, "#" * filled, "." * (width - filled), percent,
        "done" if complete else "ETA " + format_eta(status.get("eta")))


def _console(stream):
    # highlight=False: nothing in agent-supplied text gets coloured as if
    # it were a number or a path.
    return rich_console.Console(file=stream, highlight=False)


class TaskProgress:
    """Shows the running updates of a task on ``stream``.

    :meth:`update` takes each ``task_status`` (only ``running`` ones are
    drawn); :meth:`note` writes another line (above a live bar);
    :meth:`finish` ends the bar (call it before writing to the stream
    otherwise; it may be called more than once). ``indent`` prefixes the
    progress lines.
    """

    def __init__(self, stream, indent=""):
        self.stream = stream
        self.indent = indent
        self.live = stream.isatty()
        self._progress = None
        self._tasks = {}

    def update(self, status, label=None):
        """Draw a ``running`` status (others are ignored: see
        :meth:`end`); ``label`` names the line (the task id unless
        given)."""
        if status.get("state") != "running":
            return
        self._draw(status, label)

    def end(self, status, label=None):
        """Draw a task's last status: a ``complete`` task's bar at 100%
        (also when no running update was seen, for a fast task); an
        ``error`` leaves the bar where it was."""
        if status.get("state") == "complete":
            self._draw(status, label)

    def _draw(self, status, label):
        name = label if label is not None else books.printable(
            status.get("task_id"))
        if not self.live:
            self.stream.write(self.indent + progress_line(status, label=name)
                              + "\n")
            self.stream.flush()
            return
        if self._progress is None:
            self._progress = rich_progress.Progress(
                rich_progress.TextColumn(self.indent + "{task.description}",
                                         markup=False),
                rich_progress.BarColumn(bar_width=BAR_WIDTH),
                rich_progress.TextColumn("{task.percentage:5.1f}%",
                                         markup=False),
                rich_progress.TextColumn("{task.fields[eta]}",
                                         markup=False),
                console=_console(self.stream), auto_refresh=False,
                redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        complete = status.get("state") == "complete"
        eta = "done" if complete else "ETA " + format_eta(status.get("eta"))
        completed = 100.0 if complete else min(_percent(status), 100.0)
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(
                name, total=100.0, completed=completed, eta=eta)
        self._progress.update(self._tasks[name], completed=completed,
                              eta=eta)
        self._progress.refresh()

    def note(self, text):
        """Write the line ``text`` to the stream; on a terminal above a
        live bar, which stays."""
        if self._progress is None:
            self.stream.write(text + "\n")
            self.stream.flush()
            return
        self._progress.console.print(rich_text.Text(text), soft_wrap=True)
        self._progress.refresh()

    def finish(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks = {}


def _agent_cells(agent):
    """``(agent, state, link, peer, tasks)`` texts and whether the agent is
    connected, over plaintext, and running tasks."""
    show = books.printable
    tasks = agent.get("tasks") or []
    running = sum(1 for task in tasks if task.get("state") == "running")
    connected = bool(agent["connected"])
    link = "tls" if agent.get("tls") else "PLAINTEXT"
    peer = (agent["peer"] or "-").replace("agent at ", "")
    if connected and agent.get("source") == "database" and \
            agent.get("process"):
        # Held by another endpoint process on the same database.
        peer = "%s on %s" % (peer, agent["process"])
    seen = _number(agent.get("last_seen"))
    if not connected and seen is not None and 0 <= seen < 2 ** 40:
        # A disconnected agent (one loaded from the database after a
        # restart, too) has no peer: when it was last seen instead.
        peer = "seen " + time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                       time.gmtime(seen))
    cells = (show(agent["agent_id"]),
             "connected" if connected else "gone",
             link if connected else "-",
             show(peer),
             "%d (%d running)" % (len(tasks), running))
    return cells, connected, connected and not agent.get("tls"), running


class AgentTable:
    """The ``teeth-endpoint agents`` table, written to ``stream`` one agent
    at a time (:meth:`add`); :meth:`close` ends it (``no agents`` when none
    was added), :meth:`flush` draws what was added before an error."""

    def __init__(self, stream, chunk=TABLE_CHUNK):
        self.stream = stream
        self.live = stream.isatty()
        self.chunk = chunk
        self.count = 0
        self._rows = []
        self._header_drawn = False
        self._console = _console(stream) if self.live else None

    def add(self, agent):
        cells, connected, plaintext, running = _agent_cells(agent)
        if not self.live:
            if not self.count:
                print(_AGENT_ROW % AGENT_HEADER, file=self.stream)
            print(_AGENT_ROW % cells, file=self.stream)
        else:
            self._rows.append((cells, connected, plaintext, running))
            if len(self._rows) >= self.chunk:
                self._draw()
        self.count += 1

    def _draw(self):
        table = rich_table.Table(box=box.SIMPLE_HEAD, pad_edge=False,
                                 show_edge=False,
                                 show_header=not self._header_drawn,
                                 header_style="bold")
        # Ids and peers wrap on a narrow terminal; no column is dropped.
        table.add_column(AGENT_HEADER[0], overflow="fold")
        table.add_column(AGENT_HEADER[1], no_wrap=True)
        table.add_column(AGENT_HEADER[2], no_wrap=True)
        table.add_column(AGENT_HEADER[3], overflow="fold")
        table.add_column(AGENT_HEADER[4], no_wrap=True)
        for (agent_id, state, link, peer, tasks), connected, plaintext, \
                running in self._rows:
            table.add_row(
                rich_text.Text(agent_id),
                rich_text.Text(state, style="green" if connected else "dim"),
                rich_text.Text(link, style="bold red" if plaintext
                               else ("green" if connected else "dim")),
                rich_text.Text(peer),
                rich_text.Text(tasks, style="yellow" if running else ""))
        self._console.print(table)
        self._header_drawn = True
        self._rows = []

    def flush(self):
        """Draw the rows added so far (before an error is reported)."""
        if self._rows:
            self._draw()
        self.stream.flush()

    def close(self):
        self.flush()
        if not self.count:
            print("no agents", file=self.stream)
            self.stream.flush()
