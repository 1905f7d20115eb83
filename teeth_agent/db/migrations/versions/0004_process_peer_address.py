"""Endpoint processes publish the address of their peer port (TLS), so
that processes on other machines can route commands to the agents they
hold (teeth_agent.endpoint.peer_link).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("endpoint_processes") as batch:
        batch.add_column(sa.Column("peer_address", sa.String(255),
                                   nullable=True))


def downgrade():
    with op.batch_alter_table("endpoint_processes") as batch:
        batch.drop_column("peer_address")
