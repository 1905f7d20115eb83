"""The endpoint's store: writes queued from the hub, one OS thread commits.

Every write method (:meth:`Store.agent_connected`, :meth:`Store.task_status`,
...) only puts the change on a queue and returns at once, so the endpoint's
event loop never waits for the database. The writer thread (a real OS
thread: nothing in this package imports eventlet) takes what is queued and
writes it in one transaction:

* a task's ``running`` updates coalesce as they are queued: the latest
  update of each task replaces the one before it (keeping when the first
  of them came), and the writer takes them all once per
  ``flush_interval`` seconds (or with the next urgent change), so a busy
  fleet writes at most one row per running task and interval, however
  often its agents report, and ``batch_limit`` counts the other changes
  only; in a batch nobody waits for, the running rows beyond the first
  chunk are written a chunk per transaction over the first half of the
  next interval (``running_spread``), not in one burst;
* a final state (``error``/``complete``), its erasure records and a
  :meth:`flush` do not wait for the interval: they are committed at once,
  and the ``on_committed`` callback given with them is called from the
  writer thread after the commit (with None) or after the transaction
  failed (with the exception). The endpoint answers the agent's
  ``task_status`` from that callback, so an acknowledged final state is
  in the database.

The read methods (:meth:`agents`, :meth:`tasks`, :meth:`erasures`, ...) run
in the caller's thread on their own connection; they are what the
operator's reports and the endpoint's start-up use.

With ``task_retention`` (days) the writer thread also deletes the finished
tasks that ended longer ago than that, with their events, between two
batches: one transaction of at most ``prune_chunk`` tasks about every
``prune_interval`` seconds, back to back while a backlog lasts.
:meth:`prune_tasks` is the same on demand (``teeth-endpoint db prune``).
Erasure records are never deleted.
"""

import collections
import dataclasses
import itertools
import logging
import os
import queue
import random
import socket
import sqlite3
import threading
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm

from teeth_agent.db import evidence
from teeth_agent.db import models
from teeth_agent.db import redact
from teeth_agent.db import schema

LOG = logging.getLogger(__name__)

RUNNING = "running"
FINAL_STATES = ("error", "complete")
#: Seconds between two heartbeats of this process's row.
HEARTBEAT_INTERVAL = 10.0
#: Text kept of an agent's log message or a task's msg.
TEXT_LIMIT = 16 * 1024

_STOP = "stop"
#: The changes that write an agent's row.
_AGENT_KINDS = ("connected", "disconnected", "forgotten", "token")
#: Keys per ``IN`` query when a batch's rows are loaded.
PREFETCH_CHUNK = 500
#: Seconds in a day of ``task_retention``.
DAY = 86400.0
#: Finished tasks deleted per transaction by the retention.
PRUNE_CHUNK = 1000
#: Seconds between two retention passes of one process (each jittered by
#: a quarter, so that the processes sharing a database drift apart).
PRUNE_INTERVAL = 60.0
#: Tasks per statement when the events of deleted tasks are deleted.
_EVENT_KEYS = 250
#: Seconds the writer yields to the event loop between two chunks of
#: running updates (see ``Store.writer_pause``).
WRITER_PAUSE = 0.001
#: Running rows per statement of the writer.
RUNNING_CHUNK = 400
#: The share of ``flush_interval`` over which the writer spreads the
#: running rows of a batch beyond its first chunk (see ``Store._pace``).
RUNNING_SPREAD = 0.5
#: Running tasks whose row id the writer keeps (see ``Store._running``).
RUNNING_CACHE = 200000


#: The DBAPI parameter marker of a positional statement, by paramstyle
#: (psycopg takes ``%s`` with a sequence whatever SQLAlchemy calls it).
_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _updates_from_values(dialect):
    """Whether the database runs ``UPDATE ... FROM (VALUES ...)``."""
    if dialect.name == "postgresql":
        return True
    if dialect.name == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 33, 0)
    return False


def _run(dbapi, sql, params, many=False):
    """Run ``sql`` on the DBAPI connection ``dbapi``; rows it changed."""
    cursor = dbapi.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor.rowcount
    finally:
        cursor.close()


def _task_keys_in(table, keys):
    """``(agent_id, task_id) IN (...)`` for the ``(agent, task)`` pairs
    ``keys``: one probe of the unique index per pair. (``agent_id IN ...
    AND task_id IN ...`` made SQLite probe every agent with every task id:
    400 x 400 per chunk, most of the writer's time at 5,000 agents.)"""
    return sa.tuple_(table.c.agent_id, table.c.task_id).in_(sorted(keys))


class StoreClosed(schema.DatabaseError):
    """A write was queued after :meth:`Store.close`."""


@dataclasses.dataclass
class Pruned:
    """What :meth:`Store.prune_tasks` deleted (or, for a dry run, would
    delete): finished tasks that ended before ``cutoff`` (epoch seconds),
    counted by final state, and their events."""

    cutoff: float
    states: dict = dataclasses.field(default_factory=dict)
    events: int = 0
    transactions: int = 0
    #: Whether the last transaction found a whole chunk (there may be
    #: more to delete).
    more: bool = False

    @property
    def tasks(self):
        return sum(self.states.values())

    def add(self, other):
        for state, count in other.states.items():
            self.states[state] = self.states.get(state, 0) + count
        self.events += other.events
        self.transactions += other.transactions
        self.more = other.more


def _text(value, limit=TEXT_LIMIT):
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def _version(handshake):
    version = (handshake or {}).get("agent_version")
    return _text(version, models.NAME_LENGTH) if version is not None \
        else None


class _Change:
    __slots__ = ("kind", "agent_id", "payload", "at", "callback", "first_at")

    def __init__(self, kind, agent_id, payload, at, callback=None):
        self.kind = kind
        self.agent_id = agent_id
        self.payload = payload
        self.at = at
        self.callback = callback
        #: A running update: when the first of the updates it replaced
        #: came (its task's start, when it is the first written).
        self.first_at = at

    @property
    def urgent(self):
        return self.callback is not None or self.kind == _STOP


