"""Hardware managers: loading, ordering and dispatch.

The interface itself is documented in :mod:`teeth_agent.hardware.base`.
Managers are checked against it when they are loaded, the way pluggy checks
hook implementations, so that the interface can grow without breaking
existing managers while a mistake in a manager is still found at once:

- an interface method a manager implements takes the interface's required
  positional parameters, by name and in order; of the optional (keyword)
  parameters it may take any subset, each with a default, and the
  dispatcher passes it only those it takes;
- a public method that is not part of the interface is an error (a
  misspelt ``update_firmwre`` would otherwise never be called); helpers
  are private, with a leading underscore.
"""

import difflib
import inspect
import logging

import stevedore

from teeth_agent.hardware import base

LOG = logging.getLogger(__name__)

NAMESPACE = "teeth_agent.hardware_managers"

HardwareSupport = base.HardwareSupport
HardwareManager = base.HardwareManager
IncompatibleHardwareMethodError = base.IncompatibleHardwareMethodError
HardwareManagerError = base.HardwareManagerError

#: Public methods of the interface that the dispatcher never calls.
LIFECYCLE_METHODS = ("evaluate_hardware_support", "initialize")


def interface_methods(interface=base.HardwareManager):
    """``{name: function}`` of every public method of ``interface`` (a
    :class:`base.HardwareManager` or a class deriving from it)."""
    methods = {}
    for klass in reversed(interface.__mro__):
        for name, member in vars(klass).items():
            if inspect.isfunction(member) and not name.startswith("_"):
                methods[name] = member
    return methods


INTERFACE_METHODS = tuple(name for name in interface_methods()
                          if name not in LIFECYCLE_METHODS)


class HardwareLoadError(Exception):
    """A hardware manager could not be loaded or does not fit the
    interface."""


class ManagerContractError(HardwareLoadError):
    """A manager class does not fit the interface (found at load time)."""


class UnknownManagerMethod(ManagerContractError):
    """A manager defines a public method the interface does not have."""


class ManagerSignatureMismatch(ManagerContractError):
    """A manager's method does not take the parameters of the interface
    method it implements."""


class DispatchError(HardwareManagerError):
    """A manager raised while serving a call; names the manager."""

    def __init__(self, manager, method, exc):
        self.manager = manager
        self.method = method
        self.original = exc
        super().__init__("hardware manager %s failed in %s: %s: %s"
                         % (manager, method, type(exc).__name__, exc))


class NoManagerError(HardwareManagerError):
    """No loaded manager implements the method (for these arguments)."""


def _suggestion(name, candidates):
    close = difflib.get_close_matches(name, candidates, n=1)
    return " (did you mean %s?)" % close[0] if close else ""


def _is_method(member):
    return inspect.isroutine(member) or isinstance(member, (staticmethod,
                                                            classmethod))


def _check_signature(cls, name, implementation, reference):
    """Raise :class:`ManagerSignatureMismatch` unless ``implementation``
    can be called as the dispatcher calls ``reference``."""
    where = "%s.%s" % (cls.__name__, name)
    if not inspect.isfunction(implementation):
        raise ManagerSignatureMismatch(
            "%s must be a plain method, not %r" % (where, implementation))
    spec = list(inspect.signature(reference).parameters.values())[1:]
    required = [p.name for p in spec if p.default is p.empty
                and p.kind == p.POSITIONAL_OR_KEYWORD]
    optional = [p.name for p in spec if p.name not in required]
    wanted = name + str(inspect.signature(reference)).replace(
        "(self, ", "(").replace("(self)", "()")
    params = list(inspect.signature(implementation).parameters.values())[1:]
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    for index, expected in enumerate(required):
        if index < len(positional):
            if positional[index].name != expected:
                raise ManagerSignatureMismatch(
                    "%s takes %s where the interface %s has %s"
                    % (where, positional[index].name, wanted, expected))
        elif not var_positional:
            raise ManagerSignatureMismatch(
                "%s does not take %s, which the interface %s requires"
                % (where, expected, wanted))
    for parameter in params:
        if parameter.kind in (parameter.VAR_POSITIONAL,
                              parameter.VAR_KEYWORD) or \
                parameter.name in required:
            continue
        if parameter.name not in optional:
            raise ManagerSignatureMismatch(
                "%s takes %s, which the interface %s does not define%s"
                % (where, parameter.name, wanted,
                   _suggestion(parameter.name, optional)))
        if parameter.default is parameter.empty or \
                parameter.kind == parameter.POSITIONAL_ONLY:
            raise ManagerSignatureMismatch(
                "%s must take the optional %s as a keyword with a default "
                "(the dispatcher leaves it out unless a caller gives it)"
                % (where, parameter.name))


