"""``teeth-endpoint db``, ``tasks``, ``erasures`` and ``watch``.

``db upgrade`` applies the migrations shipped in the package to the
database ``[database] connection`` names (by default the SQLite file in
``[endpoint] state_dir``); ``db current`` says which revision it is at and
exits 1 when it is behind the code.

``tasks`` and ``erasures`` are reports: they read the database directly,
so they work whether a server runs or not, and on any machine that can
reach the database of a fleet. What they show is what is committed: final
states and erasure records are committed before an agent hears they were
received; running updates may lag by ``[database] flush_interval``.

``watch AGENT TASK_ID`` follows a task through the server's control socket
without sending it again (:func:`follow_task` is the one follow loop). When
no server is reachable and the task has ended, its final state is taken
from the database.
"""

import csv
import datetime
import json
import sys

from teeth_agent.cmd import display
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import books
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

#: The subcommands this module handles.
COMMANDS = ("db", "tasks", "erasures", "watch")
#: The states ``tasks --state`` accepts ("sent": sent, no status yet).
STATES = ("sent",) + tasks_mod.TASK_STATES
_TASK_ROW = "%-24s %-20s %-20s %-8s %6s  %-20s %-20s %s"
_TASK_HEADER = ("AGENT", "TASK", "METHOD", "STATE", "PCT", "CREATED",
                "ENDED", "MSG")
_ERASURE_ROW = "%-24s %-16s %-14s %-8s %-22s %-8s %-5s %-20s %s"
_ERASURE_HEADER = ("AGENT", "TASK", "DEVICE", "OUTCOME", "METHOD", "NIST",
                   "VRFD", "SERIAL", "ENDED")


class ReportError(Exception):
    """A report cannot be made; the message is one sentence."""


def add_parsers(subparsers):
    db = subparsers.add_parser(
        "db", help="manage the endpoint's database schema")
    db.add_argument("action", choices=("upgrade", "current"),
                    help="upgrade: apply the migrations; current: show the "
                         "revision (exit 1 when behind the code)")
    tasks = subparsers.add_parser(
        "tasks", help="the task history, read from the database")
    tasks.add_argument("agent_id", nargs="?", default=None,
                       help="only this agent's tasks")
    tasks.add_argument("--state", choices=STATES, default=None,
                       help="only tasks in this state")
    tasks.add_argument("--json", action="store_true",
                       help="one JSON object per task, one a line, with its "
                            "state changes and times")
    tasks.add_argument("--limit", type=int, default=None, metavar="N",
                       help="only the newest N tasks")
    erasures = subparsers.add_parser(
        "erasures", help="the erasure records (one per device per erase), "
                         "read from the database")
    erasures.add_argument("agent_id", nargs="?", default=None,
                          help="only this agent's records")
    form = erasures.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true",
                      help="one JSON object per record, one a line, with "
                           "the agent's whole device entry")
    form.add_argument("--csv", action="store_true",
                      help="CSV with a header line (times in ISO 8601 UTC)")
    watch = subparsers.add_parser(
        "watch", help="follow a task of an agent without sending it again")
    watch.add_argument("agent_id")
    watch.add_argument("task_id")
    watch.add_argument("--timeout", type=float, default=None,
                       help="seconds to wait for the task to end")


def iso(at):
    """Epoch seconds as ISO 8601 UTC (``-`` for None)."""
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(
        at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_store(conf):
    """A store for reading, schema checked. Raises :class:`ReportError`.
    """
    url = schema.url_from_conf(conf)
    if url is None:
        raise ReportError("no database is configured: [database] connection "
                          "and [endpoint] state_dir are both empty")
    try:
        store = store_mod.Store(schema.make_engine(url, create=False))
        schema.check(store.engine)
    except schema.DatabaseError as exc:
        raise ReportError(str(exc)) from None
    return store


def db_command(conf, out=sys.stdout):
    url = schema.url_from_conf(conf)
    if url is None:
        raise ReportError("no database is configured: [database] connection "
                          "and [endpoint] state_dir are both empty")
    try:
        engine = schema.make_engine(url,
                                    create=conf.command.action == "upgrade")
    except schema.DatabaseError as exc:
        # db current of an SQLite file not made yet: behind, not broken.
        print("%s; this teeth-agent needs %s" % (exc, schema.head()),
              file=out)
        return 1
    try:
        before = schema.revision_of(engine)
        wanted = schema.head()
        if conf.command.action == "upgrade":
            after = schema.upgrade(engine)
            print("database %s: revision %s (was %s)"
                  % (schema.shown_url(url), after, before or "empty"),
                  file=out)
            return 0
        print("database %s: revision %s, this teeth-agent needs %s"
              % (schema.shown_url(url), before or "none (empty)", wanted),
              file=out)
        return 0 if before == wanted else 1
    finally:
        engine.dispose()


def _printable_row(values):
    return tuple(books.printable("-" if value is None else value, 60)
                 for value in values)


def list_tasks(conf, out=sys.stdout):
    args = conf.command
    if args.limit is not None and args.limit < 1:
        raise ReportError("--limit must be a positive number")
    store = open_store(conf)
    try:
        rows = store.tasks(agent_id=args.agent_id, state=args.state,
                           limit=args.limit)
        if args.json:
            for row in rows:
                row = dict(row, events=store.task_events(row["agent_id"],
                                                         row["task_id"]))
                print(json.dumps(row, sort_keys=True, ensure_ascii=True,
                                 default=str), file=out)
            return 0
    finally:
        store.engine.dispose()
    if not rows:
        print("no tasks", file=out)
        return 0
    print(_TASK_ROW % _TASK_HEADER, file=out)
    for row in rows:
        percent = row["percent"]
        print(_TASK_ROW % _printable_row((
            row["agent_id"], row["task_id"], row["method"], row["state"],
            "-" if percent is None else "%.1f" % percent,
            iso(row["created_at"]), iso(row["ended_at"]),
            row["msg"] or "")), file=out)
    return 0


def list_erasures(conf, out=sys.stdout):
    args = conf.command
    store = open_store(conf)
    try:
        rows = store.erasures(agent_id=args.agent_id)
    finally:
        store.engine.dispose()
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, ensure_ascii=True,
                             default=str), file=out)
        return 0
    if args.csv:
        writer = csv.writer(out)
        writer.writerow(store_mod.ERASURE_FIELDS + ("verification",))
        for row in rows:
            writer.writerow([_csv_cell(field, row[field]) for field in
                             store_mod.ERASURE_FIELDS]
                            + [json.dumps(row["verification"],
                                          sort_keys=True)])
        return 0
    if not rows:
        print("no erasure records", file=out)
        return 0
    print(_ERASURE_ROW % _ERASURE_HEADER, file=out)
    for row in rows:
        print(_ERASURE_ROW % _printable_row((
            row["agent_id"], row["task_id"], row["device"], row["outcome"],
            row["method"], row["nist_category"],
            {True: "yes", False: "NO"}.get(row["verified"], "-"),
            row["serial"], iso(row["ended_at"] or row["recorded_at"]))),
            file=out)
    return 0


