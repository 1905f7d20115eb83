"""Strict configuration: refuse what oslo.config would silently ignore.

oslo.config reads every section and option of a configuration file but
only looks up the ones that are registered, so a misspelt name
(``[power] simulat = true``, ``[hardware] device_includes``) is ignored and
the option keeps its default -- for this agent, really rebooting a machine
or seeing every disk. And a bad value only fails when the option is first
read, deep inside start-up, as a traceback.

:func:`load` parses the command line and the configuration files, then
refuses to go on, with a :class:`ConfigError` whose lines name the file,
section and option (and the closest known name), when

- a file or directory named on the command line is missing, unreadable or
  not an ini file (:class:`ConfigSourceError`);
- a section or option is not known (:class:`UnknownOptionError`);
- a value does not fit its option (:class:`BadValueError`).

The console scripts catch :class:`ConfigError`, print its lines and exit
with status 2 (:func:`exit_status`).

What is *known* is what ``oslo-config-validator`` knows: the option data
that the sample generator builds from the ``oslo.config.opts`` namespaces
(``teeth_agent`` and ``oslo.log`` for the agent, ``teeth_agent.endpoint``
and ``oslo.log`` for the endpoint, plus the namespaces of installed plugin
distributions), with each option's name, ``dest`` and deprecated names.
See :class:`KnownOptions` for how that data is obtained.
"""

# Size: 606 lines, over the ~500 guideline: strict configuration is one rule
# (no unknown option from any source) with its error types and namespace
# discovery.

import argparse
import collections
import contextlib
import difflib
import glob
import importlib.metadata
import io
import json
import os
import re
import sys

from oslo_config import cfg
from oslo_config import generator


#: Namespaces (``oslo.config.opts`` entry points) whose options
#: ``teeth-agent`` accepts, besides those of installed plugins.
AGENT_NAMESPACES = ("teeth_agent", "oslo.log")

#: Namespaces whose options ``teeth-endpoint`` accepts.
ENDPOINT_NAMESPACES = ("teeth_agent.endpoint", "oslo.log")

#: Entry-point groups that make a distribution an agent plugin: its own
#: ``oslo.config.opts`` namespaces are accepted by the agent too.
PLUGIN_ENTRY_POINT_GROUPS = ("teeth_agent.hardware_managers",
                             "teeth_agent.extensions")

_OWN_DISTRIBUTION = "teeth-agent"

#: One option or section that no namespace defines: where it was found
#: (``source``), the ``section``, the ``option`` (None for a whole unknown
#: section, whose option names are then ``holds``) and what was probably
#: meant (``suggestion``: ``(section, option)``, the option None for a
#: section; None when nothing is close).
Unknown = collections.namedtuple(
    "Unknown", ["source", "section", "option", "suggestion", "holds"])


class ConfigError(Exception):
    """A configuration the command refuses to start with.

    ``lines`` are the complete messages, one per problem; ``str()`` joins
    them.
    """

    def __init__(self, lines):
        if isinstance(lines, str):
            lines = [lines]
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


class ConfigSourceError(ConfigError):
    """A configuration file or directory is missing, unreadable or cannot
    be parsed, or a required option is not set."""


class UnknownOptionError(ConfigError):
    """Sections or options that no known namespace defines.

    ``unknown`` lists them as :data:`Unknown` tuples.
    """

    def __init__(self, lines, unknown):
        super().__init__(lines)
        self.unknown = list(unknown)


class BadValueError(ConfigError):
    """A value that does not fit its option's type or choices."""


class NamespaceLoadError(ConfigError):
    """The options of an ``oslo.config.opts`` namespace (teeth-agent's, or
    an installed plugin's) cannot be loaded, so the configuration cannot
    be checked."""


def _normalize_section(section):
    # As oslo.config does: only "DEFAULT" is kept as written, every other
    # section name is compared in lower case.
    return section if section == "DEFAULT" else section.lower()


def _closest(word, candidates):
    """The candidate closest to ``word`` (difflib, case-insensitive), or
    None when none is close."""
    by_lower = {}
    for candidate in sorted(candidates):
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[matches[0]] if matches else None


def _distribution_name(entry_point):
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None) or ""
    return name.lower().replace("_", "-")


def installed_namespaces():
    """The names of every ``oslo.config.opts`` entry point installed."""
    return {ep.name for ep in
            importlib.metadata.entry_points(group="oslo.config.opts")}


