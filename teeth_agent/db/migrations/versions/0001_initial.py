"""The first schema: endpoint processes, agents, tasks and their state
changes, agent logs, erasure records.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 256
NAME = 255


def upgrade():
    op.create_table(
        "endpoint_processes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(NAME), nullable=False),
        sa.Column("host", sa.String(NAME), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("listen", sa.String(NAME), nullable=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float, nullable=True),
    )
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(ID), primary_key=True),
        sa.Column("first_seen_at", sa.Float, nullable=False),
        sa.Column("last_seen_at", sa.Float, nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False),
        sa.Column("process_id", sa.Integer,
                  sa.ForeignKey("endpoint_processes.id",
                                name="fk_agents_process",
                                ondelete="SET NULL"),
                  nullable=True),
        sa.Column("peer", sa.String(NAME), nullable=True),
        sa.Column("tls", sa.Boolean, nullable=False),
        sa.Column("identity", sa.String(32), nullable=True),
        sa.Column("agent_version", sa.String(NAME), nullable=True),
        sa.Column("handshake", sa.JSON, nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_agents_process_id", "agents", ["process_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(ID), nullable=False),
        sa.Column("task_id", sa.String(ID), nullable=False),
        sa.Column("method", sa.String(ID), nullable=True),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float, nullable=True),
        sa.Column("eta", sa.Float, nullable=True),
        sa.Column("msg", sa.Text, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("details", sa.JSON, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.UniqueConstraint("agent_id", "task_id",
                            name="uq_tasks_agent_task"),
    )
    op.create_index("ix_tasks_state", "tasks", ["state"])
    op.create_table(
        "task_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(ID), nullable=False),
        sa.Column("task_id", sa.String(ID), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("percent", sa.Float, nullable=True),
        sa.Column("msg", sa.Text, nullable=True),
    )
    op.create_index("ix_task_events_agent_task", "task_events",
                    ["agent_id", "task_id"])
    op.create_table(
        "agent_logs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(ID), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("level", sa.String(16), nullable=True),
        sa.Column("logger", sa.String(NAME), nullable=True),
        sa.Column("message", sa.Text, nullable=True),
    )
    op.create_index("ix_agent_logs_agent", "agent_logs", ["agent_id", "id"])
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.String(ID), nullable=False),
        sa.Column("task_id", sa.String(ID), nullable=False),
        sa.Column("device", sa.String(NAME), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("nist_category", sa.String(16), nullable=True),
        sa.Column("verified", sa.Boolean, nullable=True),
        sa.Column("verification", sa.JSON, nullable=True),
        sa.Column("serial", sa.String(NAME), nullable=True),
        sa.Column("model", sa.String(NAME), nullable=True),
        sa.Column("wwn", sa.String(NAME), nullable=True),
        sa.Column("firmware", sa.String(NAME), nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("tool", sa.String(NAME), nullable=True),
        sa.Column("tool_version", sa.String(NAME), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("agent_version", sa.String(NAME), nullable=True),
        sa.Column("recorded_at", sa.Float, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.UniqueConstraint("agent_id", "task_id", "device",
                            name="uq_erasures_agent_task_device"),
    )
    op.create_index("ix_erasures_serial", "erasures", ["serial"])


def downgrade():
    for table in ("erasures", "agent_logs", "task_events", "tasks",
                  "agents", "endpoint_processes"):
        op.drop_table(table)
