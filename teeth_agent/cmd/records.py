"""``teeth-endpoint db``, ``tasks`` and ``erasures``.

``db upgrade`` applies the migrations shipped in the package to the
database ``[database] connection`` names (by default the SQLite file in
``[endpoint] state_dir``); ``db current`` says which revision it is at and
exits 1 when it is behind the code; ``db prune`` deletes the finished
tasks older than ``[database] task_retention`` days (or ``--older-than``)
with their events, as every ``serve`` process does about once a minute,
and prints how many (``--dry-run``: how many it would).

``tasks`` and ``erasures`` are reports: they read the database directly,
so they work whether a server runs or not, and on any machine that can
reach the database of a fleet. What they show is what is committed: final
states and erasure records are committed before an agent hears they were
received; running updates may lag by ``[database] flush_interval``.

``watch AGENT TASK_ID`` (:mod:`teeth_agent.cmd.follow`) takes a task's
final state from the database (:func:`final_from_db`) when no server is
reachable or the server no longer knows the task.
"""

import csv
import datetime
import json
import sys

from teeth_agent.cmd import usage
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import books
from teeth_agent import tasks as tasks_mod

#: The subcommands this module handles.
COMMANDS = ("db", "tasks", "erasures")
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
    db.add_argument("action", choices=("upgrade", "current", "prune"),
                    help="upgrade: apply the migrations; current: show the "
                         "revision (exit 1 when behind the code); prune: "
                         "delete the finished tasks older than [database] "
                         "task_retention days, with their events (erasure "
                         "records are kept)")
    db.add_argument("--older-than", type=float, default=None,
                    metavar="DAYS",
                    help="prune: the finished tasks that ended more than "
                         "DAYS days ago (default: [database] "
                         "task_retention)")
    db.add_argument("--dry-run", action="store_true",
                    help="prune: only count what would be deleted")
    db.add_argument("--json", action="store_true",
                    help="print the outcome as one JSON object")
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
    args = conf.command
    if args.action == "prune":
        return prune(conf, out)
    if args.older_than is not None or args.dry_run:
        raise usage.UsageError("--older-than and --dry-run go with db prune")
    url = schema.url_from_conf(conf)
    if url is None:
        raise ReportError("no database is configured: [database] connection "
                          "and [endpoint] state_dir are both empty")
    try:
        engine = schema.make_engine(url,
                                    create=conf.command.action == "upgrade")
    except schema.DatabaseError as exc:
        # db current of an SQLite file not made yet: behind, not broken.
        if args.json:
            _json_line({"database": schema.shown_url(url), "revision": None,
                        "needs": schema.head(), "current": False,
                        "problem": str(exc)}, out)
        else:
            print("%s; this teeth-agent needs %s" % (exc, schema.head()),
                  file=out)
        return 1
    try:
        before = schema.revision_of(engine)
        wanted = schema.head()
        shown = schema.shown_url(url)
        if conf.command.action == "upgrade":
            after = schema.upgrade(engine)
            if args.json:
                _json_line({"database": shown, "revision": after,
                            "was": before}, out)
            else:
                print("database %s: revision %s (was %s)"
                      % (shown, after, before or "empty"), file=out)
            return 0
        if args.json:
            _json_line({"database": shown, "revision": before,
                        "needs": wanted, "current": before == wanted}, out)
        else:
            print("database %s: revision %s, this teeth-agent needs %s"
                  % (shown, before or "none (empty)", wanted), file=out)
        return 0 if before == wanted else 1
    finally:
        engine.dispose()


def _json_line(value, out):
    # ensure_ascii: whatever a database or an agent put in a text field
    # arrives as \u escapes, one object on one line.
    out.write(json.dumps(value, sort_keys=True, ensure_ascii=True,
                         default=str) + "\n")
    out.flush()


def prune(conf, out=sys.stdout):
    """``db prune``: exit 0 when done (whether or not anything was old
    enough); a usage or database error is a :class:`ReportError` (2)."""
    args = conf.command
    days = args.older_than
    if days is None:
        days = conf.database.task_retention
        if days <= 0:
            raise ReportError("[database] task_retention is 0 (the task "
                              "history is kept forever): give --older-than "
                              "DAYS")
    elif not days > 0 or days == float("inf"):
        raise usage.UsageError("--older-than must be a positive number of "
                               "days, not %s" % days)
    store = open_store(conf)
    try:
        pruned = store.prune_tasks(days, dry_run=args.dry_run)
    finally:
        store.engine.dispose()
    if args.json:
        _json_line({"database": schema.shown_url(schema.url_from_conf(conf)),
                    "dry_run": bool(args.dry_run), "tasks": pruned.tasks,
                    "states": dict(pruned.states), "events": pruned.events,
                    "cutoff": iso(pruned.cutoff), "older_than_days": days},
                   out)
        return 0
    states = ", ".join("%s %d" % (state, pruned.states[state])
                       for state in sorted(pruned.states)) or "none"
    print("database %s: %s %d finished tasks (%s) and their %d events that "
          "ended before %s (older than %g days); erasure records are kept"
          % (schema.shown_url(schema.url_from_conf(conf)),
             "would delete" if args.dry_run else "deleted", pruned.tasks,
             states, pruned.events, iso(pruned.cutoff), days), file=out)
    return 0


def _printable_row(values):
    return tuple(books.printable("-" if value is None else value, 60)
                 for value in values)


def list_tasks(conf, out=sys.stdout):
    args = conf.command
    usage.check_positive(args.limit, "--limit")
    store = open_store(conf)
    try:
        rows = store.tasks(agent_id=args.agent_id, state=args.state,
                           limit=args.limit)
        if args.json:
            for row in rows:
                row = dict(row, events=store.task_events(row["agent_id"],
                                                         row["task_id"]))
                _json_line(row, out)
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
            _json_line(row, out)
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


def final_from_db(conf, agent_id, task_id):
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


def main(conf):
    """Run the subcommand; a :class:`ReportError` or a database error is
    one line on stderr and exit 2."""
    name = conf.command.name
    try:
        if name == "db":
            return db_command(conf)
        if name == "tasks":
            return list_tasks(conf)
        return list_erasures(conf)
    except (ReportError, schema.DatabaseError) as exc:
        print("teeth-endpoint: %s" % exc, file=sys.stderr)
        return 2
