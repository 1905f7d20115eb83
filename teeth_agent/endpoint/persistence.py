"""The endpoint's state in the database: what the :class:`Endpoint` hands
to a :class:`teeth_agent.db.store.Store`, and what it reads back at start.

* Handshakes, disconnects, forgotten agents and log records reach the
  store through the endpoint's subscriber list (queued, never waited for).
* A recorded ``running`` status is queued (the store coalesces them).
* A recorded final status is committed before the agent's ``task_status``
  is answered: the handler waits on a green event that the writer thread
  sets through a :class:`transport.ThreadBridge` after the commit. Only
  that agent's connection waits; the hub serves every other one. When the
  commit fails or takes longer than the call timeout the agent's
  connection is closed unanswered, so the agent keeps the state and sends
  it again on its next connection (and that second send is stored even
  though the endpoint's memory already holds it).
* Session-token hashes live in the agents table (:class:`DbTokenStore`);
  an ``agent-tokens.json`` left in ``state_dir`` by an older endpoint is
  imported on the first start and renamed ``agent-tokens.json.migrated``.
* At start the agents of the database are loaded as disconnected (last
  seen, identity, handshake) with their newest tasks.
"""

import logging
import os
import time

from teeth_agent.db import schema
from teeth_agent.db import store as store_mod
from teeth_agent.endpoint import books
from teeth_agent.endpoint import errors
from teeth_agent.endpoint import identity as endpoint_identity
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: The suffix an imported token file is renamed with.
MIGRATED_SUFFIX = ".migrated"


def store_from_conf(conf):
    """The store ``[database]`` names (not opened yet). Raises
    :class:`EndpointConfigError` for a URL that cannot be used."""
    try:
        return store_mod.Store.from_conf(conf)
    except schema.DatabaseError as exc:
        raise errors.EndpointConfigError(str(exc)) from None


class DbTokenStore(endpoint_identity.TokenStore):
    """A :class:`TokenStore` whose hashes are kept in the database: every
    issued or forgotten token is queued to the store."""

    def __init__(self, store, hashes):
        super().__init__(path=None)
        self.store = store
        self._hashes = dict(hashes)
        # Agents forgotten here whose deletion the writer has not committed
        # yet: a refresh must not bring their old hash back meanwhile.
        self._forgotten = set()

    def refresh(self, agent_id):
        """Re-read the agent's hash from the database, where another
        endpoint process on it may have issued (or forgotten) one since
        this process loaded them; runs the read off the hub."""
        if agent_id in self._forgotten:
            return
        try:
            found = transport.run_in_thread(self.store.token_hash, agent_id)
        except schema.DatabaseError as exc:
            # Fail closed: without the database a first use here could
            # hand a held identity to anyone.
            raise errors.IdentityUnverifiable(
                "handshake refused: cannot check the session token of "
                "agent_id %s in the database: %s" % (agent_id, exc)) \
                from None
        if found is None:
            self._hashes.pop(agent_id, None)
        else:
            self._hashes[agent_id] = found

    def __contains__(self, agent_id):
        if agent_id not in self._hashes:
            self.refresh(agent_id)
        return agent_id in self._hashes

    def verify(self, agent_id, token):
        if super().verify(agent_id, token):
            return True
        # The token may have been issued again by another process.
        self.refresh(agent_id)
        return super().verify(agent_id, token)

    def issue(self, agent_id):
        token = super().issue(agent_id)
        self._forgotten.discard(agent_id)
        self.store.set_token(agent_id, self._hashes[agent_id])
        return token

    def forget(self, agent_id):
        super().forget(agent_id)
        # Queued even when this process had no hash: another process on
        # the database may have issued one.
        self._forgotten.add(agent_id)
        self.store.set_token(agent_id, None)

        def committed(error, agent_id=agent_id):
            if error is None:
                self._forgotten.discard(agent_id)
        self.store.flush_async(committed)


