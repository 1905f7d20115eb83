"""An index on the end of tasks, for the retention of the task history
([database] task_retention, teeth-endpoint db prune): finding the
oldest finished tasks reads the index, not the whole table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_tasks_ended_at", "tasks", ["ended_at"])


def downgrade():
    op.drop_index("ix_tasks_ended_at", "tasks")
