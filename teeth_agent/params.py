"""Declarative parameter checking for commands.

A command declares its parameters with these types; the agent validates a
command's ``params`` against them before any work starts, and answers
``InvalidParams`` naming the offending parameter (as a dotted path, e.g.
``images[2].urls[0]``) when one is missing, of the wrong type, out of range
or unknown.
"""

import re

from teeth_agent.fetch import urls
from teeth_agent import protocol

_MISSING = object()


class _Omit:
    def __repr__(self):
        return "OMIT"


#: The ``default`` of an optional parameter that is left out of the checked
#: params when it is missing (instead of being filled in).
OMIT = _Omit()


def invalid(path, problem):
    return protocol.InvalidParams("%s: %s" % (path, problem),
                                  details={"param": path})


class Param:
    """Base of every parameter type.

    ``required`` parameters must be present; optional ones get ``default``
    (``None`` unless given; :data:`OMIT` leaves a missing one out of the
    checked params). ``nullable`` accepts an explicit ``null``.

    ``problem`` replaces the text of every refusal of this parameter
    itself (missing, null, wrong type, out of range; not those of the
    items of a list or the fields of an object): for a parameter whose
    error message is part of a contract, e.g. ``"is required"``.
    """

    kind = "value"

    def __init__(self, required=False, default=None, nullable=False,
                 doc=None, problem=None):
        self.required = required
        self.default = default
        self.nullable = nullable
        self.doc = doc
        self.problem = problem

    def validate(self, value, path):
        try:
            if value is None:
                if self.nullable:
                    return None
                raise invalid(path, "must not be null")
            return self.check(value, path)
        except protocol.InvalidParams as exc:
            if self.problem is None or \
                    (exc.details or {}).get("param") != path:
                raise
            raise invalid(path, self.problem) from None

    def check(self, value, path):
        return value

    def describe(self):
        return {"type": self.kind, "required": self.required}