class Persistence:
    """Binds one endpoint to one store (see the module docstring)."""

    def __init__(self, store, commit_timeout=30.0):
        self.store = store
        self.commit_timeout = commit_timeout
        self.bridge = None
        # (agent_id, task_id) of final states whose commit failed: their
        # next send is stored even though the task book holds them.
        self.unsaved = set()
        #: Agents forgotten here whose row the writer has not deleted yet:
        #: the fleet listing leaves them out meanwhile.
        self.forgetting = set()

    @property
    def process_name(self):
        return self.store.process_name

    # -- start and stop ---------------------------------------------------

    def open(self, endpoint):
        """Check the schema, load the state into ``endpoint``, subscribe.

        Raises :class:`EndpointConfigError` (one sentence) when the
        database cannot be used or its schema is not the code's."""
        try:
            self.store.open()
            self._load_tokens(endpoint)
            self._load_agents(endpoint)
        except schema.DatabaseError as exc:
            raise errors.EndpointConfigError(str(exc)) from None
        endpoint.subscribe(self._on_event)

    def start(self, endpoint):
        """From the hub's thread, once the endpoint listens."""
        self.bridge = transport.ThreadBridge()
        self.bridge.start()
        self.store.set_listen("%s:%d" % (endpoint.host, endpoint.port))

    def stop(self):
        """Write what is queued and stop (waits in an OS thread)."""
        try:
            transport.run_in_thread(self.store.close)
        finally:
            if self.bridge is not None:
                self.bridge.stop()

    def _load_tokens(self, endpoint):
        hashes = self.store.token_hashes()
        path = endpoint.tokens.path
        if path is not None and os.path.exists(path):
            endpoint.tokens.load()
            found = endpoint.tokens.snapshot()
            new = {agent_id: token_hash for agent_id, token_hash
                   in found.items() if agent_id not in hashes}
            self.store.import_tokens(new)
            hashes.update(new)
            try:
                os.replace(path, path + MIGRATED_SUFFIX)
            except OSError as exc:
                raise schema.DatabaseError(
                    "imported the agent tokens of %s into the database but "
                    "cannot rename the file: %s" % (path, exc)) from None
            LOG.info("imported %d agent token(s) from %s into the database "
                     "(the file is now %s)", len(new), path,
                     path + MIGRATED_SUFFIX)
        endpoint.tokens = DbTokenStore(self.store, hashes)

    def _load_agents(self, endpoint):
        rows = self.store.agents()
        if endpoint.max_agents and len(rows) > endpoint.max_agents:
            rows = sorted(rows, key=lambda row: row["last_seen_at"])[
                -endpoint.max_agents:]
        recent = self.store.recent_tasks(endpoint.task_history)
        now_wall, now = time.time(), transport.monotonic()
        for row in sorted(rows, key=lambda row: row["last_seen_at"]):
            agent = endpoint.new_handle(row["agent_id"], None,
                                        row["handshake"] or {})
            agent.identity = row["identity"] or endpoint.agent_identity
            agent.connected_at = row["last_seen_at"]
            agent.last_seen_at = row["last_seen_at"]
            agent.disconnected_at = now - max(
                0.0, now_wall - row["last_seen_at"])
            for task in recent.get(row["agent_id"], ()):
                status = store_mod.task_status_of(task)
                if status is not None:
                    agent.book.record(status)
            endpoint.agents[row["agent_id"]] = agent
            endpoint._gone[row["agent_id"]] = None
        if rows:
            LOG.info("loaded %d agent(s) from the database, all "
                     "disconnected until they reconnect", len(rows))

    # -- writes -----------------------------------------------------------

    def _on_event(self, event, agent, data):
        if agent is None:
            return
        if event == "handshake":
            self.store.agent_connected(
                agent.agent_id, agent.handshake,
                peer=agent.connection.name if agent.connection else None,
                tls=agent.tls, identity=agent.identity)
        elif event == "disconnect":
            self.store.agent_disconnected(agent.agent_id)
        elif event == "forgotten":
            agent_id = agent.agent_id
            self.forgetting.add(agent_id)
            self.store.agent_forgotten(agent_id)
            # At once, not within flush_interval: an operator who forgot
            # an agent lists the agents next.
            self.store.flush_async(
                lambda error: self.forgetting.discard(agent_id))
        elif event == "log":
            self.store.log_record(agent.agent_id, data)

    def task_sent(self, agent_id, method, params):
        """Store a task command (params redacted) and wait for the commit
        before it goes to the agent: an operator's command is rare, and
        its record then never misses from the history."""
        task_id = (params or {}).get("task_id")
        if isinstance(task_id, str) and \
                0 < len(task_id) <= books.MAX_TASK_ID_LENGTH:
            self.store.task_sent(agent_id, task_id, method, params)
            problem = self._wait(self.store.flush_async)
            if problem is not None:
                LOG.warning("sending task %s to agent %s although it is not "
                            "stored: %s", books.printable(task_id),
                            books.printable(agent_id), problem)

    def task_refused(self, agent_id, params):
        """The agent answered the task command with an error: the task
        never existed on the agent, so its "sent" row goes."""
        task_id = (params or {}).get("task_id")
        if isinstance(task_id, str) and \
                0 < len(task_id) <= books.MAX_TASK_ID_LENGTH:
            self.store.task_refused(agent_id, task_id)

    def task_recorded(self, agent, task_id, acknowledge=True):
        """Store what the book now holds of ``task_id``. For a final state
        with ``acknowledge`` wait for the commit; returns None when stored,
        else the reason it was not (the caller closes the link)."""
        status = agent.book.get(task_id)
        if status is None:
            return None
        final = status.get("state") in tasks_mod.TERMINAL
        if not final or not acknowledge:
            self.store.task_status(agent.agent_id, status)
            return None
        key = (agent.agent_id, task_id)
        problem = self._wait(lambda committed: self.store.task_status(
            agent.agent_id, status, committed))
        if problem is not None:
            self.unsaved.add(key)
        else:
            self.unsaved.discard(key)
        return problem

    def token_committed(self):
        """Wait until what is queued (a session token just issued) is
        committed, so an agent never holds a token the database does not
        know; returns None or the reason."""
        return self._wait(lambda committed: self.store.flush_async(
            committed))

    def _wait(self, queue):
        """``queue(callback)`` queues a change with a commit callback;
        wait for it on the hub (this green thread only)."""
        done = transport.Event()
        outcome = []

        def committed(error):
            outcome.append(error)
            try:
                self.bridge.call(done.set)
            except OSError:
                pass  # the endpoint is stopping

        queue(committed)
        if not done.wait(self.commit_timeout):
            return "the database did not commit within %ss" \
                % self.commit_timeout
        if outcome[0] is not None:
            return "the database write failed: %s" \
                % schema.first_line(outcome[0])
        return None
