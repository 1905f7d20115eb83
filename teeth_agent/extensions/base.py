"""The base of command groups and the decorators that expose commands.

A command group is a class deriving from :class:`Extension`, registered under
the ``teeth_agent.extensions`` entry-point namespace; the entry-point name is
the group's wire prefix (``decom`` serves ``decom.disk_erase``). Only methods
decorated with :func:`command` or :func:`task_command` are reachable from the
wire, and their parameters are declared with :mod:`teeth_agent.params` and
checked before the method runs::

    class Decom(base.Extension):
        @base.task_command(exclusive=True, params={
            "devices": params.List(params.DevicePath()),
        })
        def disk_erase(self, task, devices):
            ...
            task.progress(done=written, total=size)
            return {"devices": results}
"""

import dataclasses
import inspect
import typing

from teeth_agent import params as params_mod
from teeth_agent import protocol

_SPEC_ATTRIBUTE = "_teeth_command"


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """How a command is exposed: its name, parameters and kind."""

    name: str
    params: dict
    is_task: bool
    exclusive: bool
    doc: typing.Optional[str]

    def describe(self):
        return {"task": self.is_task, "exclusive": self.exclusive,
                "params": {name: param.describe()
                           for name, param in self.params.items()}}


def _decorate(func, name, params, is_task, exclusive):
    params = dict(params or {})
    if is_task:
        params = {"task_id": params_mod.Identifier(required=True), **params}
    expected = set(params) - ({"task_id"} if is_task else set())
    signature = inspect.signature(func)
    accepted = [p for p in list(signature.parameters)[1 + int(is_task):]]
    if set(accepted) != expected:
        raise TypeError(
            "%s declares parameters %s but accepts %s"
            % (func.__qualname__, sorted(expected), sorted(accepted)))
    spec = CommandSpec(name or func.__name__, params, is_task, exclusive,
                       inspect.getdoc(func))
    setattr(func, _SPEC_ATTRIBUTE, spec)
    return func


def command(params=None, name=None):
    """Expose a method that answers at once: ``method(self, **params)``
    returns the result object (a dict)."""
    def wrap(func):
        return _decorate(func, name, params, False, False)
    return wrap


def task_command(params=None, name=None, exclusive=False):
    """Expose a method that runs as a task: ``method(self, task, **params)``
    runs in its own OS thread, reports with ``task.progress()``, returns the
    result object (or raises :class:`teeth_agent.tasks.TaskFailed`).

    ``task_id`` is added to the parameters. ``exclusive`` tasks (those that
    change disks) refuse to start while another exclusive task runs.

    A task command may define ``validate_<name>(self, **params)``: it runs
    before the task is created, may raise ``protocol.InvalidParams`` and
    returns the (possibly normalised) params; use it for checks against the
    machine, such as whether a device is eligible.
    """
    def wrap(func):
        return _decorate(func, name, params, True, exclusive)
    return wrap


class ExtensionContext:
    """What the agent gives every extension.

    ``conf`` is the agent's oslo.config object, ``hardware`` the hardware
    manager dispatcher, ``tasks`` the task registry, ``power`` the power
    interface, ``agent_id`` the agent's id.
    """

    def __init__(self, conf, hardware, tasks, power, agent_id=None):
        self.conf = conf
        self.hardware = hardware
        self.tasks = tasks
        self.power = power
        self.agent_id = agent_id


class Extension:
    """A command group. ``name`` is set from the entry-point name."""

    name = None

    def __init__(self, context):
        self.context = context
        self.conf = context.conf
        self.hardware = context.hardware

    @classmethod
    def command_specs(cls):
        """Every exposed command of the class, by method name."""
        specs = {}
        for attribute in dir(cls):
            member = getattr(cls, attribute, None)
            spec = getattr(member, _SPEC_ATTRIBUTE, None)
            if spec is not None:
                specs[attribute] = spec
        return specs

    def commands(self):
        """``{wire name: (spec, bound method)}`` for this group."""
        return {"%s.%s" % (self.name, spec.name): (spec, getattr(self, attr))
                for attr, spec in self.command_specs().items()}

    def validator(self, spec):
        return getattr(self, "validate_%s" % spec.name, None)

    def validate(self, spec, checked):
        """Run the command's ``validate_<name>`` hook, if any.

        ``checked`` are the params after :func:`check_params`. The hook gets
        them as keyword arguments, ``task_id`` included only when its
        signature names it; it returns the params to use (or None to keep
        them). The result never contains ``task_id``.
        """
        checked = dict(checked)
        task_id = checked.pop("task_id", None)
        hook = self.validator(spec)
        if hook is None:
            return checked
        arguments = dict(checked)
        if "task_id" in inspect.signature(hook).parameters:
            arguments["task_id"] = task_id
        result = hook(**arguments)
        if result is None:
            return checked
        result = dict(result)
        result.pop("task_id", None)
        return result


def check_params(spec, raw):
    """Validate the raw params of a command against its spec."""
    if not isinstance(raw, dict):
        raise protocol.InvalidParams("params must be an object",
                                     details={"param": "params"})
    return params_mod.validate_fields(spec.params, raw)