def _csv_cell(field, value):
    if value is None:
        return ""
    if field.endswith("_at"):
        return iso(value)
    if isinstance(value, str):
        # A cell a spreadsheet would run as a formula is quoted as text.
        text = books.printable(value, 4096)
        return "'" + text if text[:1] in ("=", "+", "-", "@") else text
    return value


class _Progress:
    """Draws the ``task_status`` pushes of ``watch_task``."""

    def __init__(self, stream):
        self.progress = display.TaskProgress(stream)

    def __call__(self, connection, command):
        if command.method == "ping":
            return command.params
        if command.method != "task_status":
            raise protocol.UnknownMethod(command.method)
        self.progress.update(command.params)
        return {}


def follow_task(connection, agent_id, task_id, timeout=None):
    """Follow a task through a control ``connection`` (whose dispatch
    draws the pushed ``task_status`` updates) until it ends; returns the
    final status. Raises ``transport.RemoteError`` (the server's answer:
    unknown agent, timeout), ``transport.CallTimeout`` or
    ``transport.ConnectionLost``."""
    answer = connection.call(
        "watch_task", {"agent_id": agent_id, "task_id": task_id,
                       "timeout": timeout},
        timeout=(timeout or 10 ** 7) + 5)
    return answer["status"]


def _final_from_db(conf, agent_id, task_id):
    """The task's final status from the database, or None."""
    try:
        store = open_store(conf)
    except ReportError:
        return None
    try:
        for row in store.tasks(agent_id=agent_id):
            if row["task_id"] == task_id:
                status = store_mod.task_status_of(row)
                if status and status["state"] in tasks_mod.TERMINAL:
                    return status
    except schema.DatabaseError:
        return None
    finally:
        store.engine.dispose()
    return None


def watch(conf, out=sys.stdout, err=sys.stderr):
    args = conf.command
    printer = _Progress(err)
    try:
        try:
            sock = transport.connect_unix(conf.endpoint.control_socket)
        except OSError as exc:
            final = _final_from_db(conf, args.agent_id, args.task_id)
            if final is None:
                raise ReportError("cannot reach the server at %s: %s"
                                  % (conf.endpoint.control_socket,
                                     exc)) from None
            print("teeth-endpoint: no server running; the task ended before "
                  "(from the database)", file=err)
            return _print_final(final, out, err)
        connection = transport.Connection(
            sock, printer, name="teeth-endpoint server").start()
        try:
            final = follow_task(connection, args.agent_id, args.task_id,
                                args.timeout)
        except transport.RemoteError as exc:
            final = _final_from_db(conf, args.agent_id, args.task_id)
            if final is None:
                raise ReportError("%s: %s" % (exc.type, books.printable(
                    exc.msg))) from None
            printer.progress.finish()
            return _print_final(final, out, err)
        except (transport.CallTimeout, transport.ConnectionLost) as exc:
            raise ReportError("lost the server while following the task: "
                              "%s" % exc) from None
        finally:
            connection.close()
        printer.progress.finish()
        return _print_final(final, out, err)
    finally:
        printer.progress.finish()


def _print_final(final, out, err):
    print(json.dumps(final, indent=2, sort_keys=True, ensure_ascii=True),
          file=out)
    if final.get("state") == tasks_mod.ERROR:
        print("teeth-endpoint: task %s failed: %s"
              % (books.printable(final.get("task_id")),
                 books.printable(final.get("msg"))), file=err)
        return 1
    return 0


def main(conf):
    """Run the subcommand; a :class:`ReportError` or a database error is
    one line on stderr and exit 2."""
    name = conf.command.name
    try:
        if name == "db":
            return db_command(conf)
        if name == "tasks":
            return list_tasks(conf)
        if name == "erasures":
            return list_erasures(conf)
        return watch(conf)
    except (ReportError, schema.DatabaseError) as exc:
        print("teeth-endpoint: %s" % exc, file=sys.stderr)
        return 2