def plugin_namespaces():
    """The ``oslo.config.opts`` namespaces of installed agent plugins.

    A distribution that provides a hardware manager or an extension (an
    entry point in :data:`PLUGIN_ENTRY_POINT_GROUPS`) declares its options
    the way oslo-config-generator needs them, as an ``oslo.config.opts``
    entry point; those options are accepted in the agent's configuration
    even though the plugin registers them only once it is loaded.
    """
    plugins = set()
    for group in PLUGIN_ENTRY_POINT_GROUPS:
        for entry_point in importlib.metadata.entry_points(group=group):
            plugins.add(_distribution_name(entry_point))
    plugins.discard(_OWN_DISTRIBUTION)
    # teeth-agent's own namespaces are never a plugin's, whatever its
    # metadata says: the endpoint's options are not the agent's.
    ours = set(AGENT_NAMESPACES) | set(ENDPOINT_NAMESPACES)
    return sorted(
        ep.name for ep in
        importlib.metadata.entry_points(group="oslo.config.opts")
        if _distribution_name(ep) in plugins and ep.name not in ours)


def namespace_opt_data(namespaces):
    """The sample generator's machine-readable option data of
    ``namespaces`` (the ``--opt-data`` that ``oslo-config-validator``
    reads): ``{"options": {group: {"opts": [...]}}, "deprecated_options":
    {group: [...]}, ...}``.

    It comes from :func:`oslo_config.generator.generate`, the public entry
    of ``oslo-config-generator``, run in memory with ``--format json``:
    the same loader the validator runs for ``--namespace``. Namespaces
    that are not installed are left out (the generator would only warn).
    """
    wanted = [name for name in namespaces if name in installed_namespaces()]
    if not wanted:
        return {"options": {}, "deprecated_options": {}}
    generator_conf = cfg.ConfigOpts()
    generator.register_cli_opts(generator_conf)
    args = ["--format", "json"]
    for name in wanted:
        args += ["--namespace", name]
    generator_conf(args, project="teeth-agent-strict-config",
                   default_config_files=[], default_config_dirs=[])
    output = io.StringIO()
    try:
        generator.generate(generator_conf, output_file=output)
    except Exception as exc:
        # A plugin's list_opts (third-party code) that fails to import or
        # run: the agent cannot tell its options from typos.
        raise NamespaceLoadError(
            "cannot load the options of %s: %s: %s"
            % (", ".join(wanted), type(exc).__name__, exc)) from exc
    return json.loads(output.getvalue())


def registered_options(conf):
    """``{section: {option dest}}`` of the options registered on ``conf``
    (before or after parsing), using only ConfigOpts' mapping interface."""
    found = {"DEFAULT": set()}
    for key in conf:
        try:
            value = conf[key]
        except (cfg.Error, ValueError):
            # Only an option's value can fail to read, never a group.
            value = None
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            found.setdefault(_normalize_section(key), set()).update(value)
        else:
            found["DEFAULT"].add(key)
    return found


