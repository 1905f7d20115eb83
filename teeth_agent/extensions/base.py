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

A task command may name a validator, a method that checks the params
against the machine before the task is created
(``@base.task_command(..., validator=validate_disk_erase)``, or the
method's name as a string when it is defined further down). The class is
checked when it is created, which is when its plugin is loaded: a validator
that does not exist, or does not accept the command's declared parameters,
and a ``validate_*`` method that no command declares (a typo would
otherwise disable the check silently) raise :class:`ValidatorError`.

Start-up work that changes the machine (recovering from a crash, cleaning
up) does not belong in the constructor: the agent builds every extension
first and then calls :meth:`Extension.start` on each.
"""

import difflib
import inspect

from teeth_agent import commands
from teeth_agent import params as params_mod

_SPEC_ATTRIBUTE = commands.SPEC_ATTRIBUTE

#: Methods whose name starts with this must be declared as a validator.
VALIDATOR_PREFIX = "validate_"


class ValidatorError(TypeError):
    """An extension class's validators do not fit its commands (a bug of
    the extension, found when the class is created)."""


class UnknownValidator(ValidatorError):
    """A command names a validator the class does not define as a
    method."""


class ValidatorSignatureError(ValidatorError):
    """A validator does not accept exactly the command's declared
    parameters."""


class UndeclaredValidator(ValidatorError):
    """A ``validate_*`` method that no command declares as its
    validator."""


#: How a command is exposed (:class:`teeth_agent.commands.CommandSpec`).
CommandSpec = commands.CommandSpec


def _decorate(func, name, params, is_task, exclusive, validator=None,
              result=None):
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
    if callable(validator):
        # A method of the class body, given before the class exists: it is
        # looked up by name on the instance, so a subclass may override it.
        validator = validator.__name__
    elif validator is not None and not isinstance(validator, str):
        raise TypeError("%s: validator must be a method or a method name, "
                        "not %r" % (func.__qualname__, validator))
    if result is not None and not isinstance(result, dict):
        raise TypeError("%s: result must be a JSON Schema (a dict), not %r"
                        % (func.__qualname__, result))
    spec = commands.CommandSpec(name or func.__name__, params, is_task,
                                exclusive, inspect.getdoc(func), validator,
                                result=result)
    setattr(func, _SPEC_ATTRIBUTE, spec)
    return func


def command(params=None, name=None):
    """Expose a method that answers at once: ``method(self, **params)``
    returns the result object (a dict)."""
    def wrap(func):
        return _decorate(func, name, params, False, False)
    return wrap


def task_command(params=None, name=None, exclusive=False, validator=None,
                 result=None):
    """Expose a method that runs as a task: ``method(self, task, **params)``
    runs in its own OS thread, reports with ``task.progress()``, returns the
    result object (or raises :class:`teeth_agent.tasks.TaskFailed`).

    ``task_id`` is added to the parameters. ``exclusive`` tasks (those that
    change disks) refuse to start while another exclusive task runs.

    ``validator`` is a method of the same class (the function itself, when
    it is defined above the command, else its name): it is called with the
    checked params as keyword arguments (``task_id`` only when it names
    it) before the task is created, may raise ``protocol.InvalidParams``
    and returns the (possibly normalised) params, or None to keep them.
    Use it for checks against the machine, such as whether a device is
    eligible. It must accept every declared parameter and no other (or
    take ``**params``); this is checked when the class is created.

    ``result`` is the JSON Schema of the task's ``result`` (and of the
    ``details`` of a :class:`teeth_agent.tasks.TaskFailed` carrying a
    partial result); see :mod:`teeth_agent.extensions.results`. The
    project's own commands must declare it: ``docs/schema/`` is made from
    it and the tests check every result against it.
    """
    def wrap(func):
        return _decorate(func, name, params, True, exclusive, validator,
                         result)
    return wrap


def _check_validator(cls, attribute, spec):
    """Raise :class:`ValidatorError` unless the validator ``spec`` names
    is a method of ``cls`` that accepts the command's parameters."""
    where = "%s.%s" % (cls.__qualname__, attribute)
    static = inspect.getattr_static(cls, spec.validator, None)
    if not inspect.isfunction(static):
        known = [name for name in dir(cls)
                 if name.startswith(VALIDATOR_PREFIX)]
        close = difflib.get_close_matches(spec.validator, known, n=1)
        raise UnknownValidator(
            "%s declares the validator %s, which is not a method of %s%s"
            % (where, spec.validator, cls.__qualname__,
               " (did you mean %s?)" % close[0] if close else ""))
    if getattr(static, _SPEC_ATTRIBUTE, None) is not None:
        raise UnknownValidator("%s declares the validator %s, which is a "
                               "command itself" % (where, spec.validator))
    declared = set(spec.params) - {"task_id"}
    accepted = set()
    takes_any = False
    for parameter in list(inspect.signature(static).parameters.values())[1:]:
        if parameter.kind == parameter.VAR_KEYWORD:
            takes_any = True
        elif parameter.kind in (parameter.POSITIONAL_OR_KEYWORD,
                                parameter.KEYWORD_ONLY):
            accepted.add(parameter.name)
        else:
            raise ValidatorSignatureError(
                "validator %s.%s of %s takes %s, which cannot be passed by "
                "keyword" % (cls.__qualname__, spec.validator, where,
                             parameter))
    unknown = accepted - declared - {"task_id"}
    missing = set() if takes_any else declared - accepted
    if unknown or missing:
        problems = []
        if missing:
            problems.append("does not accept %s" % ", ".join(sorted(missing)))
        if unknown:
            problems.append("accepts %s, which the command does not declare"
                            % ", ".join(sorted(unknown)))
        raise ValidatorSignatureError(
            "validator %s.%s of %s %s (declared: %s)"
            % (cls.__qualname__, spec.validator, where,
               " and ".join(problems), ", ".join(sorted(declared)) or
               "none"))


