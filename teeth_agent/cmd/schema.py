"""The JSON Schemas of the wire contract, made from the code's declarations.

``docs/schema/`` holds a JSON Schema (draft 2020-12) for every message
(command, success and error response, fatal error) and, for every method of
the three servers (the agent, the endpoint, the endpoint's control socket),
one for its parameters and one for its result. The parameter schemas are
derived here from the :class:`teeth_agent.commands.CommandSpec` of each
method (the same declarations that check the params at run time); the
message schemas from :mod:`teeth_agent.protocol` (its version and error
types); the result schemas of the servers' own methods are declared in
:data:`RESULTS`, and what a task of an extension's command holds in its
``result`` (``agent/METHOD.task-result.json``) is the command's own
declaration (``@base.task_command(result=...)``, next to its params). The
unit tests check real results against them: the control socket's and the
endpoint's answers (tests/unit/endpoint/test_control_schema.py), and every
task result any test produces in-process (tests/conftest.py). ``python -m
teeth_agent.cmd.schema DIRECTORY`` writes the files;
``tests/unit/test_schema.py`` fails when the files and the code differ.
"""

import importlib.metadata
import json
import os
import sys

from teeth_agent import commands
from teeth_agent.endpoint import control
from teeth_agent.endpoint import identity as endpoint_identity
from teeth_agent.endpoint import server as endpoint_server
from teeth_agent import params as params_mod
from teeth_agent import protocol
from teeth_agent.runtime import agent as agent_mod
from teeth_agent import tasks as tasks_mod

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://teeth-agent.invalid/schema/"
#: The entry-point group of the agent's command groups; only the project's
#: own (those in ``teeth_agent``) are part of the contract.
EXTENSION_GROUP = "teeth_agent.extensions"


class SchemaError(Exception):
    """A declaration this module cannot turn into a schema (a bug)."""


def _ecma_pattern(pattern):
    """A Python ``fullmatch`` pattern as an anchored JSON Schema pattern."""
    return "^(?:%s)$" % pattern


def param_schema(param):
    """The JSON Schema of one :class:`teeth_agent.params.Param`."""
    schema = _param_body(param)
    if param.doc:
        schema["description"] = param.doc
    if param.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
        if param.doc:
            schema["description"] = param.doc
    default = param.default
    if default is not None and default is not params_mod.OMIT and \
            not param.required:
        schema["default"] = default
    return schema


def _string(param, schema):
    if param.max_length is not None:
        schema["maxLength"] = param.max_length
    if param.min_length:
        schema["minLength"] = param.min_length
    if param.pattern is not None:
        schema["pattern"] = _ecma_pattern(param.pattern.pattern)
    if param.choices is not None:
        schema["enum"] = list(param.choices)
    return schema


def _param_body(param):
    # Subclasses before their bases: a URL is a String with more rules.
    if isinstance(param, params_mod.URL):
        schema = _string(param, {"type": "string", "format": "uri"})
        schema["pattern"] = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+"
        return schema
    if isinstance(param, params_mod.Regex):
        return _string(param, {"type": "string", "format": "regex"})
    if isinstance(param, params_mod.String):
        return _string(param, {"type": "string"})
    if isinstance(param, params_mod.Boolean):
        return {"type": "boolean"}
    if isinstance(param, (params_mod.Integer, params_mod.Number)):
        schema = {"type": "number" if isinstance(param, params_mod.Number)
                  else "integer"}
        if param.minimum is not None:
            schema["minimum"] = param.minimum
        if param.maximum is not None:
            schema["maximum"] = param.maximum
        return schema
    if isinstance(param, params_mod.List):
        schema = {"type": "array", "items": param_schema(param.item),
                  "maxItems": param.max_items}
        if param.min_items:
            schema["minItems"] = param.min_items
        if param.unique:
            schema["uniqueItems"] = True
        return schema
    if isinstance(param, params_mod.Object):
        return fields_schema(param.fields, param.extra)
    if isinstance(param, params_mod.Map):
        return {"type": "object", "maxProperties": param.max_items,
                "propertyNames": param_schema(param.key),
                "additionalProperties": param_schema(param.value)}
    if type(param) in (params_mod.Any, params_mod.Param):
        return {}
    raise SchemaError("no schema for the parameter type %s"
                      % type(param).__name__)


