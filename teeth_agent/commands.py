"""Command tables: the methods a server answers, declared once.

Every server of the project answers commands from a :class:`CommandTable`:
the agent (its core methods and its extensions' commands), the endpoint
(what agents send it) and the endpoint's control socket. A table maps each
wire name to a :class:`CommandSpec`, which declares the command's
parameters with :mod:`teeth_agent.params`, and to a handler.
:meth:`CommandTable.dispatch` answers ``UnknownMethod`` for a name the
table does not hold and ``InvalidParams`` (naming the parameter by its
dotted path) before the handler runs; the handler gets the checked params.

A server declares its methods by decorating them with :func:`command` and
builds its table with :meth:`CommandTable.of`::

    class Server:
        @commands.command(params={"agent_id": params.String(required=True)})
        def forget(self, connection, params):
            ...

        def __init__(self):
            self.commands = commands.CommandTable.of(self)

        def _dispatch(self, connection, command):
            return self.commands.dispatch(command.method, command.params,
                                          connection)

Extension commands are declared with the decorators of
:mod:`teeth_agent.extensions.base`, which build the same
:class:`CommandSpec`.
"""

import dataclasses
import inspect
import typing

from teeth_agent import params as params_mod
from teeth_agent import protocol

#: The attribute of a decorated method that holds its :class:`CommandSpec`.
SPEC_ATTRIBUTE = "_teeth_command"


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """How a command is exposed: its name, parameters and kind.

    ``params`` maps each parameter's name to its
    :class:`teeth_agent.params.Param`. ``extra`` is what the command does
    with parameters it does not declare: False refuses them
    (``InvalidParams``), True keeps them unchecked, a Param checks each.

    ``is_task``, ``exclusive`` and ``validator`` describe an extension's
    task command (see :func:`teeth_agent.extensions.base.task_command`).
    ``result`` is the JSON Schema of what a task command's task holds in
    ``result`` when it completes (and in ``details`` when it fails with a
    partial result), or None when the command does not declare it (see
    :mod:`teeth_agent.extensions.results`).
    ``session`` is for servers that track a session on each connection:
    what the connection must have done before the command may run (the
    endpoint's values are in :mod:`teeth_agent.endpoint`); None means at
    any time.
    """

    name: str
    params: dict
    is_task: bool = False
    exclusive: bool = False
    doc: typing.Optional[str] = None
    validator: typing.Optional[str] = None
    extra: typing.Any = False
    session: typing.Optional[str] = None
    result: typing.Optional[dict] = None

    def describe(self):
        return {"task": self.is_task, "exclusive": self.exclusive,
                "params": {name: param.describe()
                           for name, param in self.params.items()}}


def check_params(spec, raw):
    """Validate the raw params of a command against its spec; returns the
    checked params (defaults filled in)."""
    if not isinstance(raw, dict):
        raise protocol.InvalidParams("params must be an object",
                                     details={"param": "params"})
    return params_mod.validate_fields(spec.params, raw, extra=spec.extra)


def spec_of(member):
    """The :class:`CommandSpec` of a decorated method, or None."""
    return getattr(member, SPEC_ATTRIBUTE, None)


def specs_of(cls):
    """Every decorated method of ``cls``: ``{attribute name: spec}``."""
    specs = {}
    for attribute in dir(cls):
        spec = spec_of(getattr(cls, attribute, None))
        if spec is not None:
            specs[attribute] = spec
    return specs


def command(params=None, name=None, extra=False, session=None):
    """Expose a method of a server in its :class:`CommandTable`.

    The method is called as ``method(self, *context, params)``: the
    context arguments are those the server passes to
    :meth:`CommandTable.dispatch`, ``params`` the checked params (a dict).
    ``name`` is the wire name (the method's name unless given); ``params``,
    ``extra`` and ``session`` are those of :class:`CommandSpec`.
    """
    def wrap(func):
        spec = CommandSpec(name or func.__name__, dict(params or {}),
                           doc=inspect.getdoc(func), extra=extra,
                           session=session)
        setattr(func, SPEC_ATTRIBUTE, spec)
        return func
    return wrap


@dataclasses.dataclass(frozen=True)
class Entry:
    """One command of a table: its spec and its handler.

    ``checked`` handlers get the params checked against the spec; the
    others get them as they came (the handler checks them itself, e.g.
    after looking at them for a repeated task).
    """

    spec: CommandSpec
    handler: typing.Callable
    checked: bool = True

    def run(self, raw, *context):
        if self.checked:
            raw = check_params(self.spec, raw)
        return self.handler(*context, raw)


class CommandTable:
    """The commands one server answers, by wire name."""

    def __init__(self):
        self._entries = {}

    @classmethod
    def of(cls, server):
        """A table of the methods of ``server`` decorated with
        :func:`command`."""
        table = cls()
        for attribute, spec in sorted(specs_of(type(server)).items()):
            table.add(spec.name, spec, getattr(server, attribute))
        return table

    def add(self, name, spec, handler, checked=True):
        """Serve ``name`` with ``handler`` (see :class:`Entry`);
        ValueError when the name is taken."""
        if name in self._entries:
            raise ValueError("method %s is defined twice" % name)
        self._entries[name] = Entry(spec, handler, checked)

    def __contains__(self, name):
        return name in self._entries

    def __len__(self):
        return len(self._entries)

    def names(self):
        """The wire names, sorted."""
        return sorted(self._entries)

    def spec(self, name):
        """The spec of ``name``, or None when the table has no such
        command."""
        entry = self._entries.get(name)
        return entry.spec if entry is not None else None

    @staticmethod
    def unknown(name):
        """The error for a method no table holds."""
        return protocol.UnknownMethod("unknown method %s" % name,
                                      details={"method": name})

    def dispatch(self, name, raw, *context):
        """Run command ``name`` with the ``raw`` params: the handler gets
        ``*context`` and the checked params. Raises ``UnknownMethod`` and
        ``InvalidParams`` before the handler runs."""
        entry = self._entries.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry.run(raw, *context)
