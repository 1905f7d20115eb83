"""Command groups, loaded with stevedore from ``teeth_agent.extensions``."""

import logging

from importlib import metadata

import stevedore

from teeth_agent.extensions import base

LOG = logging.getLogger(__name__)

NAMESPACE = "teeth_agent.extensions"


class ExtensionLoadError(Exception):
    """An enabled extension is unknown or failed to load."""


class ExtensionStartError(ExtensionLoadError):
    """A loaded extension's start-up work (:meth:`base.Extension.start`)
    failed."""


def available_extensions():
    """Names of every installed extension (entry points in the namespace)."""
    return sorted({ep.name for ep in metadata.entry_points(group=NAMESPACE)})


def load_extensions(names, context):
    """Load the enabled extensions, in the order given.

    Returns ``{name: Extension}``. Raises :class:`ExtensionLoadError` naming
    the plugin and the reason when a name is unknown, when its code fails to
    import or to initialise, or when it is not an :class:`base.Extension`.
    """
    names = [name.strip() for name in names if name.strip()]
    available = available_extensions()
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ExtensionLoadError(
            "unknown extension(s) %s in enabled_extensions; available: %s"
            % (", ".join(unknown), ", ".join(available) or "none"))
    failures = []

    def on_failure(manager, entrypoint, exc):
        LOG.error("extension %s (%s) failed to load: %s", entrypoint.name,
                  entrypoint.value, exc)
        failures.append("%s (%s): %s: %s" % (entrypoint.name,
                                             entrypoint.value,
                                             type(exc).__name__, exc))

    manager = stevedore.NamedExtensionManager(
        NAMESPACE, names, invoke_on_load=False, name_order=True,
        on_load_failure_callback=on_failure)
    if failures:
        raise ExtensionLoadError("extension failed to load: "
                                 + "; ".join(failures))
    return instantiate(((ext.name, ext.plugin) for ext in manager), context)


def instantiate(plugins, context):
    """Check and build extension objects from ``(name, class)`` pairs.

    Checking happens here, at load time: the class must derive from
    :class:`base.Extension` and expose at least one command.
    """
    loaded = {}
    for name, plugin in plugins:
        if not (isinstance(plugin, type) and issubclass(plugin,
                                                        base.Extension)):
            raise ExtensionLoadError(
                "extension %s: %r is not a teeth_agent Extension class"
                % (name, plugin))
        if not plugin.command_specs():
            raise ExtensionLoadError("extension %s exposes no command" % name)
        try:
            extension = plugin(context)
        except Exception as exc:
            LOG.exception("extension %s failed to initialise", name)
            raise ExtensionLoadError("extension %s failed to initialise: "
                                     "%s: %s" % (name, type(exc).__name__,
                                                 exc)) from exc
        extension.name = name
        loaded[name] = extension
        LOG.info("loaded extension %s: %s", name,
                 ", ".join(sorted(extension.commands())))
    return loaded


def start_extensions(loaded):
    """Run each loaded extension's :meth:`base.Extension.start`, in order.

    Called once by the agent after every extension was built and before it
    serves commands. Raises :class:`ExtensionStartError` naming the
    extension when one fails; those after it are not started.
    """
    for name, extension in loaded.items():
        try:
            extension.start()
        except Exception as exc:
            LOG.exception("extension %s failed to start", name)
            raise ExtensionStartError("extension %s failed to start: %s: %s"
                                      % (name, type(exc).__name__,
                                         exc)) from exc