def fields_schema(fields, extra=False):
    """The schema of an object with the declared ``fields``."""
    schema = {"type": "object",
              "properties": {name: param_schema(param)
                             for name, param in fields.items()}}
    required = [name for name, param in fields.items() if param.required]
    if required:
        schema["required"] = required
    if extra is False:
        schema["additionalProperties"] = False
    elif extra is not True:
        schema["additionalProperties"] = param_schema(extra)
    return schema


def extension_classes():
    """The project's own command groups: ``{group name: class}``."""
    found = {}
    for entry in importlib.metadata.entry_points(group=EXTENSION_GROUP):
        if entry.value.split(".")[0] == "teeth_agent":
            found[entry.name] = entry.load()
    return dict(sorted(found.items()))


def method_specs():
    """Every method of the contract: ``{server: {wire name: spec}}`` with
    the servers ``agent``, ``endpoint`` and ``control``."""
    agent = {spec.name: spec
             for spec in commands.specs_of(agent_mod.Agent).values()}
    for group, cls in extension_classes().items():
        for spec in cls.command_specs().values():
            agent["%s.%s" % (group, spec.name)] = spec
    servers = {
        "agent": agent,
        "endpoint": {spec.name: spec for spec in commands.specs_of(
            endpoint_server.Endpoint).values()},
        "control": {spec.name: spec for spec in commands.specs_of(
            control.ControlServer).values()},
    }
    return {server: dict(sorted(specs.items()))
            for server, specs in servers.items()}


def _ref(name):
    return {"$ref": BASE_ID + name}


_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
_TASK_STATES = list(tasks_mod.TERMINAL) + [tasks_mod.RUNNING]


def _object(required, properties, extra=True):
    schema = {"type": "object", "required": list(required),
              "properties": properties}
    if not extra:
        schema["additionalProperties"] = False
    return schema


#: A task's status object (see "Status objects" in docs/protocol.md):
#: what a task command answers and what ``task_status`` carries.
TASK_STATUS = {
    "type": "object",
    "required": ["task_id", "state"],
    "properties": {
        "task_id": _STRING, "method": _STRING,
        "state": {"enum": sorted(_TASK_STATES)},
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "eta": {"type": ["number", "null"]},
        "msg": _STRING, "details": _OBJECT, "result": _OBJECT,
    },
    "allOf": [
        {"if": {"properties": {"state": {"const": "error"}}},
         "then": {"required": ["msg"]}},
        {"if": {"properties": {"state": {"const": "complete"}}},
         "then": {"required": ["result"]}},
    ],
    "$defs": {
        # What a result or details too large for the line limit is sent
        # as (teeth_agent.tasks.shrink_status).
        "truncated": _object(
            ["truncated", "size", "limit", "msg"],
            {"truncated": {"const": True},
             "size": {"type": "integer", "minimum": 0},
             "limit": {"type": "integer", "minimum": 0}, "msg": _STRING},
            extra=False),
    },
}

_SUMMARIES = {"type": "array", "items": _object(
    ["task_id", "method", "state"],
    {"task_id": _STRING, "method": _STRING,
     "state": {"enum": sorted(_TASK_STATES)}, "percent": {"type": "number"},
     "msg": _STRING})}
_EXTENSIONS = {"type": "object", "additionalProperties": {
    "type": "array", "items": _STRING}}
_EMPTY = {"type": "object", "maxProperties": 0}

_NUMBER_OR_NULL = {"type": ["number", "null"]}

