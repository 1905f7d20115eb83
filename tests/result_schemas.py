"""Every task result the tests see is checked against its declared schema.

What a task of an extension's command holds in ``result`` (and in the
``details`` of its error) is declared next to the command
(``@base.task_command(result=...)``) and written to
``docs/schema/agent/METHOD.task-result.json``. The declaration cannot
drift from the code because every result a test produces is validated
against it:

- in-process, every task that ends in a :class:`teeth_agent.tasks.
  TaskRegistry` (the unit tests of the extensions, the functional tests
  that drive an extension on loop devices): :func:`watching` wraps the
  registry's one place where a task ends;
- from a real agent process, every final ``task_status`` a
  :class:`tests.functional.harness.JsonLinePeer` receives
  (:func:`check_status`).

A result that does not fit is recorded, and ``tests/conftest.py`` fails
the test that produced it when it ends. Tasks of other methods (the test
extensions' ``work.*``, made-up names) are not checked.
"""

import collections
import contextlib
import functools
import threading

from jsonschema import validators
import referencing

from teeth_agent.cmd import schema
from teeth_agent import tasks

_LOCK = threading.Lock()
#: What did not fit since the last :func:`take_problems`.
_PROBLEMS = []
#: How many results and details were checked, by method (whole run).
CHECKED = collections.Counter()


@functools.lru_cache(maxsize=1)
def _validators():
    documents = schema.documents()
    registry = referencing.Registry().with_resources(
        (document["$id"], referencing.Resource.from_contents(document))
        for document in documents.values())
    found = {}
    for name, spec in schema.method_specs()["agent"].items():
        if spec.is_task:
            document = documents[schema.task_result_name(name)]
            cls = validators.validator_for(document)
            found[name] = cls(document, registry=registry,
                              format_checker=cls.FORMAT_CHECKER)
    return found


def problems_of(method, what, value):
    """The messages of what ``value`` (the ``result`` or ``details`` of a
    task of ``method``) breaks in its schema; [] when it fits or when the
    method declares none."""
    validator = _validators().get(method)
    if validator is None or value is None:
        return []
    if isinstance(value, dict) and value.get("truncated") is True:
        # The stand-in of task-status.json's $defs, for a result too
        # large for the line.
        return []
    with _LOCK:
        CHECKED[method] += 1
    return ["%s of a %s task: %s at %s" % (
        what, method, error.message,
        "/".join(str(part) for part in error.absolute_path) or "the top")
        for error in validator.iter_errors(value)]


def _record(found):
    if found:
        with _LOCK:
            _PROBLEMS.extend(found)


def check_task_end(task, state, result, details):
    """Check what ``task`` ends with (see :meth:`TaskRegistry._finish`)."""
    _record(problems_of(task.method, "the result", result) +
            problems_of(task.method, "the details", details))


def check_status(status):
    """Check a final status object (the params of ``task_status``)."""
    if not isinstance(status, dict) or \
            status.get("state") not in tasks.TERMINAL:
        return
    method = status.get("method")
    _record(problems_of(method, "the result", status.get("result")) +
            problems_of(method, "the details", status.get("details")))


def take_problems():
    """What did not fit since the last call (and forget it)."""
    with _LOCK:
        found = list(_PROBLEMS)
        del _PROBLEMS[:]
    return found


@contextlib.contextmanager
def watching():
    """Check every task that ends in any registry while the block runs
    (inside another such block it changes nothing)."""
    original = tasks.TaskRegistry._finish
    if getattr(original, "checks_results", False):
        yield
        return

    @functools.wraps(original)
    def finish(registry, task, state, msg=None, result=None, details=None):
        try:
            check_task_end(task, state, result, details)
        except Exception as exc:  # a checker bug must not hang the task
            _record(["checking the %s task %s failed: %r"
                     % (task.method, task.task_id, exc)])
        return original(registry, task, state, msg=msg, result=result,
                        details=details)

    finish.checks_results = True
    tasks.TaskRegistry._finish = finish
    try:
        yield
    finally:
        tasks.TaskRegistry._finish = original
