"""Indexes for the reports and the agent sweeps: erasure records by time,
agents by when they were last seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_erasures_recorded_at", "erasures", ["recorded_at"])
    op.create_index("ix_agents_last_seen_at", "agents", ["last_seen_at"])


def downgrade():
    op.drop_index("ix_agents_last_seen_at", "agents")
    op.drop_index("ix_erasures_recorded_at", "erasures")
