"""The endpoint processes of one database, as the others see them.

Each ``serve`` process has a row in ``endpoint_processes`` (written by
:class:`teeth_agent.db.store.Store`: id, name, host, pid, where it listens,
start, heartbeat, stop) and the agents it holds point at it
(``agents.process_id``). :class:`ProcessDirectory` adds the address of the
process's control socket to its row and answers the questions routing asks:
which live process holds an agent, is the agent known at all, has any
process recorded a task's final state. It also expires the processes that
died: a row whose heartbeat is older than ``stale_after`` seconds and that
never said it stopped is marked stopped, and its agents as disconnected, so
the listings and the routing stop pointing at it.

Every method blocks on the database: call them from an OS thread
(``transport.run_in_thread``), never on the hub.
"""

import os
import socket
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm

from teeth_agent.db import models
from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import books
from teeth_agent.endpoint import peers


class ProcessDirectory:
    """See the module docstring. ``store`` is this process's open
    :class:`~teeth_agent.db.store.Store` (its engine and process id)."""

    def __init__(self, store, address, stale_after=30.0, clock=time.time,
                 peer_address=None, host=None):
        self.store = store
        #: This machine's name, as the store records it: a process of this
        #: host whose pid is gone is dead at once (see :meth:`_reap_local`).
        self.host = host or socket.gethostname()
        self.address = address
        #: The peer port (``tls:host:port``) published with the control
        #: socket, or None.
        self.peer_address = peer_address
        self.stale_after = stale_after
        self.clock = clock
        #: Whether the last :meth:`heartbeat` found this process counted
        #: dead by the others (and claimed its agents again).
        self.revived = False

    @property
    def process_id(self):
        return self.store.process_id

    def _session(self):
        return orm.Session(self.store.engine)

    def _fail(self, what, exc):
        return schema.DatabaseError(
            "cannot %s the endpoint processes in %s: %s"
            % (what, schema.shown_url(str(self.store.engine.url)),
               schema.first_line(exc)))

    def register(self):
        """Publish this process's control-socket and peer addresses."""
        peer = self.peer_address
        if peer is not None and len(peer) > models.NAME_LENGTH:
            # Cut, it would be a wrong address: better none.
            peer = None
        try:
            with self._session() as session, session.begin():
                session.execute(sa.update(models.EndpointProcess).where(
                    models.EndpointProcess.id == self.process_id).values(
                        control=self.address[:models.NAME_LENGTH],
                        peer_address=peer))
                reaped = self._reap_local(session, self.clock())
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("register in", exc) from None
        return reaped

    def _reap_local(self, session, now):
        """Mark stopped the processes of this host that are gone (their
        pid exists no more: killed, or the machine restarted) and their
        agents disconnected, without waiting ``stale_after``; returns
        them as :class:`~teeth_agent.endpoint.peers.Peer` values. A pid
        that exists is taken as alive (it may be reused:
        the heartbeat's expiry still catches that process)."""
        me = models.EndpointProcess
        gone = [row for row in session.execute(sa.select(me).where(
            me.stopped_at.is_(None), me.host == self.host,
            me.id != self.process_id)).scalars()
            if not _pid_exists(row.pid)]
        peers_gone = [_peer(row) for row in gone]
        if gone:
            ids = [row.id for row in gone]
            session.execute(sa.update(me).where(me.id.in_(ids)).values(
                stopped_at=now))
            session.execute(sa.update(models.Agent).where(
                models.Agent.process_id.in_(ids)).values(
                    connected=False, process_id=None))
        return peers_gone

    def unregister(self):
        """Nothing to do: the store marks the row stopped when it closes
        (a process that dies is expired by :meth:`heartbeat`)."""

    def _live(self, now):
        return sa.and_(models.EndpointProcess.stopped_at.is_(None),
                       models.EndpointProcess.heartbeat_at
                       >= now - self.stale_after)

    def heartbeat(self, held=()):
        """Beat for this process and expire the processes that stopped
        beating; returns them as :class:`~teeth_agent.endpoint.peers.Peer`
        values.

        The beat is written here, in its own small transaction, and not
        only by the store's writer (whose queue may be long when the
        database is slow), so a live process is not counted dead because
        its writes lag. A process that was counted dead all the same (it
        could not reach the database for ``stale_after``) says so, clears
        its stop time and claims again the agents it holds (``held``: their
        ids, or a callable giving them).
        """
        now = self.clock()
        me = models.EndpointProcess
        try:
            with self._session() as session, session.begin():
                own = session.get(me, self.process_id)
                revived = own is not None and own.stopped_at is not None
                session.execute(sa.update(me).where(
                    me.id == self.process_id).values(
                        heartbeat_at=now, stopped_at=None))
                if revived:
                    ids = list(held() if callable(held) else held)
                    for start in range(0, len(ids), 500):
                        session.execute(sa.update(models.Agent).where(
                            models.Agent.agent_id.in_(
                                ids[start:start + 500])).values(
                                    connected=True,
                                    process_id=self.process_id))
                reaped = self._reap_local(session, now)
                dead = session.execute(sa.select(me).where(
                    me.stopped_at.is_(None),
                    me.heartbeat_at < now - self.stale_after,
                    me.id != self.process_id)).scalars().all()
                if dead:
                    ids = [row.id for row in dead]
                    session.execute(sa.update(me).where(
                        me.id.in_(ids)).values(stopped_at=me.heartbeat_at))
                    session.execute(sa.update(models.Agent).where(
                        models.Agent.process_id.in_(ids)).values(
                            connected=False, process_id=None))
                expired = reaped + [_peer(row) for row in dead]
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("expire", exc) from None
        self.revived = revived
        return expired

    def live(self):
        """The live processes (this one included), oldest first."""
        now = self.clock()
        try:
            with self._session() as session:
                return [_peer(row) for row in session.execute(
                    sa.select(models.EndpointProcess).where(
                        self._live(now)).order_by(
                            models.EndpointProcess.id)).scalars()]
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def holder(self, agent_id):
        """The live process holding ``agent_id``, or None."""
        now = self.clock()
        try:
            with self._session() as session:
                row = session.execute(
                    sa.select(models.EndpointProcess).join(
                        models.Agent,
                        models.Agent.process_id
                        == models.EndpointProcess.id).where(
                            models.Agent.agent_id == agent_id,
                            models.Agent.connected.is_(True),
                            self._live(now))).scalar_one_or_none()
                return _peer(row) if row is not None else None
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def known(self, agent_id):
        """Whether any process has recorded ``agent_id``."""
        try:
            with self._session() as session:
                return session.get(models.Agent, agent_id) is not None
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def agent_ids(self):
        """Every agent id any process has recorded, sorted (the fleet's
        listing is paged over these)."""
        try:
            with self._session() as session:
                return list(session.execute(
                    sa.select(models.Agent.agent_id).order_by(
                        models.Agent.agent_id)).scalars())
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def agent_rows(self, agent_ids, task_history):
        """``agent_id -> row`` of the agents ``agent_ids``, as
        :meth:`teeth_agent.db.store.Store.agents` gives them, each with
        the live process holding it (``process``, ``holder_heartbeat_at``,
        or None) and its newest ``task_history`` tasks (``tasks``, oldest
        first)."""
        if not agent_ids:
            return {}
        now = self.clock()
        me, agent = models.EndpointProcess, models.Agent
        try:
            with self._session() as session:
                rows = {}
                for row, name, beat in session.execute(
                        sa.select(agent, me.name, me.heartbeat_at).join(
                            me, sa.and_(agent.process_id == me.id,
                                        self._live(now)),
                            isouter=True).where(
                                agent.agent_id.in_(list(agent_ids)))):
                    held = bool(row.connected) and name is not None
                    rows[row.agent_id] = dict(
                        store_mod._agent_dict(row), connected=held,
                        process=name if held else None,
                        holder_heartbeat_at=beat if held else None,
                        tasks=[])
                task = models.Task
                newest = sa.select(
                    task.id, sa.func.row_number().over(
                        partition_by=task.agent_id,
                        order_by=task.id.desc()).label("rank")).where(
                            task.agent_id.in_(list(rows))).subquery()
                for row in session.execute(
                        sa.select(task).join(
                            newest, newest.c.id == task.id).where(
                                newest.c.rank <= task_history).order_by(
                                    task.id)).scalars():
                    rows[row.agent_id]["tasks"].append(
                        store_mod._task_dict(row))
                return rows
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None

    def task_final(self, agent_id, task_id):
        """The task's final status as recorded by any process, or None."""
        try:
            with self._session() as session:
                row = session.execute(sa.select(models.Task).where(
                    models.Task.agent_id == agent_id,
                    models.Task.task_id == task_id,
                    models.Task.state.in_(store_mod.FINAL_STATES))
                ).scalar_one_or_none()
                if row is None:
                    return None
                return store_mod.task_status_of(store_mod._task_dict(row))
        except sa_exc.SQLAlchemyError as exc:
            raise self._fail("read", exc) from None


