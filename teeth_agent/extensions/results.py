"""Building blocks of the result declarations of task commands.

A task command declares the JSON Schema (draft 2020-12) of what it holds
in ``result`` when it completes, and in ``details`` when it fails with a
partial result, next to its parameters:
``@base.task_command(params={...}, result=SCHEMA)``.
:mod:`teeth_agent.cmd.schema` writes each declaration to
``docs/schema/agent/METHOD.task-result.json``, and the test suite checks
every result a task produces in the tests against it, so the declaration,
the file and the code cannot drift apart.

Where the code alone builds an object its schema is strict
(:func:`strict`); where a hardware manager's answer is passed on (a vendor
manager may add keys) it is open (:func:`open_object`), and its
``description`` says so.
"""

STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
ANY = {}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
#: What a hardware manager reports (any JSON value).
REPORTED = {"description": "as the hardware manager reports it"}


def nullable(schema):
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values):
    return {"enum": list(values)}


def _object(properties, required, extra, description):
    schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def strict(properties, required=(), description=None):
    """An object the code builds alone: no other keys."""
    return _object(properties, required, False, description)


def open_object(properties=None, required=(), description=None):
    """An object a hardware manager contributes to: other keys allowed."""
    return _object(properties or {}, required, True, description or (
        "Open: hardware managers (a vendor's too) may add keys."))


def array(items, **more):
    return dict({"type": "array", "items": items}, **more)