def implements(manager, method, interface=base.HardwareManager):
    """True when the class of ``manager`` provides ``method`` itself, not
    the interface's declining default (inherited from a class of its own,
    such as the generic manager, counts: it answers with that code)."""
    return getattr(type(manager), method, None) is not \
        getattr(interface, method)


def check_manager(manager, interface=base.HardwareManager):
    """Check at load time that ``manager`` fits ``interface``.

    Raises :class:`ManagerContractError` (naming the class and method)
    for: a missing ``evaluate_hardware_support``; an interface method
    that does not take the interface's parameters (see the module
    docstring: required ones match, optional ones are a subset); a public
    method the interface does not have. So a typo or a stale signature is
    reported when the plugin is loaded, not when the method is first
    called in production, or never.
    """
    cls = type(manager)
    if not isinstance(manager, base.HardwareManager):
        raise HardwareLoadError("%r is not a HardwareManager" % cls)
    if cls.evaluate_hardware_support is \
            base.HardwareManager.evaluate_hardware_support:
        raise ManagerContractError("%s does not implement "
                                   "evaluate_hardware_support()"
                                   % cls.__name__)
    methods = interface_methods(interface)
    for name in dir(cls):
        if name.startswith("_"):
            continue
        member = inspect.getattr_static(cls, name)
        reference = methods.get(name)
        if reference is None:
            if _is_method(member):
                raise UnknownManagerMethod(
                    "%s.%s is not a method of the hardware-manager "
                    "interface%s; a helper must be private (a leading "
                    "underscore)" % (cls.__name__, name,
                                     _suggestion(name, list(methods))))
            continue
        if member is not reference:
            _check_signature(cls, name, member, reference)


def _keywords_taken(func):
    """The keyword names ``func`` takes, or None when it takes any."""
    names = set()
    for parameter in inspect.signature(func).parameters.values():
        if parameter.kind == parameter.VAR_KEYWORD:
            return None
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD,
                              parameter.KEYWORD_ONLY):
            names.add(parameter.name)
    return names


class Dispatcher:
    """Calls interface methods on the supporting managers in order.

    ``managers`` is a list of ``(support level, manager)``; the highest level
    is asked first (ties keep the given order).
    """

    def __init__(self, managers, interface=base.HardwareManager):
        ordered = sorted(enumerate(managers),
                         key=lambda item: (-int(item[1][0]), item[0]))
        self.managers = [(HardwareSupport(level), manager)
                         for _, (level, manager) in ordered]
        self.interface = interface
        self._taken = {}

    def _keywords(self, manager, method, kwargs):
        """The ``kwargs`` ``manager``'s ``method`` takes: an optional
        parameter added to the interface after the manager was written is
        left out for it."""
        if not kwargs:
            return kwargs
        key = (type(manager), method)
        if key not in self._taken:
            self._taken[key] = _keywords_taken(getattr(type(manager),
                                                       method))
        taken = self._taken[key]
        if taken is None:
            return kwargs
        return {name: value for name, value in kwargs.items()
                if name in taken}

    def _answers(self, method, args, kwargs):
        """Yield ``(name, answer)`` from each manager in order, skipping
        those that decline; any other exception becomes
        :class:`DispatchError`."""
        reference = getattr(self.interface, method, None)
        if kwargs and reference is not None:
            unknown = set(kwargs) - set(
                inspect.signature(reference).parameters)
            if unknown:
                # The caller's mistake, not a manager's.
                raise TypeError("%s takes no argument %s"
                                % (method, ", ".join(sorted(unknown))))
        for _, manager in self.managers:
            func = getattr(manager, method, None)
            if func is None:
                continue
            try:
                answer = func(*args, **self._keywords(manager, method,
                                                      kwargs))
            except base.IncompatibleHardwareMethodError:
                continue
            except Exception as exc:
                LOG.error("hardware manager %s failed in %s: %s",
                          manager.name, method, exc)
                raise DispatchError(manager.name, method, exc) from exc
            yield manager.name, answer

    def dispatch(self, method, *args, **kwargs):
        """The answer of the first manager that does not decline.

        Raises :class:`NoManagerError` when all decline and
        :class:`DispatchError` (naming the manager) when one fails.
        """
        for _, answer in self._answers(method, args, kwargs):
            return answer
        raise NoManagerError("no hardware manager implements %s" % method)

    def call(self, method, *args, **kwargs):
        """:meth:`dispatch`, except that the exception a manager raises
        propagates as it was raised (after being logged with the
        manager's name), not as :class:`DispatchError`.

        For callers whose handling depends on what failed: the extensions
        that write images report a checksum mismatch, a device that
        changed or a failed tool the same way whichever manager wrote.
        """
        try:
            return self.dispatch(method, *args, **kwargs)
        except DispatchError as exc:
            failure = exc
        # Raised outside the handler: the manager's exception keeps its
        # own cause and notes, without the wrapper as its context.
        raise failure.original

    def dispatch_all(self, method, *args, **kwargs):
        """Ask every manager; return ``[(name, answer)]``, highest level
        first, leaving out those that decline. Any other exception stops the
        dispatch as :class:`DispatchError`."""
        return list(self._answers(method, args, kwargs))

    def implementers(self, method):
        """Names of the managers that override ``method``, in dispatch
        order (the first is the one that will serve it unless it
        declines)."""
        return [manager.name for _, manager in self.managers
                if implements(manager, method, self.interface)]

    def describe(self):
        """``[{"name", "support", "class"}]`` in dispatch order."""
        return [{"name": manager.name, "support": level.name,
                 "class": "%s.%s" % (type(manager).__module__,
                                     type(manager).__qualname__)}
                for level, manager in self.managers]