class KnownOptions:
    """The sections and option names a command accepts in its files.

    ``options`` maps a section name to the set of names accepted in it.

    How oslo.config's validator is used: ``oslo-config-validator`` loads the
    sample generator's option data of the project's namespaces and reports
    every ``section/option`` of an input file that is neither an option's
    ``name`` or ``dest`` nor one of its deprecated names. The logic is the
    same here, built from oslo.config's public pieces: the option data is
    produced by :func:`oslo_config.generator.generate` (see
    :func:`namespace_opt_data`), the files are read with
    :class:`oslo_config.cfg.ConfigParser`, the parser oslo.config itself
    reads them with (see :func:`check_files`). The validator's own entry
    (``validator._validate``) is not called: it is private, only logs what
    it finds and ignores sections without options, and a start-up needs
    the findings as data to refuse with a suggestion. On top of the
    namespaces, whatever is registered on the command's ConfigOpts is
    accepted (the command-line options, oslo.config's own
    ``config_source`` and the groups it registers while parsing for the
    sources it names), so the check never refuses an option the command
    really reads.
    """

    def __init__(self, options):
        self.options = {_normalize_section(section): set(names)
                        for section, names in options.items()}
        self.options.setdefault("DEFAULT", set())

    @classmethod
    def from_opt_data(cls, opt_data):
        """From the generator's machine-readable data: every option's
        ``name`` and ``dest`` in its group, every deprecated name in its
        deprecated group (as the validator accepts them)."""
        options = {}
        for section, group in opt_data.get("options", {}).items():
            names = options.setdefault(section, set())
            for opt in group.get("opts", []):
                names.add(opt["name"])
                if opt.get("dest"):
                    names.add(opt["dest"])
        for section, deprecated in opt_data.get("deprecated_options",
                                                {}).items():
            names = options.setdefault(section, set())
            for opt in deprecated:
                names.add(opt["name"])
                if opt.get("dest"):
                    names.add(opt["dest"])
        return cls(options)

    @classmethod
    def for_conf(cls, conf, namespaces, plugins=False):
        """What a command with options registered on ``conf`` accepts: the
        options of ``namespaces`` (and of installed agent plugins when
        ``plugins``), plus everything registered on ``conf``."""
        namespaces = list(namespaces)
        if plugins:
            namespaces += plugin_namespaces()
        known = cls.from_opt_data(namespace_opt_data(namespaces))
        known.add(registered_options(conf))
        return known

    def add(self, options):
        """Accept ``{section: names}`` too."""
        for section, names in options.items():
            self.options.setdefault(_normalize_section(section),
                                    set()).update(names)

    def has_section(self, section):
        return _normalize_section(section) in self.options

    def has_option(self, section, option):
        """Whether ``option`` is accepted in ``section`` (None: DEFAULT)."""
        names = self.options.get(_normalize_section(section or "DEFAULT"))
        return names is not None and option in names

    def suggest_section(self, section):
        """The known section closest to ``section``, or None."""
        return _closest(section, self.options)

    def suggest_option(self, section, option):
        """``(section, option)`` most likely meant by ``option`` in
        ``section``: a close name in the same section, else the same name
        in another section; None when nothing fits."""
        section = _normalize_section(section or "DEFAULT")
        close = _closest(option, self.options.get(section, ()))
        if close is not None:
            return (section, close)
        elsewhere = sorted(name for name, opts in self.options.items()
                           if option in opts)
        if elsewhere:
            return (elsewhere[0], option)
        return None

    def unknown(self, source, sections):
        """The :data:`Unknown` entries of ``sections`` (``{section:
        {option: values}}`` as :class:`cfg.ConfigParser` fills it) read
        from ``source``. An unknown section is one entry, whatever it
        holds."""
        found = []
        for section, options in sections.items():
            if not self.has_section(section):
                guess = self.suggest_section(section)
                found.append(Unknown(source, section, None,
                                     (guess, None) if guess else None,
                                     sorted(options)))
                continue
            for option in options:
                if not self.has_option(section, option):
                    found.append(Unknown(source, section, option,
                                         self.suggest_option(section,
                                                             option), ()))
        return found


def _describe_suggestion(section, suggestion):
    if suggestion is None:
        return ""
    guess_section, guess_option = suggestion
    if guess_option is None:
        return "; did you mean [%s]?" % guess_section
    if _normalize_section(section) == guess_section:
        return "; did you mean %s?" % guess_option
    return "; did you mean [%s] %s?" % (guess_section, guess_option)


def describe_unknown(entry):
    """The one-line message of an :data:`Unknown` from a file."""
    if entry.option is None:
        holds = (" (it sets %s)" % ", ".join(entry.holds)
                 if entry.holds else "")
        return "%s: [%s] is not a known section%s%s" % (
            entry.source, entry.section, holds,
            _describe_suggestion(entry.section, entry.suggestion))
    return "%s: [%s] %s is not a known option%s" % (
        entry.source, entry.section, entry.option,
        _describe_suggestion(entry.section, entry.suggestion))


