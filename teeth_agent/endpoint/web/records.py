"""Erasure records: what the dashboard reports of every erased device.

The dashboard reads records through a small interface, so that a store
(a database) can serve them as well as the in-memory book here:

``erasure_records(limit=None)``
    The newest ``limit`` records (all without it), oldest first, each a
    dict of :data:`COLUMNS` plus ``device``, the device's entry as the
    agent sent it.
``blocking``
    True when ``erasure_records`` does I/O (a database): the dashboard then
    calls it from its own threads, never on the hub; False (the in-memory
    book) when it must be called on the hub.

:class:`ErasureBook` builds records from the final statuses of
``decom.disk_erase`` tasks as the endpoint receives them (and from the
tasks already in its books when it is attached), one per device, bounded.
"""

import collections
import time

import sqlalchemy as sa
from sqlalchemy import orm

from teeth_agent.db import models
from teeth_agent import metrics as metrics_mod
from teeth_agent import tasks as tasks_mod

#: The columns of a record, in the order of the CSV report.
COLUMNS = ("agent_id", "task_id", "task_state", "finished_at", "path",
           "outcome", "method", "nist_category", "verified", "bytes",
           "duration_s", "serial", "model", "wwn", "firmware", "size_bytes",
           "tool", "tool_version", "started_at", "ended_at", "error",
           "agent_version")

#: The columns taken from the device entry (the rest are the task's and
#: the agent's).
DEVICE_COLUMNS = COLUMNS[4:-1]

#: How many records the in-memory book keeps (the newest).
MAX_RECORDS = 10000


def records_of(agent_id, status, finished_at, agent_version=None):
    """The records of one final ``decom.disk_erase`` status (none when it
    reports no devices)."""
    # A failed erase reports its devices in the error's details.
    result = status.get("result")
    if not isinstance(result, dict) and \
            status.get("state") == tasks_mod.ERROR:
        result = status.get("details")
    devices = result.get("devices") if isinstance(result, dict) else None
    if not isinstance(devices, list):
        return []
    records = []
    for entry in devices:
        if not isinstance(entry, dict):
            continue
        record = {"agent_id": agent_id, "task_id": status.get("task_id"),
                  "task_state": status.get("state"),
                  "finished_at": finished_at}
        for column in DEVICE_COLUMNS:
            record[column] = entry.get(column)
        record["agent_version"] = agent_version
        record["device"] = entry
        records.append(record)
    return records


class ErasureBook:
    """The newest erasure records, in memory (see the module docstring)."""

    blocking = False

    def __init__(self, endpoint, limit=MAX_RECORDS, clock=time.time):
        self.endpoint = endpoint
        self.clock = clock
        self._records = collections.deque(maxlen=limit)
        self._subscribers = []

    def attach(self):
        """Take the erasures already in the endpoint's books, then follow
        its events; returns self."""
        for agent in list(self.endpoint.agents.values()):
            for status in list(agent.book.values()):
                self._add(agent, status, None)
        self.endpoint.subscribe(self.on_event)
        return self

    def detach(self):
        self.endpoint.unsubscribe(self.on_event)

    def subscribe(self, callback):
        """``callback(records)`` for each batch of new records."""
        self._subscribers.append(callback)

    def erasure_records(self, limit=None):
        records = list(self._records)
        return records if limit is None else records[-limit:] if limit \
            else []

    def on_event(self, event, agent, data):
        if event == "task_status":
            added = self._add(agent, data, self.clock())
            for callback in list(self._subscribers):
                if added:
                    callback(added)

    def _add(self, agent, status, finished_at):
        if status.get("method") != metrics_mod.ERASE_METHOD or \
                status.get("state") not in tasks_mod.TERMINAL:
            return []
        version = agent.handshake.get("agent_version")
        added = records_of(agent.agent_id, status, finished_at,
                           version if isinstance(version, str) else None)
        self._records.extend(added)
        return added


class StoreRecords:
    """The erasure records of the endpoint's database
    (:class:`teeth_agent.db.store.Store`): every erase the fleet's
    endpoints recorded, also before this process started. ``blocking``:
    read from the dashboard's threads, never on the hub."""

    blocking = True

    def __init__(self, store):
        self.store = store

    def erasure_records(self, limit=None):
        if limit == 0:
            return []
        query = sa.select(models.Erasure, models.Task.state).join(
            models.Task, sa.and_(
                models.Task.agent_id == models.Erasure.agent_id,
                models.Task.task_id == models.Erasure.task_id),
            isouter=True).order_by(models.Erasure.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with orm.Session(self.store.engine) as session:
            rows = session.execute(query).all()
        return [self._record(row, state) for row, state in reversed(rows)]

    @staticmethod
    def _record(row, state):
        entry = row.record if isinstance(row.record, dict) else {}
        record = {"agent_id": row.agent_id, "task_id": row.task_id,
                  "task_state": state, "finished_at": row.recorded_at,
                  "path": row.device, "bytes": entry.get("bytes"),
                  "duration_s": entry.get("duration_s")}
        for column in COLUMNS:
            if column not in record:
                record[column] = getattr(row, column, None)
        record["device"] = entry
        return record