#: One agent of the control socket's ``agents`` page
#: (``Agent.describe`` of :mod:`teeth_agent.endpoint.server`, or, for an
#: agent this process does not hold, ``describe_stored`` of
#: :mod:`teeth_agent.endpoint.directory` from its database row): the full
#: entry, the one whose tasks are summaries (``task_summaries``) or, when
#: even that is too large, its identity and link only (``truncated``).
AGENT_ENTRY = _object(
    ["agent_id", "connected", "peer", "tls"],
    {"agent_id": _STRING, "connected": {"type": "boolean"},
     "peer": {"type": ["string", "null"]},
     "tls": {"type": "boolean"},
     # Null: recorded by an older endpoint that kept no identity kind.
     "identity": {"enum": list(endpoint_identity.IDENTITIES) + [None]},
     "connected_at": _NUMBER_OR_NULL, "last_seen": _NUMBER_OR_NULL,
     "first_seen": {"type": "number"},
     "source": {"enum": ["process", "database"]},
     "process": {"type": ["string", "null"]},
     # As the agent sent them in its handshake (any JSON value).
     "agent_version": {}, "hardware": {}, "extensions": {},
     "tasks": {"type": "array", "items": _OBJECT},
     "log_records": {"type": ["integer", "null"], "minimum": 0},
     "violations": {"type": "array", "items": _STRING},
     "task_summaries": {"const": True},
     "truncated": {"const": True}}, extra=False)

#: The result of every method, by server and wire name. A task command's
#: result is its status object (``running`` when it starts, the current
#: state for a repeated ``task_id``); what its task holds in ``result`` is
#: the command's own declaration (:func:`task_result_schema`).
RESULTS = {
    "agent": {
        "ping": {"type": "object",
                 "description": "The params of the command, unchanged."},
        "status": _object(
            ["agent_id", "agent_version", "uptime", "extensions",
             "hardware_manager", "tasks", "hostname", "pid", "endpoint"],
            {"agent_id": _STRING, "agent_version": _STRING,
             "uptime": {"type": "number", "minimum": 0},
             "extensions": _EXTENSIONS,
             "hardware_manager": {"type": "array", "items": _object(
                 ["name", "support"],
                 {"name": _STRING, "class": _STRING,
                  "support": {"enum": ["GENERIC", "MAINLINE",
                                       "SERVICE_PROVIDER"]}})},
             "tasks": _SUMMARIES,
             "tasks_omitted": {"type": "integer", "minimum": 1},
             "hostname": _STRING, "pid": {"type": "integer"},
             "endpoint": {"type": ["string", "null"]}}),
    },
    "endpoint": {
        "ping": {"type": "object",
                 "description": "The params of the command, unchanged."},
        "handshake": _object(
            ["agent_id", "protocol_version", "max_line_length"],
            {"agent_id": _STRING,
             "protocol_version": {"enum": list(protocol.SUPPORTED_VERSIONS)},
             "max_line_length": {"type": "integer", "minimum": 1},
             "session_token": _STRING}),
        "log": _EMPTY,
        "task_status": _EMPTY,
    },
    "control": {
        "ping": {"type": "object",
                 "description": "The params of the command, unchanged."},
        "agents": _object(
            ["agents", "total", "next", "port"],
            {"agents": {"type": "array", "items": AGENT_ENTRY},
             "total": {"type": "integer", "minimum": 0},
             "next": {"type": ["string", "null"]},
             "port": {"type": "integer"},
             # Why the page lists only this process's agents.
             "partial": _STRING}, extra=False),
        "forget": _object(["forgotten"], {"forgotten": _STRING}, extra=False),
        "call": _object(["result"], {"result": {}}, extra=False),
        "watch_task": dict(_object(
            ["status", "terminal"],
            {"status": {"anyOf": [_ref("task-status.json"),
                                  {"type": "null"}]},
             "terminal": {"type": "boolean"},
             "gone": {"const": True}}, extra=False),
            description="The final status (terminal true), or the current "
                        "one when the wait ended first (terminal false; "
                        "null when the endpoint has none). A forwarded "
                        "watch_task whose agent left the process it reached "
                        "answers {\"status\": null, \"gone\": true, "
                        "\"terminal\": false}."),
    },
}


def task_result_name(name):
    """The file of what task command ``name``'s task holds in
    ``result``."""
    return "agent/%s.task-result.json" % name