def _given(args):
    """The ``--config-file`` and ``--config-dir`` arguments of ``args``
    (every one, in order; argparse reads them as oslo.config's own
    argparse parser does)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config-dir", action="append", default=[])
    parser.add_argument("--config-file", action="append", default=[])
    return parser.parse_known_args(list(args))[0]


def _config_dirs(conf, args):
    """The configuration directories oslo.config read for ``args``: every
    ``--config-dir`` given, else the default ones that exist."""
    given = _given(args)
    if given.config_dir:
        return given.config_dir
    return [path for path in conf.default_config_dirs
            if os.path.isdir(path)]


def config_files(conf, args):
    """The files oslo.config read for ``args`` (call after ``conf()``), in
    the order it read them: ``conf.config_file`` (the ones given, else the
    default ones found), then the ``*.conf`` files of each configuration
    directory, sorted, as oslo.config reads them."""
    files = [os.path.abspath(os.path.expanduser(path))
             for path in conf.config_file or ()]
    for directory in _config_dirs(conf, args):
        pattern = os.path.join(os.path.expanduser(directory), "*.conf")
        files.extend(os.path.abspath(path)
                     for path in sorted(glob.glob(pattern)))
    # A file given twice is read twice by oslo.config; checked once here.
    return list(dict.fromkeys(files))


def parse_file(path):
    """``{section: {option: [values]}}`` of the file at ``path``, read by
    oslo.config's own parser."""
    sections = {}
    try:
        cfg.ConfigParser(path, sections).parse()
    except cfg.ParseError as exc:
        raise ConfigSourceError("cannot parse %s: %s" % (path, exc))
    except OSError as exc:
        raise ConfigSourceError("cannot read %s: %s"
                                % (path, exc.strerror or exc))
    return sections


def check_files(paths, known, labels=None):
    """Refuse unknown sections and options in the files at ``paths``.

    Returns ``[(path, sections)]`` as read. Raises
    :class:`UnknownOptionError` listing every unknown name of every file.
    ``labels`` maps a path to how messages name it, a :class:`Label`
    (default: the path).
    """
    labels = labels or {}
    parsed = []
    unknown = []
    for path in paths:
        sections = parse_file(path)
        parsed.append((path, sections))
        unknown += known.unknown(labels.get(path, path), sections)
    if unknown:
        raise UnknownOptionError([describe_unknown(entry)
                                  for entry in unknown], unknown)
    return parsed


class Label(str):
    """How messages name a configuration source (a ``str``: its name)."""

    def setting(self, section, option, value):
        """How messages show ``[section] option = value`` from here."""
        shown = "[%s] %s" % (section, option)
        return shown if value is None else "%s = %s" % (shown, value)


def _describe_value(parsed, section, option, labels):
    """Where the value of ``[section] option`` comes from and what it is:
    an environment variable (oslo.config reads those before the files),
    else the last file that sets it."""
    section = section or "DEFAULT"
    variable = "OS_%s__%s" % (section.upper(), option.upper())
    if variable in os.environ:
        return "environment variable %s=%s" % (variable,
                                               os.environ[variable])
    for path, sections in reversed(parsed):
        for name, options in sections.items():
            if _normalize_section(name) == section and option in options:
                label = labels.get(path) or Label(path)
                return "%s: %s" % (label, label.setting(
                    section, option, options[option][-1]))
    return Label("").setting(section, option, None)


def _reason(exc):
    # oslo.config raises ConfigFileValueError from inside the handler of
    # the type's ValueError; that one says what is wrong with the value.
    context = exc.__context__
    if isinstance(context, ValueError) and str(context):
        return str(context)
    return str(exc)


def check_values(conf, parsed, labels=None):
    """Read every option registered on ``conf`` once, so that a value that
    does not fit its option fails now, with its place, instead of at first
    use. Raises :class:`BadValueError` listing every bad value."""
    labels = labels or {}
    problems = []

    def read(section, option, getter):
        try:
            getter()
        except (cfg.Error, ValueError) as exc:
            problems.append("%s is not valid: %s" % (
                _describe_value(parsed, section, option, labels),
                _reason(exc)))

    for key in conf:
        try:
            value = conf[key]
        except (cfg.Error, ValueError):
            read(None, key, lambda key=key: conf[key])
            continue
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for option in value:
                read(key, option,
                     lambda value=value, option=option: value[option])
    if problems:
        raise BadValueError(problems)


# What oslo.config writes to stderr before it exits with status 1 when a
# command-line option (oslo.log's debug, use_syslog, ...) has a bad value
# in a configuration file.
_CLI_VALUE_ERROR = re.compile(
    r"argument --(?P<dest>\S+): Invalid (?P<type>.+?) value: (?P<value>.*)")


def _given_files(conf, args):
    """The files oslo.config was reading for ``args`` when it failed."""
    return _given(args).config_file or [
        path for path in conf.default_config_files if os.path.isfile(path)]