def _pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, TypeError):
        return True  # not ours to signal, or not a pid: not known dead
    return True


def describe_stored(row, full=True):
    """The ``agents`` listing entry of an agent from its database row (see
    :meth:`ProcessDirectory.agent_rows`): the keys of
    :meth:`teeth_agent.endpoint.server.AgentHandle.describe`, as another
    process (or nobody) holds it. ``last_seen`` of an agent held by a live
    process is that process's last heartbeat (it held the link then);
    ``connected_at``, ``log_records`` and ``violations`` are known only to
    the holder (null, null, [])."""
    handshake = row["handshake"] or {}
    connected = row["connected"]
    seen = row["last_seen_at"]
    if connected and row["holder_heartbeat_at"] is not None:
        seen = max(seen, row["holder_heartbeat_at"])
    statuses = [status for status in (
        store_mod.task_status_of(task) for task in row["tasks"])
        if status is not None]
    if not full:
        statuses = [books.task_summary(status) for status in statuses]
    return {
        "agent_id": row["agent_id"],
        "connected": connected,
        "peer": row["peer"] if connected else None,
        "tls": bool(row["tls"]) if connected else False,
        "identity": row["identity"],
        "connected_at": None,
        "first_seen": row["first_seen_at"],
        "last_seen": seen,
        "process": row["process"],
        "agent_version": handshake.get("agent_version"),
        "hardware": handshake.get("hardware"),
        "extensions": handshake.get("extensions"),
        "tasks": statuses,
        "log_records": None,
        "violations": [],
        "source": "database",
    }


def _peer(row):
    return peers.Peer(row.id, row.name, row.host, row.pid, row.control,
                      row.heartbeat_at, row.peer_address)


def router_for(endpoint, control_socket, conf_group, peer_link=None):
    """The :class:`~teeth_agent.endpoint.peers.PeerRouter` of a ``serve``
    process whose endpoint keeps its state in a database (its control
    socket and, with ``peer_link``, its peer port published as the
    process's addresses), or None for a process in memory only (it shares
    nothing, so there is nobody to route to)."""
    if endpoint.persistence is None:
        return None
    directory = ProcessDirectory(endpoint.persistence.store,
                                 peers.unix_address(control_socket),
                                 stale_after=conf_group.process_stale_after)
    return peers.PeerRouter(endpoint, directory,
                            heartbeat_interval=store_mod.HEARTBEAT_INTERVAL,
                            peer_link=peer_link)
