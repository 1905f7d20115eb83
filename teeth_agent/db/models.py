"""The endpoint's tables, as SQLAlchemy 2 declarative models.

Times are UNIX epoch seconds (UTC) in ``*_at`` columns, the same numbers
the protocol and the endpoint's memory use, on every database engine.
JSON columns hold what the agent or the operator sent, secrets redacted
(:mod:`teeth_agent.db.redact`). The migrations in
``teeth_agent/db/migrations/versions`` create exactly these tables; a unit
test compares them.
"""

import sqlalchemy as sa
from sqlalchemy import orm

#: Lengths that match the endpoint's own bounds (agent_id, task_id).
ID_LENGTH = 256
NAME_LENGTH = 255


class Base(orm.DeclarativeBase):
    pass


class EndpointProcess(Base):
    """One ``teeth-endpoint serve`` process, from start to stop."""

    __tablename__ = "endpoint_processes"

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(NAME_LENGTH))
    host: orm.Mapped[str] = orm.mapped_column(sa.String(NAME_LENGTH))
    pid: orm.Mapped[int] = orm.mapped_column(sa.Integer)
    listen: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    #: Where the other processes reach its control socket
    #: (``unix:/path``; see teeth_agent.endpoint.peers).
    control: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    #: Where processes on other machines reach its peer port
    #: (``tls:host:port``; None: it has none; see
    #: teeth_agent.endpoint.peer_link).
    peer_address: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    started_at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    heartbeat_at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    stopped_at: orm.Mapped[float | None] = orm.mapped_column(sa.Float)


class Agent(Base):
    """An agent the endpoint knows, connected or not."""

    __tablename__ = "agents"

    agent_id: orm.Mapped[str] = orm.mapped_column(
        sa.String(ID_LENGTH), primary_key=True)
    first_seen_at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    last_seen_at: orm.Mapped[float] = orm.mapped_column(sa.Float, index=True)
    connected: orm.Mapped[bool] = orm.mapped_column(sa.Boolean,
                                                    default=False)
    #: The process holding the agent's link now (None: disconnected).
    process_id: orm.Mapped[int | None] = orm.mapped_column(
        sa.ForeignKey("endpoint_processes.id", ondelete="SET NULL"),
        index=True)
    peer: orm.Mapped[str | None] = orm.mapped_column(sa.String(NAME_LENGTH))
    tls: orm.Mapped[bool] = orm.mapped_column(sa.Boolean, default=False)
    identity: orm.Mapped[str | None] = orm.mapped_column(sa.String(32))
    agent_version: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    #: What the endpoint keeps of the handshake (no tasks, no token).
    handshake: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    #: SHA-256 of the agent's session token ([endpoint] agent_identity =
    #: token); the token itself is never stored.
    token_hash: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))


class Task(Base):
    """One task of one agent: its latest state and its final result."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.UniqueConstraint("agent_id", "task_id", name="uq_tasks_agent_task"),
        sa.Index("ix_tasks_state", "state"),
    )

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    agent_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    task_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    method: orm.Mapped[str | None] = orm.mapped_column(sa.String(ID_LENGTH))
    params: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    percent: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    eta: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    msg: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    result: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    #: What an ``error`` state carried besides its msg (a failed erase
    #: lists its devices there).
    details: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    created_at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    started_at: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    updated_at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    #: Set with the final state only; indexed for the retention
    #: (``[database] task_retention``), which deletes the oldest first.
    ended_at: orm.Mapped[float | None] = orm.mapped_column(sa.Float,
                                                           index=True)


class TaskEvent(Base):
    """A state change of a task (sent, running, error, complete)."""

    __tablename__ = "task_events"
    __table_args__ = (
        sa.Index("ix_task_events_agent_task", "agent_id", "task_id"),
    )

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    agent_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    task_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    state: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    percent: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    msg: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class AgentLog(Base):
    """A log record an agent forwarded (the newest ones per agent)."""

    __tablename__ = "agent_logs"
    __table_args__ = (
        sa.Index("ix_agent_logs_agent", "agent_id", "id"),
    )

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    agent_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    at: orm.Mapped[float] = orm.mapped_column(sa.Float)
    level: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    logger: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    message: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class Erasure(Base):
    """One device of one erase task: the evidence an auditor asks for.

    The columns are filled from the device's entry in the ``disk_erase``
    result when the agent reports them; ``record`` keeps the whole entry.
    """

    __tablename__ = "erasures"
    __table_args__ = (
        sa.UniqueConstraint("agent_id", "task_id", "device",
                            name="uq_erasures_agent_task_device"),
        sa.Index("ix_erasures_serial", "serial"),
    )

    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    agent_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    task_id: orm.Mapped[str] = orm.mapped_column(sa.String(ID_LENGTH))
    device: orm.Mapped[str] = orm.mapped_column(sa.String(NAME_LENGTH))
    outcome: orm.Mapped[str | None] = orm.mapped_column(sa.String(32))
    method: orm.Mapped[str | None] = orm.mapped_column(sa.String(64))
    nist_category: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))
    verified: orm.Mapped[bool | None] = orm.mapped_column(sa.Boolean)
    verification: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    serial: orm.Mapped[str | None] = orm.mapped_column(sa.String(NAME_LENGTH))
    model: orm.Mapped[str | None] = orm.mapped_column(sa.String(NAME_LENGTH))
    wwn: orm.Mapped[str | None] = orm.mapped_column(sa.String(NAME_LENGTH))
    firmware: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    size_bytes: orm.Mapped[int | None] = orm.mapped_column(sa.BigInteger)
    tool: orm.Mapped[str | None] = orm.mapped_column(sa.String(NAME_LENGTH))
    tool_version: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    error: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    started_at: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    ended_at: orm.Mapped[float | None] = orm.mapped_column(sa.Float)
    agent_version: orm.Mapped[str | None] = orm.mapped_column(
        sa.String(NAME_LENGTH))
    recorded_at: orm.Mapped[float] = orm.mapped_column(sa.Float,
                                                       index=True)
    record: orm.Mapped[dict] = orm.mapped_column(sa.JSON)
