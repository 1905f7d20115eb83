"""Helpers to drive the decom extension without the protocol.

:func:`run_command` validates params like the agent does (declared params,
then the ``validate_<name>`` hook), starts the task in a
:class:`~teeth_agent.tasks.TaskRegistry` and waits for its final state.
:class:`FileServer` serves bytes over HTTP on 127.0.0.1 from a thread.
"""

import threading
import time

from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import decom
from teeth_agent.hardware import power
from teeth_agent import tasks

# Only a guard against a hung test, not a measurement.
TASK_DEADLINE = 300.0


class Recorder:
    """Collects every state of every task (a registry subscriber)."""

    def __init__(self):
        self.updates = []
        self._lock = threading.Lock()

    def __call__(self, task):
        with self._lock:
            self.updates.append((task.task_id, task.state, task.percent))

    def percents(self, task_id):
        with self._lock:
            return [percent for tid, state, percent in self.updates
                    if tid == task_id and state == tasks.RUNNING]


def make_extension(conf, dispatcher):
    """``(extension, registry, recorder)`` wired like the agent does."""
    recorder = Recorder()
    registry = tasks.TaskRegistry()
    registry.subscribe(recorder)
    context = ext_base.ExtensionContext(
        conf, dispatcher, registry, power.PowerController(simulate=True))
    extension = decom.DecomExtension(context)
    extension.name = "decom"
    return extension, registry, recorder


def validate(extension, method, params):
    """The checked params of ``decom.<method>`` (raises InvalidParams)."""
    spec, _ = extension.commands()["decom.%s" % method]
    checked = ext_base.check_params(spec, params)
    checked.pop("task_id", None)
    validator = extension.validator(spec)
    if validator is not None:
        checked = validator(**checked) or checked
    return checked


def run_command(extension, registry, method, params, task_id="task-1"):
    """Validate, start and wait for ``decom.<method>``; return the task."""
    spec, func = extension.commands()["decom.%s" % method]
    checked = validate(extension, method, dict(params, task_id=task_id))
    task, _ = registry.start(task_id, "decom.%s" % method,
                             lambda task: func(task, **checked),
                             exclusive=spec.exclusive)
    deadline = time.monotonic() + TASK_DEADLINE
    while not task.terminal:
        if time.monotonic() > deadline:
            raise AssertionError("task %s did not end" % task_id)
        time.sleep(0.01)
    return task
