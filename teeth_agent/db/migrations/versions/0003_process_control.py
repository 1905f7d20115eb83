"""Endpoint processes publish their control socket, so that the others
can forward commands for the agents they hold (teeth_agent.endpoint.peers).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("endpoint_processes") as batch:
        batch.add_column(sa.Column("control", sa.String(255), nullable=True))


def downgrade():
    with op.batch_alter_table("endpoint_processes") as batch:
        batch.drop_column("control")