def task_result_schema(name, spec):
    """What the task of command ``name`` holds in ``result`` when it
    completes (and in ``details`` when it fails with a partial result):
    the command's own declaration (``@base.task_command(result=...)``)."""
    if spec.result is None:
        raise SchemaError("no result schema declared for the task command "
                          "%s (@base.task_command(result=...))" % name)
    return spec.result


def _task_status_of(name):
    """The status object of a task of command ``name``: its ``result``
    and ``details`` are the declared result (or, when too large for the
    line limit, the stand-in that replaces them)."""
    either = {"anyOf": [_ref(task_result_name(name)),
                        _ref("task-status.json#/$defs/truncated")]}
    return {"allOf": [_ref("task-status.json"),
                      {"properties": {"method": {"const": name},
                                      "result": either,
                                      "details": either}}]}


def result_schema(server, name, spec):
    """The result schema of one method (a task command's is its status
    object)."""
    if spec.is_task:
        return _task_status_of(name)
    try:
        return RESULTS[server][name]
    except KeyError:
        raise SchemaError("no result schema declared for %s method %s"
                          % (server, name)) from None


def _error_object():
    errors = sorted(protocol._ERRORS_BY_TYPE.values(),
                    key=lambda cls: -cls.code)
    return {
        "type": "object",
        "required": ["type", "code", "msg"],
        "properties": {
            "type": {"type": "string",
                     "description": "One of: %s; a receiver MUST accept "
                                    "other names too." % ", ".join(
                                        cls.type for cls in errors)},
            "code": {"type": "integer"},
            "msg": _STRING,
            "details": _OBJECT,
        },
        "examples": [{"type": cls.type, "code": cls.code, "msg": "..."}
                     for cls in errors],
    }


def message_schemas():
    """The four messages of docs/protocol.md "Messages", and a task's
    status object: ``{file name: schema}``."""
    version = {"enum": list(protocol.SUPPORTED_VERSIONS)}
    return {
        "command.json": _object(
            ["version", "id", "method"],
            {"version": version, "id": _STRING,
             "method": {"type": "string", "minLength": 1},
             "params": _OBJECT}),
        "response.json": _object(
            ["id", "result"],
            {"version": version, "id": _STRING, "result": _OBJECT}),
        "error-response.json": _object(
            ["id", "error"],
            {"version": version, "id": _STRING, "error": _error_object()}),
        "fatal-error.json": _object(
            ["fatal_error"], {"fatal_error": _STRING}),
        "task-status.json": TASK_STATUS,
    }


def _finish(name, schema, title):
    return {"$schema": DIALECT, "$id": BASE_ID + name, "title": title,
            **schema}


def documents():
    """Every schema file: ``{relative path: document}``."""
    files = {}
    for name, schema in message_schemas().items():
        files[name] = _finish(name, schema, "teeth-agent %s %s" % (
            protocol.VERSION, name[:-len(".json")].replace("-", " ")))
    for server, specs in method_specs().items():
        for name, spec in specs.items():
            stem = "%s/%s" % (server, name)
            files[stem + ".params.json"] = _finish(
                stem + ".params.json", fields_schema(spec.params,
                                                     spec.extra),
                "params of %s (served by the %s)" % (name, server))
            files[stem + ".result.json"] = _finish(
                stem + ".result.json", result_schema(server, name, spec),
                "result of %s (served by the %s)" % (name, server))
            if spec.is_task:
                path = task_result_name(name)
                files[path] = _finish(
                    path, task_result_schema(name, spec),
                    "what a task of %s holds in result (served by the %s)"
                    % (name, server))
    return dict(sorted(files.items()))


def render(document):
    """A schema file's text: sorted keys, two-space indents."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(directory):
    """Write every schema under ``directory``; returns the paths."""
    written = []
    for relative, document in documents().items():
        path = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(render(document))
        written.append(path)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m teeth_agent.cmd.schema DIRECTORY",
              file=sys.stderr)
        return 2
    for path in write(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