def _unreadable_source(conf, args, exc):
    """The :class:`ConfigSourceError` naming the file oslo.config could
    not read as text (``exc`` is what it raised)."""
    paths = list(_given_files(conf, args))
    for directory in _config_dirs(conf, args):
        pattern = os.path.join(os.path.expanduser(directory), "*.conf")
        paths.extend(sorted(glob.glob(pattern)))
    for path in paths:
        if os.path.isdir(path):
            return ConfigSourceError("configuration file %s is a directory"
                                     % path)
        try:
            with open(path, encoding="utf-8") as stream:
                stream.read()
        except UnicodeDecodeError as error:
            return ConfigSourceError(
                "cannot read %s: not UTF-8 text (byte 0x%02x at offset %d)"
                % (path, error.object[error.start], error.start))
        except OSError as error:
            return ConfigSourceError("cannot read %s: %s"
                                     % (path, error.strerror or error))
    return ConfigSourceError("cannot read the configuration: %s" % exc)


def _parse(conf, args, project, prog, labels, kwargs):
    """``conf(args, ...)``, with the exit oslo.config takes on a bad value
    of a command-line option given in a file turned into a
    :class:`BadValueError`. What oslo.config and argparse write to stderr
    is passed on otherwise (usage errors exit as argparse does)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            conf(args, project=project, prog=prog, **kwargs)
    except SystemExit as exc:
        bad = _CLI_VALUE_ERROR.search(captured.getvalue())
        if exc.code != 1 or bad is None:
            sys.stderr.write(captured.getvalue())
            raise
        parsed = []
        for path in _given_files(conf, args):
            try:
                parsed.append((os.path.abspath(os.path.expanduser(path)),
                               parse_file(path)))
            except ConfigSourceError:
                continue
        raise BadValueError("%s is not valid: not a %s value" % (
            _describe_value(parsed, None, bad.group("dest"), labels),
            bad.group("type"))) from None
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())


def load(conf, args, project, prog, known, labels=None, **kwargs):
    """Parse ``args`` and the configuration files into ``conf`` and check
    them strictly; returns ``conf``.

    ``known`` is the :class:`KnownOptions` of the command, ``labels`` as
    for :func:`check_files`; other keyword arguments go to ``conf()``.
    Raises a :class:`ConfigError` instead of starting with a
    configuration that has a missing file, an unknown name or a bad value.
    """
    try:
        _parse(conf, args, project, prog, labels or {}, kwargs)
    except cfg.ConfigFilesNotFoundError as exc:
        raise ConfigSourceError("configuration file not found: %s"
                                % ", ".join(exc.config_files))
    except cfg.ConfigFilesPermissionDeniedError as exc:
        raise ConfigSourceError("configuration file not readable "
                                "(permission denied): %s"
                                % ", ".join(exc.config_files))
    except cfg.ConfigDirNotFoundError as exc:
        raise ConfigSourceError("configuration directory %s does not exist"
                                % exc.config_dir)
    except cfg.ConfigFileParseError as exc:
        raise ConfigSourceError("cannot parse %s: %s"
                                % (exc.config_file, exc.msg))
    except cfg.RequiredOptError as exc:
        raise ConfigSourceError(str(exc))
    except cfg.ConfigSourceValueError as exc:
        # A bad value of a command-line option given in a file (the only
        # values oslo.config converts while parsing).
        raise BadValueError(str(exc))
    except cfg.Error as exc:
        raise ConfigSourceError(str(exc))
    except (OSError, UnicodeDecodeError) as exc:
        # oslo.config opens each file as UTF-8 text and lets a directory
        # or undecodable bytes through as a traceback.
        raise _unreadable_source(conf, args, exc) from None
    for directory in _given(args).config_dir:
        if not os.path.isdir(os.path.expanduser(directory)):
            # oslo.config looks for *.conf in it, finds none and goes on
            # without the options the operator meant to give.
            raise ConfigSourceError("configuration directory %s is not a "
                                    "directory" % directory)
    # Parsing registers the groups of the [DEFAULT] config_source drivers.
    known.add(registered_options(conf))
    parsed = check_files(config_files(conf, args), known, labels)
    check_values(conf, parsed, labels)
    return conf


def exit_status(error, prog, stream):
    """Write ``error``'s lines to ``stream``, each prefixed with ``prog``,
    and return the exit status of a refused configuration (2)."""
    for line in error.lines:
        stream.write("%s: %s\n" % (prog, line))
    stream.flush()
    return 2