class Store:
    """See the module docstring. Build with :meth:`from_url`, then
    :meth:`open` (checks the schema, starts the writer) and at the end
    :meth:`close`."""

    def __init__(self, engine, log_history=1000, flush_interval=5.0,
                 batch_limit=5000, clock=time.time, task_retention=0,
                 prune_chunk=PRUNE_CHUNK, prune_interval=PRUNE_INTERVAL):
        self.engine = engine
        self.log_history = log_history
        self.flush_interval = flush_interval
        self.batch_limit = batch_limit
        self.clock = clock
        #: Days finished tasks are kept by the writer (0: forever).
        self.task_retention = task_retention
        self.prune_chunk = prune_chunk
        self.prune_interval = prune_interval
        #: When (``clock``) the writer's next retention pass is due.
        self._next_prune = None
        #: What the passes of the current backlog deleted so far.
        self._backlog = None
        self.process_id = None
        self.process_name = None
        self._queue = queue.SimpleQueue()
        #: Set when an urgent change is queued or a batch's worth is: the
        #: only thing that wakes the writer while it gathers a batch (see
        #: :meth:`_gather`).
        self._urgent = threading.Event()
        #: ``{(agent_id, task_id): change}``: the latest running update of
        #: each task not written yet (see :meth:`task_status`), under
        #: ``_lock``; the writer takes the whole of it with each batch.
        self._latest_running = {}
        self._thread = None
        self._closed = False
        self._lock = threading.Lock()
        self._last_heartbeat = 0.0
        # Per transaction (the writer thread's): see _prefetch.
        self._missing = set()
        self._agents, self._tasks = {}, {}
        #: ``{(agent_id, task_id): row id}`` of the tasks this writer last
        #: wrote as running (the writer thread's; oldest first, at most
        #: ``RUNNING_CACHE``): their next running update is one ``UPDATE``
        #: by id, with no query to find the row first.
        self._running = {}
        #: Entries of the open transaction, kept once it commits.
        self._running_new = {}
        #: The running update's statements: ``{dialect name: compiled}``
        #: and ``{(marker, RUNNING_CHUNK): SQL}`` (the full chunk's; a
        #: shorter last chunk's is built each time, not kept).
        self._running_sql = {}
        #: Seconds the writer sleeps between two chunks of running
        #: updates (None: no pause), so a batch of thousands is not one
        #: long hold of the GIL.
        self.writer_pause = WRITER_PAUSE
        #: The share of ``flush_interval`` over which the running rows of
        #: a batch beyond its first chunk are written, a chunk per
        #: transaction (0: all in the batch's transaction).
        self.running_spread = RUNNING_SPREAD
        #: The writer's clock for its intervals (tests replace it).
        self.monotonic = time.monotonic
        #: Counters: transactions, task_updates (received), task_writes
        #: (rows written), running_coalesced, paced_transactions (chunks
        #: :meth:`_pace` wrote), erasures, log_records, failures.
        self.stats = collections.Counter()

    @classmethod
    def from_url(cls, url, **kwargs):
        return cls(schema.make_engine(url), **kwargs)

    @classmethod
    def from_conf(cls, conf):
        """The store ``conf`` names, or None (memory only: ``[database]
        connection`` and ``[endpoint] state_dir`` both empty)."""
        url = schema.url_from_conf(conf)
        if url is None:
            return None
        return cls.from_url(
            url,
            log_history=conf.endpoint.log_history,
            flush_interval=conf.database.flush_interval,
            batch_limit=conf.database.batch_limit,
            task_retention=conf.database.task_retention)

    # -- lifecycle ------------------------------------------------------------

    def open(self, listen=None, create_empty=None):
        """Check the schema (:class:`schema.SchemaBehind` when it is
        older than the code), record this process and start the writer.
        ``create_empty`` (default: for SQLite only) migrates a database
        that has no table yet. Returns self."""
        if create_empty is None:
            create_empty = self.engine.url.get_backend_name() == "sqlite"
        schema.check(self.engine, create_empty=create_empty)
        now = self.clock()
        host = socket.gethostname()
        self.process_name = "%s:%d" % (host, os.getpid())
        try:
            with orm.Session(self.engine) as session, session.begin():
                row = models.EndpointProcess(
                    name=self.process_name[:models.NAME_LENGTH],
                    host=host[:models.NAME_LENGTH], pid=os.getpid(),
                    listen=listen, started_at=now, heartbeat_at=now)
                session.add(row)
                session.flush()
                self.process_id = row.id
                # Agents held by a process that stopped cleanly are not
                # connected; those of one that died are left to the
                # processes that notice it.
        except sa_exc.SQLAlchemyError as exc:
            raise schema.DatabaseError(
                "cannot write to the database %s: %s"
                % (schema.shown_url(str(self.engine.url)),
                   schema.first_line(exc))) from None
        self._last_heartbeat = now
        # The first retention pass soon after start, the next ones about
        # every prune_interval.
        self._next_prune = now
        self._thread = threading.Thread(target=self._run,
                                        name="teeth-db-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout=30.0):
        """Write what is queued, mark this process stopped, stop the writer.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            done = threading.Event()
            self._enqueue(_Change(_STOP, None, None, self.clock(),
                                  lambda error: done.set()))
            done.wait(timeout)
            self._thread.join(timeout)
            self._thread = None
        self.engine.dispose()

    def set_listen(self, listen):
        """Say where this process listens (``host:port``)."""
        self._put("listen", None, listen)

    # -- writes (queued; any thread) --------------------------------------

    def _put(self, kind, agent_id, payload, callback=None, at=None):
        if self._closed:
            raise StoreClosed("the store is closed")
        self._enqueue(_Change(kind, agent_id, payload,
                              self.clock() if at is None else at, callback))

    def _enqueue(self, change):
        queued = self._queue
        queued.put(change)
        if change.urgent or (queued.qsize() >= self.batch_limit
                             and not self._urgent.is_set()):
            # A full batch is written at once too, as it was when every
            # change woke the writer.
            self._urgent.set()

    def agent_connected(self, agent_id, handshake, peer=None, tls=False,
                        identity=None):
        """The agent made a handshake on this process."""
        self._put("connected", agent_id, {
            "handshake": handshake, "peer": peer, "tls": bool(tls),
            "identity": identity})

    def agent_disconnected(self, agent_id):
        self._put("disconnected", agent_id, None)

    def agent_forgotten(self, agent_id):
        """Drop the agent's row (its token with it); its task history and
        erasure records stay."""
        self._put("forgotten", agent_id, None)

    def set_token(self, agent_id, token_hash):
        """Keep (or with None, drop) the SHA-256 of the agent's token."""
        self._put("token", agent_id, token_hash)

    def task_sent(self, agent_id, task_id, method, params):
        """The operator sent a task command; ``params`` are redacted here.
        """
        self._put("sent", agent_id, {
            "task_id": task_id, "method": method,
            "params": redact.redact(params or {})})

    def task_refused(self, agent_id, task_id):
        """The agent refused the task command: forget the task unless
        the agent reported a state of it after all."""
        self._put("refused", agent_id, {"task_id": task_id})

    def task_status(self, agent_id, status, on_committed=None):
        """A task state the endpoint recorded. For a final state pass
        ``on_committed(error)``: it is called from the writer thread once
        the state (and its erasure records) is committed (``error`` None)
        or the write failed (the exception)."""
        self.stats["task_updates"] += 1
        if on_committed is None and status.get("state") == RUNNING:
            self._put_running(agent_id, dict(status))
            return
        self._put("status", agent_id, dict(status), on_committed)

    def _put_running(self, agent_id, status):
        """Keep only the latest running update of the task; the first of
        them since the last batch wakes the writer's gathering (a marker
        on the queue), the others cost no queue entry at all."""
        if self._closed:
            raise StoreClosed("the store is closed")
        change = _Change("status", agent_id, status, self.clock())
        key = (agent_id, status.get("task_id"))
        with self._lock:
            latest = self._latest_running
            previous = latest.get(key)
            if previous is not None:
                change.first_at = previous.first_at
                self.stats["running_coalesced"] += 1
            latest[key] = change
            first = len(latest) == 1 and previous is None
        if first:
            self._enqueue(_Change("running", None, None, change.at))

    def _take_running(self, batch):
        """Append to ``batch`` the running updates kept since the last
        one (they come after what was queued before them)."""
        with self._lock:
            latest, self._latest_running = self._latest_running, {}
        batch.extend(latest.values())
        return batch

    def log_record(self, agent_id, record):
        self._put("log", agent_id, record)

    def flush_async(self, on_committed):
        """Have everything queued so far committed at once;
        ``on_committed(error)`` is called from the writer thread."""
        self._put("flush", None, None, on_committed)

    def flush(self, timeout=None):
        """Wait (this thread) until everything queued so far is committed;
        returns False on timeout. Raises the write's error."""
        done = threading.Event()
        outcome = []

        def committed(error):
            outcome.append(error)
            done.set()
        self._put("flush", None, None, committed)
        if not done.wait(timeout):
            return False
        if outcome[0] is not None:
            raise outcome[0]
        return True

    # -- the writer thread ------------------------------------------------

    def _run(self):
        stop, carried, since = False, [], None
        while not stop:
            batch = self._gather(self._idle_timeout(), carried, since)
            stop = any(change.kind == _STOP for change in batch)
            if not stop:
                self._prune_if_due()
            paced = self._paced_part(batch)
            self._write(batch)
            since = self.monotonic()
            carried = self._pace(paced) if paced else []

    def _gather(self, timeout=HEARTBEAT_INTERVAL, carried=(), since=None):
        """The next batch: at least one change (none after ``timeout``
        seconds), more for up to ``flush_interval`` unless an urgent one
        is among them.

        ``carried`` are changes :meth:`_pace` took off the queue while it
        wrote (the batch starts with them and its interval at ``since``,
        a :attr:`monotonic` time).

        Once the first change is in, the writer sleeps until the interval
        ends, an urgent change is queued or ``batch_limit`` changes are,
        then takes what is queued in one go: an ordinary change (a running
        update, a log record) wakes nobody. Waking the writer for each of
        them, thousands a second on a busy fleet, made it take the GIL
        from the event loop as often, and each hand-over could hold the
        loop for the interpreter's switch interval
        (``benchmarks/scale.py --database sqlite``).
        """
        if carried:
            batch = list(carried)
            deadline = (self.monotonic() if since is None else since) \
                + self.flush_interval
            urgent = any(change.urgent for change in batch)
        else:
            try:
                if timeout > 0:
                    first = self._queue.get(timeout=timeout)
                else:
                    first = self._queue.get_nowait()
            except queue.Empty:
                return self._take_running([])
            batch = [first]
            deadline = self.monotonic() + self.flush_interval
            urgent = first.urgent
        self._fill(batch, deadline, urgent)
        return self._take_running(batch)

    def _fill(self, batch, deadline, urgent=False):
        """Append what is queued to ``batch`` until the ``monotonic``
        time ``deadline``, an urgent change or ``batch_limit`` changes;
        True for the last two."""
        while True:
            # Cleared before the queue is read: an urgent change queued
            # from here on sets it again, and is read below or next time.
            self._urgent.clear()
            while len(batch) < self.batch_limit:
                try:
                    change = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(change)
                urgent = urgent or change.urgent
            if urgent or len(batch) >= self.batch_limit:
                return True
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                return False
            self._urgent.wait(remaining)

    def _paced_part(self, batch, chunk=RUNNING_CHUNK):
        """Take out of ``batch`` the running updates :meth:`_pace` writes
        after it: those beyond the first ``chunk``, in a batch nobody
        waits for (no urgent change: a flush, a final state, the stop is
        committed with everything before it) and of tasks with no other
        state in the batch."""
        if self.running_spread <= 0 or any(change.urgent
                                           for change in batch):
            return []
        others = {(change.agent_id, change.payload["task_id"])
                  for change in batch if change.kind == "status"
                  and change.payload.get("state") != RUNNING}
        kept, paced, running = [], [], 0
        for change in batch:
            if (change.kind == "status"
                    and change.payload.get("state") == RUNNING
                    and (change.agent_id, change.payload["task_id"])
                    not in others):
                running += 1
                if running > chunk:
                    paced.append(change)
                    continue
            kept.append(change)
        if paced:
            batch[:] = kept
        return paced

    def _pace(self, paced, chunk=RUNNING_CHUNK):
        """Write ``paced`` (running updates, one per task) a chunk per
        transaction, spread evenly over ``running_spread`` of
        ``flush_interval``.

        A batch of 5,000 running rows written in one go was 55-60 ms of
        this thread in a burst every interval; the event loop shares the
        GIL with it, and its ping answers waited (p99 36-40 ms on SQLite
        at 5,000 agents, ``benchmarks/scale.py``). Spread out, each chunk
        is a few milliseconds. What is queued meanwhile is taken off the
        queue and returned (the next batch starts with it); as soon as an
        urgent change or ``batch_limit`` changes are among it, the rows
        not written yet go back to the kept running updates (behind any
        newer update of their task, which keeps the older's start) and
        the next batch, written at once, has them."""
        parts = [paced[start:start + chunk]
                 for start in range(0, len(paced), chunk)]
        spread = self.flush_interval * self.running_spread
        start = self.monotonic()
        carried = []
        for index, part in enumerate(parts):
            if self._fill(carried, start + spread * (index + 1) / len(parts)):
                self._put_back(parts[index:])
                return carried
            self._write(part)
            self.stats["paced_transactions"] += 1
        return carried

    def _put_back(self, parts):
        """Running updates :meth:`_pace` did not write: kept again, unless
        a newer update of the task came meanwhile."""
        with self._lock:
            latest = self._latest_running
            for part in parts:
                for change in part:
                    key = (change.agent_id, change.payload["task_id"])
                    newer = latest.get(key)
                    if newer is None:
                        latest[key] = change
                    else:
                        newer.first_at = min(newer.first_at,
                                             change.first_at)
                        self.stats["running_coalesced"] += 1

    # -- retention ----------------------------------------------------------

    def _idle_timeout(self):
        """How long the writer may wait for a change: until the next
        heartbeat, or the next retention pass when that comes first."""
        if self.task_retention <= 0 or self._next_prune is None:
            return HEARTBEAT_INTERVAL
        return min(HEARTBEAT_INTERVAL,
                   max(0.0, self._next_prune - self.clock()))

    def _prune_if_due(self):
        """One retention transaction (the writer thread's) when it is
        due. A full chunk means there is more: the next one follows the
        next batch at once, so a backlog (the first start after an
        upgrade, or a lowered ``task_retention``) drains without ever
        holding the writer for more than one chunk."""
        if self.task_retention <= 0 or self._next_prune is None:
            return
        now = self.clock()
        if self._next_prune - now > 2 * self.prune_interval:
            self._next_prune = now  # the clock went back
        if now < self._next_prune:
            return
        try:
            pruned = self.prune_tasks(self.task_retention, max_chunks=1)
        except schema.DatabaseError as exc:
            self.stats["prune_failures"] += 1
            LOG.warning("cannot delete old finished tasks: %s", exc)
            self._backlog = None
            self._next_prune = now + self.prune_interval
            return
        self.stats["tasks_pruned"] += pruned.tasks
        self.stats["task_events_pruned"] += pruned.events
        if self._backlog is None:
            self._backlog = pruned
        else:
            self._backlog.add(pruned)
        if pruned.more:
            self._next_prune = now
            return
        done, self._backlog = self._backlog, None
        if done.tasks:
            LOG.info("deleted %d finished tasks and their %d events that "
                     "ended before %s ([database] task_retention = %s "
                     "days; erasure records are kept)", done.tasks,
                     done.events, _iso(done.cutoff), self.task_retention)
        self._next_prune = now + self.prune_interval * random.uniform(
            0.75, 1.25)

    def _finished_before(self, cutoff):
        table = models.Task.__table__
        return (table.c.state.in_(FINAL_STATES), table.c.ended_at < cutoff)

    def prune_tasks(self, older_than, dry_run=False, max_chunks=None):
        """Delete the finished tasks (``complete``/``error``) that ended
        more than ``older_than`` days ago (by ``clock``), with their
        events, oldest first, in transactions of at most ``prune_chunk``
        tasks (``max_chunks`` of them at most; None: until none is left).
        With ``dry_run`` only count them. Running and sent tasks and
        erasure records are never touched. Returns :class:`Pruned`;
        raises :class:`schema.DatabaseError`.

        Several processes may prune one database at once: on PostgreSQL
        each takes the rows no other one has locked (``FOR UPDATE SKIP
        LOCKED``), so none waits for another; SQLite has one writer at a
        time anyway. A task deleted under another process's feet is
        simply not counted twice."""
        cutoff = self.clock() - float(older_than) * DAY
        if dry_run:
            return self._read(lambda session: self._count_prunable(
                session, cutoff))
        total = Pruned(cutoff)
        while max_chunks is None or total.transactions < max_chunks:
            try:
                with orm.Session(self.engine) as session, session.begin():
                    chunk = self._prune_chunk(session, cutoff)
            except sa_exc.SQLAlchemyError as exc:
                raise schema.DatabaseError(
                    "cannot delete old tasks from the database %s: %s"
                    % (schema.shown_url(str(self.engine.url)),
                       schema.first_line(exc))) from None
            total.add(chunk)
            if not chunk.more:
                break
        return total

    def _prune_chunk(self, session, cutoff):
        """One chunk in ``session``'s transaction. No ``RETURNING`` (SQLite
        has it only since 3.35, which some server distributions lack):
        the chosen rows are deleted by id, a state at a time, with the
        condition checked again, so the counts are exact also when another
        process deleted some of them meanwhile."""
        table, events = models.Task.__table__, models.TaskEvent.__table__
        condition = self._finished_before(cutoff)
        chosen = session.execute(sa.select(
            table.c.id, table.c.agent_id, table.c.task_id,
            table.c.state).where(*condition).order_by(
                table.c.ended_at).limit(self.prune_chunk).with_for_update(
                    skip_locked=True)).all()
        pruned = Pruned(cutoff, transactions=1,
                        more=len(chosen) >= self.prune_chunk)
        for state in sorted({row.state for row in chosen}):
            ids = [row.id for row in chosen if row.state == state]
            deleted = session.execute(table.delete().where(
                table.c.id.in_(ids), table.c.state == state,
                table.c.ended_at < cutoff)).rowcount
            if deleted:
                pruned.states[state] = deleted
        # The events of the chosen tasks whose row is gone (deleted here
        # or by another pruner); a task that took up the same
        # (agent_id, task_id) since keeps its own.
        orphan = ~sa.exists().where(table.c.agent_id == events.c.agent_id,
                                    table.c.task_id == events.c.task_id)
        keys = [(row.agent_id, row.task_id) for row in chosen]
        for start in range(0, len(keys), _EVENT_KEYS):
            pruned.events += session.execute(events.delete().where(
                sa.tuple_(events.c.agent_id, events.c.task_id).in_(
                    keys[start:start + _EVENT_KEYS]), orphan)).rowcount
        return pruned

    def _count_prunable(self, session, cutoff):
        table, events = models.Task.__table__, models.TaskEvent.__table__
        condition = self._finished_before(cutoff)
        pruned = Pruned(cutoff)
        for state, count in session.execute(
                sa.select(table.c.state, sa.func.count()).where(
                    *condition).group_by(table.c.state)):
            pruned.states[state] = count
        pruned.events = session.execute(
            sa.select(sa.func.count()).select_from(events.join(
                table, sa.and_(events.c.agent_id == table.c.agent_id,
                               events.c.task_id == table.c.task_id))).where(
                *condition)).scalar_one()
        return pruned

    # -- the writer thread: writes ------------------------------------------

    def _write(self, batch):
        """One transaction for the batch. When it fails, each change is
        tried alone, so one change the database refuses (or a hostile
        value) does not take the others with it; every waiter hears the
        outcome of its own change."""
        error = self._transaction(batch)
        if error is None or len(batch) == 1:
            outcomes = [(change, error) for change in batch]
        else:
            LOG.warning("retrying the %d changes of the failed transaction "
                        "one by one", len(batch))
            outcomes = [(change, self._transaction([change]))
                        for change in batch]
        for change, outcome in outcomes:
            if change.callback is None:
                continue
            try:
                change.callback(outcome)
            except Exception:
                LOG.exception("a database commit callback failed")

    def _transaction(self, batch):
        """Apply ``batch`` in one transaction; returns None or the error.
        """
        self._running_new = {}
        try:
            with orm.Session(self.engine) as session, session.begin():
                self._apply(session, batch)
        except Exception as exc:  # handed to the waiters, then logged
            # What the rolled-back transaction read or wrote is not what
            # the database holds: every running row is looked up again.
            self._running.clear()
            self._running_new = {}
            self.stats["failures"] += 1
            LOG.error("cannot write %d change(s) to the database: %s",
                      len(batch), schema.first_line(exc))
            return exc
        self._keep_running(self._running_new)
        self._running_new = {}
        self.stats["transactions"] += 1
        return None

    def _keep_running(self, entries):
        running = self._running
        running.update(entries)
        excess = len(running) - RUNNING_CACHE
        if excess > 0:
            for key in list(itertools.islice(running, excess)):
                del running[key]

    def _not_running(self, key):
        """The task ``key`` is no longer running as this writer wrote it
        (a final state, a refusal, a deletion)."""
        self._running.pop(key, None)
        self._running_new.pop(key, None)

    def _apply(self, session, batch):
        now = self.clock()
        # Coalescing: a running update is written only when it is the last
        # change of its task in this batch, and not at all beside a final
        # state (a running update _pace put back comes after the final
        # state that interrupted it, but is older).
        last, first_running, ended = {}, {}, set()
        for index, change in enumerate(batch):
            if change.kind == "status":
                key = (change.agent_id, change.payload["task_id"])
                last[key] = index
                if change.payload.get("state") == RUNNING:
                    first = first_running.get(key)
                    first_running[key] = change.first_at if first is None \
                        else min(first, change.first_at)
                else:
                    ended.add(key)
        self._prefetch(session, batch)
        logs = collections.defaultdict(list)
        running = []
        for index, change in enumerate(batch):
            kind = change.kind
            if kind == "status":
                key = (change.agent_id, change.payload["task_id"])
                if change.payload.get("state") == RUNNING:
                    if last[key] != index or key in ended:
                        self.stats["running_coalesced"] += 1
                    else:
                        # The last change of its task: written in bulk
                        # after the others, which all came before it.
                        running.append(change)
                    continue
                self._write_status(session, change, first_running.get(key))
            elif kind == "sent":
                self._write_sent(session, change)
            elif kind == "refused":
                self._write_refused(session, change)
            elif kind == "log":
                logs[change.agent_id].append(change)
            elif kind in _AGENT_KINDS:
                self._write_agent(session, change)
            elif kind == "listen":
                session.execute(sa.update(models.EndpointProcess).where(
                    models.EndpointProcess.id == self.process_id).values(
                        listen=_text(change.payload, models.NAME_LENGTH)))
            elif kind == _STOP:
                session.execute(sa.update(models.EndpointProcess).where(
                    models.EndpointProcess.id == self.process_id).values(
                        stopped_at=now, heartbeat_at=now))
                session.execute(sa.update(models.Agent).where(
                    models.Agent.process_id == self.process_id).values(
                        connected=False, process_id=None,
                        last_seen_at=now))
        if running:
            self._write_running(session, running)
        for agent_id, changes in logs.items():
            self._write_logs(session, agent_id, changes)
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL:
            self._last_heartbeat = now
            session.execute(sa.update(models.EndpointProcess).where(
                models.EndpointProcess.id == self.process_id).values(
                    heartbeat_at=now))

    def _prefetch(self, session, batch, chunk=PREFETCH_CHUNK):
        """Load, in a few ``IN`` queries, every agent and task row the
        batch's changes touch, so that writing them costs no query per
        change: a ramp of thousands of first handshakes is one batch of
        ``connected`` and ``token`` changes. The rows land in the
        session's identity map (``session.get`` then needs no query);
        ``self._missing`` holds the keys known to have no row yet."""
        agent_ids, task_keys = set(), set()
        for change in batch:
            if change.kind in _AGENT_KINDS:
                agent_ids.add(change.agent_id)
            elif change.kind == "sent" or (
                    change.kind == "status"
                    and change.payload.get("state") != RUNNING):
                # (Running updates are looked up by _write_running.)
                task_keys.add((change.agent_id, change.payload["task_id"]))
        self._agents, self._tasks = {}, {}
        agent_ids = sorted(agent_ids)
        for start in range(0, len(agent_ids), chunk):
            for row in session.scalars(sa.select(models.Agent).where(
                    models.Agent.agent_id.in_(
                        agent_ids[start:start + chunk]))):
                self._agents[row.agent_id] = row
        self._missing = {("agent", agent_id) for agent_id in agent_ids
                         if agent_id not in self._agents}
        task_keys = sorted(task_keys)
        for start in range(0, len(task_keys), chunk):
            part = task_keys[start:start + chunk]
            for row in session.scalars(sa.select(models.Task).where(
                    _task_keys_in(models.Task.__table__, part))):
                self._tasks[(row.agent_id, row.task_id)] = row
        self._missing.update(("task",) + key for key in task_keys
                             if key not in self._tasks)

    def _forget_cached(self, session, row, key):
        """A row deleted with a bulk ``DELETE``: out of the session and
        the batch's cache, so a later change of the batch makes a new
        one instead of updating the deleted one."""
        if row is not None and row in session:
            session.expunge(row)
        self._missing.add(key)

    def _agent_row(self, session, agent_id, at):
        key = ("agent", agent_id)
        row = self._agents.get(agent_id)
        if row is None and key not in self._missing:
            row = session.get(models.Agent, agent_id)
        if row is None:
            self._missing.discard(key)
            row = models.Agent(agent_id=agent_id, first_seen_at=at,
                               last_seen_at=at, connected=False, tls=False)
            session.add(row)
        self._agents[agent_id] = row
        return row

    def _write_agent(self, session, change):
        agent_id = change.agent_id
        if change.kind == "forgotten":
            session.execute(sa.delete(models.Agent).where(
                models.Agent.agent_id == agent_id))
            self._forget_cached(session, self._agents.pop(agent_id, None),
                                ("agent", agent_id))
            for key in [key for key in self._running
                        if key[0] == agent_id]:
                del self._running[key]
            for key in [key for key in self._running_new
                        if key[0] == agent_id]:
                del self._running_new[key]
            return
        row = self._agent_row(session, agent_id, change.at)
        if change.kind == "token":
            row.token_hash = change.payload
            return
        if change.kind == "disconnected":
            # With several processes the agent may already be held by
            # another one (it reconnected there first): never undo that.
            if row.process_id in (None, self.process_id):
                row.last_seen_at = change.at
                row.connected = False
                row.process_id = None
            return
        row.last_seen_at = change.at
        payload = change.payload
        row.connected = True
        row.process_id = self.process_id
        row.peer = _text(payload["peer"], models.NAME_LENGTH)
        row.tls = payload["tls"]
        row.identity = _text(payload["identity"], 32)
        row.handshake = payload["handshake"]
        row.agent_version = _version(payload["handshake"])

    def _task_row(self, session, agent_id, task_id, at):
        key = (agent_id, task_id)
        row = self._tasks.get(key)
        if row is None and ("task",) + key not in self._missing:
            row = session.execute(sa.select(models.Task).where(
                models.Task.agent_id == agent_id,
                models.Task.task_id == task_id)).scalar_one_or_none()
        created = row is None
        if created:
            self._missing.discard(("task",) + key)
            row = models.Task(agent_id=agent_id, task_id=task_id,
                              state=RUNNING, created_at=at, updated_at=at)
            session.add(row)
            self._tasks[key] = row
        return row, created

    def _event(self, session, agent_id, task_id, state, at, percent=None,
               msg=None):
        session.add(models.TaskEvent(agent_id=agent_id, task_id=task_id,
                                     state=state, at=at, percent=percent,
                                     msg=_text(msg)))

    def _write_sent(self, session, change):
        payload = change.payload
        row, created = self._task_row(session, change.agent_id,
                                      payload["task_id"], change.at)
        if row.method is None:
            row.method = _text(payload["method"], models.ID_LENGTH)
        if row.params is None:
            row.params = payload["params"]
        if created:
            row.state = "sent"
            self._event(session, change.agent_id, payload["task_id"],
                        "sent", change.at)
        self.stats["task_writes"] += 1

    def _write_running(self, session, changes, chunk=RUNNING_CHUNK):
        """The running updates of a batch (one per task), in a few
        statements: the hot path of a busy fleet, so Core executemany
        rather than one ORM object per task. A task this writer already
        wrote as running (``self._running``) is one ``UPDATE`` by row id
        that applies only while the row is still running; the others (and
        any of those whose row changed meanwhile, seen from the rows
        updated) are looked up first."""
        cached, looked_up = [], []
        for change in changes:
            key = (change.agent_id, change.payload["task_id"])
            row_id = self._running.get(key)
            if row_id is None:
                row_id = self._running_new.get(key)
            if row_id is None:
                looked_up.append(change)
            else:
                cached.append((change, row_id))
        update = None
        for start in range(0, len(cached), chunk):
            if update is None:
                update = self._running_update(session)
            elif self.writer_pause is not None:
                # The hub's turn: this thread holds the GIL for as long as
                # it binds a chunk, and the event loop waits meanwhile.
                time.sleep(self.writer_pause)
            part = cached[start:start + chunk]
            updated = update([(
                row_id, change.first_at,
                _number(change.payload.get("percent")),
                _number(change.payload.get("eta")), change.at)
                for change, row_id in part])
            if updated == len(part):
                self.stats["task_writes"] += updated
                continue
            # Some rows are no longer running (another process wrote a
            # final state) or are gone: those are looked up like new ones
            # (updating again the rows that were updated is harmless).
            for change, _ in part:
                self._not_running((change.agent_id,
                                   change.payload["task_id"]))
            looked_up.extend(change for change, _ in part)
        for start in range(0, len(looked_up), chunk):
            self._look_up_running(session, looked_up[start:start + chunk])

    #: The columns of :meth:`_running_update`'s rows, in order.
    _RUNNING_ROW = ("b_id", "b_at", "b_percent", "b_eta", "b_updated_at")

    def _running_update(self, session):
        """A function writing rows ``(row id, first_at, percent, eta,
        at)`` of running tasks on the session's connection, returning how
        many rows it updated (only rows still running are).

        Where the database can (PostgreSQL, SQLite 3.33 and later) a
        chunk is one ``UPDATE ... FROM (VALUES ...)`` statement: a
        DBAPI ``executemany`` steps once per row, and the driver lets go
        of the GIL and takes it back around each step, so a batch of
        thousands was as many hand-overs with the event loop, each a
        thread wake-up the loop waits for. Elsewhere it is that
        ``executemany`` of SQLAlchemy's statement, compiled once per
        dialect. Both skip SQLAlchemy's per-row parameter processing.
        """
        connection = session.connection()
        dialect = connection.dialect
        dbapi = connection.connection.dbapi_connection
        marker = _MARKERS.get(dialect.paramstyle)
        if marker is not None and _updates_from_values(dialect):
            def update(rows):
                return _run(dbapi, self._values_update(marker, len(rows)),
                            [value for row in rows for value in row])
            return update
        compiled = self._running_sql.get(dialect.name)
        if compiled is None:
            table = models.Task.__table__
            statement = table.update().where(
                table.c.id == sa.bindparam("b_id"),
                table.c.state == sa.bindparam("b_state")).values(
                    percent=sa.bindparam("b_percent"),
                    eta=sa.bindparam("b_eta"),
                    updated_at=sa.bindparam("b_updated_at"),
                    started_at=sa.func.coalesce(
                        table.c.started_at, sa.bindparam("b_at")))
            compiled = statement.compile(dialect=dialect)
            self._running_sql[dialect.name] = compiled
        names = compiled.positiontup
        order = None if names is None else [
            "b_state" if name == "b_state" else
            self._RUNNING_ROW.index(name) for name in names]

        def update_many(rows):
            if order is None:
                params = [dict(zip(self._RUNNING_ROW, row),
                               b_state=RUNNING) for row in rows]
            else:
                params = [tuple(RUNNING if index == "b_state" else
                                row[index] for index in order)
                          for row in rows]
            return _run(dbapi, compiled.string, params, many=True)
        return update_many

    def _values_update(self, marker, count):
        """The ``UPDATE ... FROM (VALUES ...)`` of ``count`` rows."""
        key = (marker, count)
        sql = self._running_sql.get(key)
        if sql is None:
            row = "(CAST(%s AS INTEGER), CAST(%s AS FLOAT), CAST(%s AS " \
                  "FLOAT), CAST(%s AS FLOAT), CAST(%s AS FLOAT))" \
                  % ((marker,) * 5)
            table = models.Task.__table__.name
            # VALUES columns are column1, column2, ... in both databases.
            sql = ("UPDATE {t} SET percent = v.column3, eta = v.column4, "
                   "updated_at = v.column5, started_at = COALESCE("
                   "{t}.started_at, v.column2) FROM (VALUES {rows}) AS v "
                   "WHERE {t}.id = v.column1 AND {t}.state = '{running}'"
                   ).format(t=table, rows=", ".join([row] * count),
                            running=RUNNING)
            if count == RUNNING_CHUNK:
                self._running_sql[key] = sql
        return sql

    def _look_up_running(self, session, part):
        table, events = models.Task.__table__, models.TaskEvent.__table__
        keys = {(change.agent_id, change.payload["task_id"])
                for change in part}
        known = {(row.agent_id, row.task_id): row for row in
                 session.execute(sa.select(
                     table.c.id, table.c.agent_id, table.c.task_id,
                     table.c.state, table.c.started_at).where(
                         _task_keys_in(table, keys)))}
        updates, inserts, new_events = [], [], []
        for change in part:
            status = change.payload
            key = (change.agent_id, status["task_id"])
            values = {"percent": _number(status.get("percent")),
                      "eta": _number(status.get("eta")),
                      "updated_at": change.at}
            row = known.get(key)
            if row is None:
                method = status.get("method")
                inserts.append(dict(
                    values, agent_id=change.agent_id,
                    task_id=status["task_id"], state=RUNNING,
                    method=method[:models.ID_LENGTH]
                    if isinstance(method, str) else None,
                    created_at=change.first_at, started_at=change.first_at))
            elif row.state in FINAL_STATES:
                continue
            else:
                updates.append(dict(
                    values, b_id=row.id,
                    started_at=row.started_at or change.first_at))
                self._running_new[key] = row.id
            if row is None or row.state != RUNNING:
                new_events.append({
                    "agent_id": change.agent_id,
                    "task_id": status["task_id"], "state": RUNNING,
                    "at": change.first_at, "percent": values["percent"],
                    "msg": None})
        if updates:
            session.execute(table.update().where(
                table.c.id == sa.bindparam("b_id")).values(
                    state=RUNNING), updates)
        if inserts:
            for row in session.execute(table.insert().returning(
                    table.c.id, table.c.agent_id, table.c.task_id,
                    sort_by_parameter_order=True), inserts):
                self._running_new[(row.agent_id, row.task_id)] = row.id
        if new_events:
            session.execute(events.insert(), new_events)
        self.stats["task_writes"] += len(updates) + len(inserts)

    def _write_refused(self, session, change):
        task_id = change.payload["task_id"]
        deleted = session.execute(sa.delete(models.Task).where(
            models.Task.agent_id == change.agent_id,
            models.Task.task_id == task_id, models.Task.state == "sent"))
        if deleted.rowcount:
            key = (change.agent_id, task_id)
            self._not_running(key)
            self._forget_cached(session, self._tasks.pop(key, None),
                                ("task",) + key)
            session.execute(sa.delete(models.TaskEvent).where(
                models.TaskEvent.agent_id == change.agent_id,
                models.TaskEvent.task_id == task_id))

    def _write_status(self, session, change, started=None):
        """Write one status; ``started`` is when the batch saw the task's
        first running update (its coalesced-away start)."""
        status = change.payload
        agent_id, task_id = change.agent_id, status["task_id"]
        state = status.get("state")
        if state != RUNNING:
            self._not_running((agent_id, task_id))
        row, created = self._task_row(session, agent_id, task_id, change.at)
        if row.state in FINAL_STATES and (state == RUNNING
                                          or state != row.state):
            # The endpoint's book keeps the first final state; a later
            # different one never reaches here, but a store shared by
            # several processes keeps the first too.
            return
        refill = row.state in FINAL_STATES
        method = status.get("method")
        if isinstance(method, str) and row.method is None:
            row.method = method[:models.ID_LENGTH]
        fresh = created or row.state == "sent"
        if started is not None and fresh and state != RUNNING:
            # The running updates went in this batch: keep the start.
            self._event(session, agent_id, task_id, RUNNING, started)
            row.started_at = row.started_at or started
        if not refill and (fresh or row.state != state):
            self._event(session, agent_id, task_id, state, change.at,
                        _number(status.get("percent")), status.get("msg"))
        self.stats["task_writes"] += 1
        row.updated_at = change.at
        if state == RUNNING:
            row.state = RUNNING
            row.started_at = row.started_at or started or change.at
            row.percent = _number(status.get("percent"))
            row.eta = _number(status.get("eta"))
            return
        row.state = state
        row.ended_at = row.ended_at or change.at
        row.started_at = row.started_at or change.at
        row.eta = None
        if state == "complete":
            row.percent = 100.0
            if "result" in status:
                row.result = status.get("result")
        else:
            row.msg = _text(status.get("msg"))
            if "details" in status:
                row.details = status.get("details")
        self._write_erasures(session, agent_id, task_id, row.method, status,
                             change.at)

    def _write_erasures(self, session, agent_id, task_id, method, status,
                        at):
        entries = evidence.device_entries(method, status)
        if not entries:
            return
        known = set(session.execute(sa.select(models.Erasure.device).where(
            models.Erasure.agent_id == agent_id,
            models.Erasure.task_id == task_id)).scalars())
        agent = session.get(models.Agent, agent_id)
        version = agent.agent_version if agent is not None else None
        for entry in entries:
            columns = evidence.record_columns(entry)
            if columns["device"] in known:
                continue
            known.add(columns["device"])
            session.add(models.Erasure(agent_id=agent_id, task_id=task_id,
                                       agent_version=version,
                                       recorded_at=at, **columns))
            self.stats["erasures"] += 1

    def _write_logs(self, session, agent_id, changes):
        if self.log_history <= 0:
            return
        changes = changes[-self.log_history:]
        session.add_all(models.AgentLog(
            agent_id=agent_id,
            at=_number(change.payload.get("time")) or change.at,
            level=_text(change.payload.get("level"), 16),
            logger=_text(change.payload.get("logger"), models.NAME_LENGTH),
            message=_text(change.payload.get("message")))
            for change in changes)
        self.stats["log_records"] += len(changes)
        session.flush()
        cutoff = session.execute(
            sa.select(models.AgentLog.id).where(
                models.AgentLog.agent_id == agent_id).order_by(
                    models.AgentLog.id.desc()).offset(
                        self.log_history).limit(1)).scalar_one_or_none()
        if cutoff is not None:
            session.execute(sa.delete(models.AgentLog).where(
                models.AgentLog.agent_id == agent_id,
                models.AgentLog.id <= cutoff))

    # -- reads (the caller's thread) --------------------------------------

    def _read(self, func):
        try:
            with orm.Session(self.engine) as session:
                return func(session)
        except sa_exc.SQLAlchemyError as exc:
            raise schema.DatabaseError(
                "cannot read the database %s: %s"
                % (schema.shown_url(str(self.engine.url)),
                   schema.first_line(exc))) from None

    def token_hashes(self):
        """agent_id -> SHA-256 of its session token."""
        return self._read(lambda session: dict(session.execute(
            sa.select(models.Agent.agent_id, models.Agent.token_hash).where(
                models.Agent.token_hash.is_not(None))).all()))

    def token_hash(self, agent_id):
        """The SHA-256 of one agent's session token, or None."""
        return self._read(lambda session: session.execute(
            sa.select(models.Agent.token_hash).where(
                models.Agent.agent_id == agent_id)).scalar_one_or_none())

    def import_tokens(self, hashes):
        """Keep ``hashes`` (agent_id -> SHA-256) now, in one transaction
        (the migration of the old token file)."""
        now = self.clock()
        with orm.Session(self.engine) as session, session.begin():
            for agent_id, token_hash in hashes.items():
                self._agent_row(session, agent_id, now).token_hash = \
                    token_hash

    def agents(self, limit=None):
        """Every agent row as a dict, in agent_id order, with the name of
        the process holding it (``process``)."""
        def read(session):
            query = sa.select(models.Agent, models.EndpointProcess.name).join(
                models.EndpointProcess,
                models.Agent.process_id == models.EndpointProcess.id,
                isouter=True).order_by(models.Agent.agent_id)
            if limit:
                query = query.limit(limit)
            return [dict(_agent_dict(row), process=name)
                    for row, name in session.execute(query)]
        return self._read(read)

    def tasks(self, agent_id=None, state=None, limit=None, newest=False):
        """Task rows as dicts, oldest first (the newest ``limit`` with
        ``newest``)."""
        def read(session):
            query = sa.select(models.Task)
            if agent_id is not None:
                query = query.where(models.Task.agent_id == agent_id)
            if state is not None:
                query = query.where(models.Task.state == state)
            if newest or limit:
                query = query.order_by(models.Task.id.desc())
                if limit:
                    query = query.limit(limit)
                rows = list(reversed(session.execute(query).scalars().all()))
            else:
                rows = session.execute(
                    query.order_by(models.Task.id)).scalars().all()
            return [_task_dict(row) for row in rows]
        return self._read(read)

    def task_events(self, agent_id, task_id):
        def read(session):
            return [{"state": row.state, "at": row.at,
                     "percent": row.percent, "msg": row.msg}
                    for row in session.execute(
                        sa.select(models.TaskEvent).where(
                            models.TaskEvent.agent_id == agent_id,
                            models.TaskEvent.task_id == task_id).order_by(
                                models.TaskEvent.id)).scalars()]
        return self._read(read)

    def recent_tasks(self, per_agent):
        """agent_id -> its newest ``per_agent`` tasks (dicts, oldest
        first), for every agent that has a row."""
        def read(session):
            kept = collections.defaultdict(
                lambda: collections.deque(maxlen=per_agent))
            query = sa.select(models.Task).join(
                models.Agent,
                models.Agent.agent_id == models.Task.agent_id).order_by(
                    models.Task.agent_id, models.Task.id)
            for row in session.execute(query).scalars():
                kept[row.agent_id].append(_task_dict(row))
            return {key: list(value) for key, value in kept.items()}
        return self._read(read)

    def erasures(self, agent_id=None):
        def read(session):
            query = sa.select(models.Erasure).order_by(models.Erasure.id)
            if agent_id is not None:
                query = query.where(models.Erasure.agent_id == agent_id)
            return [_erasure_dict(row)
                    for row in session.execute(query).scalars()]
        return self._read(read)

    def logs(self, agent_id):
        def read(session):
            return [{"at": row.at, "level": row.level, "logger": row.logger,
                     "message": row.message}
                    for row in session.execute(
                        sa.select(models.AgentLog).where(
                            models.AgentLog.agent_id == agent_id).order_by(
                                models.AgentLog.id)).scalars()]
        return self._read(read)


def _iso(at):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _agent_dict(row):
    return {"agent_id": row.agent_id, "first_seen_at": row.first_seen_at,
            "last_seen_at": row.last_seen_at, "connected": row.connected,
            "peer": row.peer, "tls": row.tls, "identity": row.identity,
            "agent_version": row.agent_version,
            "handshake": row.handshake or {}}


def _task_dict(row):
    return {"agent_id": row.agent_id, "task_id": row.task_id,
            "method": row.method, "params": row.params, "state": row.state,
            "percent": row.percent, "eta": row.eta, "msg": row.msg,
            "result": row.result, "details": row.details,
            "created_at": row.created_at, "started_at": row.started_at,
            "updated_at": row.updated_at, "ended_at": row.ended_at}


ERASURE_FIELDS = (
    "agent_id", "task_id", "device", "outcome", "method", "nist_category",
    "verified", "serial", "model", "wwn", "firmware", "size_bytes", "tool",
    "tool_version", "error", "started_at", "ended_at", "agent_version",
    "recorded_at")


def _erasure_dict(row):
    kept = {field: getattr(row, field) for field in ERASURE_FIELDS}
    kept["verification"] = row.verification
    kept["record"] = row.record
    return kept


def task_status_of(task):
    """The protocol status of a stored task (what the endpoint's task book
    holds), or None for a task that was only sent."""
    state = task["state"]
    if state == RUNNING:
        status = {"task_id": task["task_id"], "state": state}
        if task["method"] is not None:
            status["method"] = task["method"]
        status["percent"] = task["percent"]
        status["eta"] = task["eta"]
        return status
    if state not in FINAL_STATES:
        return None
    status = {"task_id": task["task_id"], "state": state,
              "method": task["method"]}
    if state == "complete":
        status["result"] = task["result"] if task["result"] is not None \
            else {}
    else:
        status["msg"] = task["msg"]
        if task["details"] is not None:
            status["details"] = task["details"]
    return status