class String(Param):
    kind = "string"

    """A string; ``max_length`` None sets no upper bound.

    ``pattern_problem`` is what a refusal by ``pattern`` says, in the
    operator's words (never the regular expression itself).
    """

    def __init__(self, max_length=4096, min_length=0, pattern=None,
                 choices=None, pattern_problem="is not in the expected form",
                 **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.min_length = min_length
        self.pattern = re.compile(pattern) if pattern else None
        self.pattern_problem = pattern_problem
        self.choices = tuple(choices) if choices else None

    def check(self, value, path):
        if not isinstance(value, str):
            raise invalid(path, "must be a string")
        if self.max_length is not None and len(value) > self.max_length:
            raise invalid(path, "longer than %d characters" % self.max_length)
        if len(value) < self.min_length:
            raise invalid(path, "shorter than %d characters"
                          % self.min_length)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise invalid(path, self.pattern_problem)
        if self.choices is not None and value not in self.choices:
            raise invalid(path, "must be one of %s" % ", ".join(self.choices))
        return value


class Identifier(String):
    """An id chosen by the server (task ids).

    Any printable text up to 256 characters, except what could climb out of
    a directory if the id were ever used in a path: no ``/`` or ``\\``, no
    control characters, no leading ``.``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 256)
        kwargs.setdefault("min_length", 1)
        super().__init__(pattern=r"[^/\\\x00-\x1f\x7f.][^/\\\x00-\x1f\x7f]*",
                         pattern_problem="must not start with a dot or "
                                         "hold a slash, a backslash or a "
                                         "control character", **kwargs)


class UUID(String):
    def __init__(self, **kwargs):
        super().__init__(
            pattern=r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                    r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}",
            pattern_problem="is not a UUID (32 hexadecimal digits, dashes "
                            "allowed)", **kwargs)


class Integer(Param):
    kind = "integer"

    def __init__(self, minimum=None, maximum=None, **kwargs):
        super().__init__(**kwargs)
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(path, "must be an integer")
        if self.minimum is not None and value < self.minimum:
            raise invalid(path, "must be at least %s" % self.minimum)
        if self.maximum is not None and value > self.maximum:
            raise invalid(path, "must be at most %s" % self.maximum)
        return value


class Number(Integer):
    kind = "number"

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(path, "must be a number")
        if self.minimum is not None and value < self.minimum:
            raise invalid(path, "must be at least %s" % self.minimum)
        if self.maximum is not None and value > self.maximum:
            raise invalid(path, "must be at most %s" % self.maximum)
        return value


class Boolean(Param):
    kind = "boolean"

    def check(self, value, path):
        if not isinstance(value, bool):
            raise invalid(path, "must be true or false")
        return value


class Regex(String):
    """A regular expression the agent will match against inventory text."""

    def check(self, value, path):
        value = super().check(value, path)
        try:
            re.compile(value)
        except re.error as exc:
            raise invalid(path, "is not a valid regular expression: %s"
                          % exc) from None
        return value


class URL(String):
    """A URL the agent may download from (:func:`teeth_agent.fetch.urls.check`:
    http or https, with a host)."""

    def check(self, value, path):
        value = super().check(value, path)
        try:
            urls.check(value)
        except urls.InvalidURL as exc:
            raise invalid(path, exc.reason) from None
        return value


class DevicePath(String):
    """A block device path under /dev (globbing characters refused)."""

    def __init__(self, **kwargs):
        super().__init__(pattern=r"/dev/[A-Za-z0-9._/:-]+", max_length=256,
                         pattern_problem="is not a device path: /dev/ then "
                                         "letters, digits and ._/:- only "
                                         "(e.g. /dev/sda)", **kwargs)

    def check(self, value, path):
        value = super().check(value, path)
        if {".", ".."} & set(value.split("/")):
            raise invalid(path, "is not a plain device path")
        return value


class List(Param):
    kind = "list"

    def __init__(self, item, min_items=0, max_items=1024, unique=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.item = item
        self.min_items = min_items
        self.max_items = max_items
        self.unique = unique

    def check(self, value, path):
        if not isinstance(value, list):
            raise invalid(path, "must be a list")
        if len(value) < self.min_items:
            raise invalid(path, "needs at least %d item(s)" % self.min_items)
        if len(value) > self.max_items:
            raise invalid(path, "has more than %d items" % self.max_items)
        checked = [self.item.validate(item, "%s[%d]" % (path, index))
                   for index, item in enumerate(value)]
        if self.unique:
            seen = set()
            for index, item in enumerate(checked):
                key = repr(item)
                if key in seen:
                    raise invalid("%s[%d]" % (path, index), "is repeated")
                seen.add(key)
        return checked


class Object(Param):
    """An object with declared fields; unknown keys are refused unless
    ``extra`` is a Param that checks them (or True to accept anything)."""

    kind = "object"

    def __init__(self, fields=None, extra=False, **kwargs):
        super().__init__(**kwargs)
        self.fields = dict(fields or {})
        self.extra = extra

    def check(self, value, path):
        if not isinstance(value, dict):
            raise invalid(path, "must be an object")
        return validate_fields(self.fields, value, path, self.extra)


class Map(Param):
    """An object used as a dictionary: keys and values of one type each."""

    kind = "map"

    def __init__(self, value, key=None, max_items=1024, **kwargs):
        super().__init__(**kwargs)
        self.value = value
        self.key = key or String(max_length=256, min_length=1)
        self.max_items = max_items

    def check(self, value, path):
        if not isinstance(value, dict):
            raise invalid(path, "must be an object")
        if len(value) > self.max_items:
            raise invalid(path, "has more than %d keys" % self.max_items)
        return {self.key.validate(key, "%s key %r" % (path, key[:40])):
                self.value.validate(item, "%s.%s" % (path, key))
                for key, item in value.items()}


class Any(Param):
    kind = "any"


def validate_fields(fields, values, path="", extra=False):
    """Check ``values`` (a dict) against ``fields`` (name -> Param).

    Returns a new dict with every declared field, defaults filled in
    (except those whose default is :data:`OMIT`). Fields are checked in
    the order they are declared. With ``extra`` (True, or a Param checking
    each undeclared value) undeclared keys are kept, and the result keeps
    the order of ``values``; without it they are refused.
    """
    prefix = path + "." if path else ""
    for name in values:
        if name not in fields and extra is False:
            raise invalid(prefix + str(name), "unknown parameter")
    checked = {}
    for name, param in fields.items():
        value = values.get(name, _MISSING)
        if value is _MISSING:
            if param.required:
                raise invalid(prefix + name, param.problem or "is required")
            if param.default is not OMIT:
                checked[name] = param.default
            continue
        checked[name] = param.validate(value, prefix + name)
    if extra is not False:
        for name, value in values.items():
            if name in fields:
                continue
            checked[name] = value if extra is True else \
                extra.validate(value, prefix + str(name))
        # The caller's order first, then the defaults filled in.
        checked = {**{name: checked[name] for name in values},
                   **{name: value for name, value in checked.items()
                      if name not in values}}
    return checked
