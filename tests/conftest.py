import os

from hypothesis import HealthCheck
from hypothesis import settings
import pytest

from tests import result_schemas

# "ci" keeps the suite fast; "fuzz" is the long run (see benchmarks/).
settings.register_profile("ci", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("fuzz", max_examples=200000, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def task_results_fit_their_schemas():
    """Fail a test in which a task of a decom or standbye command ended
    with a result (or error details) its declared schema refuses (see
    tests/result_schemas.py)."""
    result_schemas.take_problems()
    with result_schemas.watching():
        yield
    found = result_schemas.take_problems()
    if found:
        pytest.fail("task results that do not fit docs/schema/agent/"
                    "*.task-result.json (fix the code or the declaration "
                    "in @base.task_command(result=...), then run python -m "
                    "teeth_agent.cmd.schema docs/schema):\n  "
                    + "\n  ".join(found[:20]), pytrace=False)


def pytest_terminal_summary(terminalreporter):
    """Say how many task results were checked against their schemas, by
    method (a command missing here was not covered by the tests run)."""
    if result_schemas.CHECKED:
        terminalreporter.write_line(
            "task results checked against docs/schema/agent/*.task-result"
            ".json: " + ", ".join("%s %d" % item for item in sorted(
                result_schemas.CHECKED.items())))