def load_managers(conf, enabled=None):
    """Load, evaluate and initialise the installed hardware managers.

    ``enabled`` (default ``[hardware] enabled_managers``) limits which entry
    points load; empty means all. Managers that fail to load are logged
    loudly and stop the agent (a vendor manager missing on its own chassis
    would otherwise go unnoticed); managers that report ``NONE`` are dropped.
    """
    if enabled is None:
        enabled = conf.hardware.enabled_managers
    enabled = [name for name in (enabled or []) if name]
    failures = []

    def on_failure(manager, entrypoint, exc):
        LOG.error("hardware manager %s (%s) failed to load: %s",
                  entrypoint.name, entrypoint.value, exc)
        failures.append("%s: %s: %s" % (entrypoint.name,
                                        type(exc).__name__, exc))

    if enabled:
        manager = stevedore.NamedExtensionManager(
            NAMESPACE, enabled, name_order=True,
            on_load_failure_callback=on_failure)
        missing = set(enabled) - set(manager.names())
        if missing and not failures:
            failures.append("not installed: %s" % ", ".join(sorted(missing)))
    else:
        manager = stevedore.ExtensionManager(
            NAMESPACE, on_load_failure_callback=on_failure)
    if failures:
        raise HardwareLoadError("hardware manager(s) failed to load: "
                                + "; ".join(failures))
    return build_dispatcher(((ext.name, ext.plugin) for ext in manager), conf)


def build_dispatcher(plugins, conf):
    """Instantiate, check, evaluate and initialise ``(name, class)`` pairs.

    Tests and vendor test suites use this directly with their own classes.
    """
    supported = []
    for name, plugin in plugins:
        try:
            manager = plugin(conf)
            manager.name = name
            check_manager(manager)
            level = HardwareSupport(manager.evaluate_hardware_support())
        except HardwareLoadError:
            raise
        except Exception as exc:
            raise HardwareLoadError("hardware manager %s failed to evaluate "
                                    "its support: %s: %s"
                                    % (name, type(exc).__name__, exc)) from exc
        LOG.info("hardware manager %s: support %s", name, level.name)
        if level > HardwareSupport.NONE:
            supported.append((level, manager))
    if not supported:
        raise HardwareLoadError("no hardware manager supports this machine")
    dispatcher = Dispatcher(supported)
    for _, manager in dispatcher.managers:
        try:
            manager.initialize()
        except Exception as exc:
            raise HardwareLoadError("hardware manager %s failed to "
                                    "initialise: %s: %s"
                                    % (manager.name, type(exc).__name__,
                                       exc)) from exc
    return dispatcher
