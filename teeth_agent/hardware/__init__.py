"""Hardware managers: loading, ordering and dispatch.

The interface itself is documented in :mod:`teeth_agent.hardware.base`.
"""

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

INTERFACE_METHODS = tuple(
    name for name, member in vars(base.HardwareManager).items()
    if callable(member) and not name.startswith("_")
    and name not in ("evaluate_hardware_support", "initialize"))


class HardwareLoadError(Exception):
    """A hardware manager could not be loaded or does not fit the
    interface."""


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


def check_manager(manager):
    """Check at load time that ``manager`` fits the interface.

    Every interface method it overrides must accept the same parameters as
    the base class, so a typo or a stale signature is reported when the
    plugin is loaded, not when the method is first called in production.
    """
    cls = type(manager)
    if not isinstance(manager, base.HardwareManager):
        raise HardwareLoadError("%r is not a HardwareManager" % cls)
    if cls.evaluate_hardware_support is \
            base.HardwareManager.evaluate_hardware_support:
        raise HardwareLoadError("%s does not implement "
                                "evaluate_hardware_support()" % cls.__name__)
    for name in INTERFACE_METHODS:
        implementation = getattr(cls, name)
        reference = getattr(base.HardwareManager, name)
        if implementation is reference:
            continue
        expected = list(inspect.signature(reference).parameters)
        actual = list(inspect.signature(implementation).parameters)
        if actual != expected and not any(
                inspect.signature(implementation).parameters[p].kind
                == inspect.Parameter.VAR_KEYWORD for p in actual):
            raise HardwareLoadError(
                "%s.%s%s does not match the interface %s%s"
                % (cls.__name__, name, tuple(actual[1:]), name,
                   tuple(expected[1:])))


class Dispatcher:
    """Calls interface methods on the supporting managers in order.

    ``managers`` is a list of ``(support level, manager)``; the highest level
    is asked first (ties keep the given order).
    """

    def __init__(self, managers):
        ordered = sorted(enumerate(managers),
                         key=lambda item: (-int(item[1][0]), item[0]))
        self.managers = [(HardwareSupport(level), manager)
                         for _, (level, manager) in ordered]

    def _answers(self, method, args, kwargs):
        """Yield ``(name, answer)`` from each manager in order, skipping
        those that decline; any other exception becomes
        :class:`DispatchError`."""
        for _, manager in self.managers:
            func = getattr(manager, method, None)
            if func is None:
                continue
            try:
                answer = func(*args, **kwargs)
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

    def dispatch_all(self, method, *args, **kwargs):
        """Ask every manager; return ``[(name, answer)]``, highest level
        first, leaving out those that decline. Any other exception stops the
        dispatch as :class:`DispatchError`."""
        return list(self._answers(method, args, kwargs))

    def implementers(self, method):
        """Names of the managers that override ``method``, in dispatch
        order (the first is the one that will serve it unless it
        declines)."""
        reference = getattr(base.HardwareManager, method)
        return [manager.name for _, manager in self.managers
                if getattr(type(manager), method, None) is not reference]

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