def check_validators(cls):
    """Check every validator of the extension class ``cls``.

    Each validator a command names must be a method of ``cls`` accepting
    the command's parameters, and every ``validate_*`` method must be
    declared by a command. Raises :class:`ValidatorError`; called when an
    :class:`Extension` subclass is created.
    """
    specs = cls.command_specs()
    declared = set()
    for attribute, spec in sorted(specs.items()):
        if spec.validator is None:
            continue
        _check_validator(cls, attribute, spec)
        declared.add(spec.validator)
    for name in sorted(dir(cls)):
        if not name.startswith(VALIDATOR_PREFIX) or name in declared or \
                not callable(getattr(cls, name, None)):
            continue
        undeclared = [attr for attr, spec in specs.items()
                      if spec.is_task and spec.validator is None]
        close = difflib.get_close_matches(name[len(VALIDATOR_PREFIX):],
                                          undeclared, n=1)
        raise UndeclaredValidator(
            "%s.%s looks like a validator but no command declares it "
            "(@task_command(..., validator=...))%s; rename it if it is a "
            "helper" % (cls.__qualname__, name,
                        "; did you mean it for %s?" % close[0]
                        if close else ""))


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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        check_validators(cls)

    def __init__(self, context):
        """Build the group; keep it free of work that changes the machine,
        which belongs in :meth:`start`."""
        self.context = context
        self.conf = context.conf
        self.hardware = context.hardware

    def start(self):
        """Start-up work, called once by the agent after every enabled
        extension was built and before it connects to an endpoint.

        The place for what changes the machine at start-up, such as
        recovering from a crash. The default does nothing. An exception
        stops the agent from starting (see
        :func:`teeth_agent.extensions.start_extensions`).
        """

    @classmethod
    def command_specs(cls):
        """Every exposed command of the class, by method name."""
        return commands.specs_of(cls)

    def commands(self):
        """``{wire name: (spec, bound method)}`` for this group."""
        return {"%s.%s" % (self.name, spec.name): (spec, getattr(self, attr))
                for attr, spec in self.command_specs().items()}

    def validator(self, spec):
        """The bound validator ``spec`` declares, or None."""
        if spec.validator is None:
            return None
        return getattr(self, spec.validator)

    def validate(self, spec, checked):
        """Run the command's validator, if it declares one.

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


#: Validate the raw params of a command against its spec
#: (:func:`teeth_agent.commands.check_params`).
check_params = commands.check_params
