"""Agent options from the kernel command line, the way ramdisks are set up.

A ramdisk booted over PXE or from virtual media is configured by the kernel
command line its boot loader passes, not by editing files inside it. Every
word of the form::

    teeth_agent.<option>=<value>           an option of [DEFAULT]
    teeth_agent.<group>.<option>=<value>   an option of [<group>]

becomes that option's value, on top of the configuration files: the words
are written to an oslo.config file (under ``/run/teeth-agent``, else a
temporary directory) that is added *after* the other configuration files,
so it wins over them. Values are written as they are, so they take the
option's usual file syntax: a list is comma-separated
(``teeth_agent.endpoints=10.0.2.100:9999,10.0.2.101:9999``), a boolean is
``true``/``false``, a JSON option is JSON
(``teeth_agent.hardware.root_device_hints={"serial":"S3Y1"}``, with no
space outside its strings). Dashes in names count as underscores. A value
with spaces is quoted as the kernel allows (``"teeth_agent.x=a b"``).

A name that matches no option stops the agent before it does anything,
like an unknown option in a file (:meth:`KernelCommandLine.check`, see
:mod:`teeth_agent.conf.strict`): ignoring ``teeth_agent.power.simulat=true``
or ``teeth_agent.hardware.device_includes=...`` would let the ramdisk
really reboot the machine or show it every disk. Refusing does not brick
anything: the ramdisk changes nothing on the machine, the one-line reason
(with the closest option name) is on the console and in the journal, and
the fix is in the boot loader configuration the typo came from, read again
at the next boot.

TLS material is named the same way, by path: ``teeth_agent.tls.ca_file=``,
``teeth_agent.tls.cert_file=`` and ``teeth_agent.tls.key_file=`` point at
files some boot step put in place (the ramdisk's init copies a machine's
certificate from virtual media with ``teeth_ramdisk.tls_media=``, see
docs/ramdisk.md); ``teeth_agent.tls.enabled=false`` turns TLS off (with
the start-up WARNING). The certificates themselves never travel on the
command line, which any local user can read.

A ramdisk that reaches its image store through an HTTP proxy is told so
the same way: ``teeth_agent.standbye.proxy=http://10.0.0.3:3128`` and
``teeth_agent.standbye.no_proxy=10.0.0.0/8,images.local`` (see
:mod:`teeth_agent.fetch.proxy`). A proxy password on the command line is
readable by any local user of the ramdisk: prefer a proxy that admits the
provisioning network without one.

Nothing happens when the command line has no ``teeth_agent.`` word, which
is the case on any machine that did not boot the ramdisk.
"""

import logging
import os
import tempfile

from oslo_config import cfg

from teeth_agent.conf import strict

LOG = logging.getLogger(__name__)

PROC_CMDLINE = "/proc/cmdline"
RUN_DIR = "/run/teeth-agent"
FILE_NAME = "kernel-cmdline.conf"
PREFIX = "teeth_agent."


def split_cmdline(text):
    """The words of a kernel command line, as the kernel splits them.

    Words are separated by whitespace outside double quotes. As in the
    kernel, only the quotes that open the word or its value (and the one
    that closes the word then) are removed; quotes inside a value stay,
    so a JSON value (``x={"a":"b"}``) arrives intact.
    """
    words = []
    index = 0
    length = len(text)
    while True:
        while index < length and text[index].isspace():
            index += 1
        if index >= length:
            return words
        quoted = text[index] == '"'
        if quoted:
            index += 1
        in_quote = quoted
        start = index
        while index < length and (in_quote or not text[index].isspace()):
            if text[index] == '"':
                in_quote = not in_quote
            index += 1
        word = text[start:index]
        param, equals, value = word.partition("=")
        if equals and value.startswith('"'):
            value = value[1:]
            if value.endswith('"'):
                value = value[:-1]
        elif quoted and word.endswith('"'):
            if equals:
                value = value[:-1]
            else:
                param = param[:-1]
        words.append(param + equals + value)


def parse(text):
    """``[(group or None, name, value)]`` of the ``teeth_agent.`` words of
    the command line ``text``, in order. A name without ``=`` gets the
    value ``true`` (a bare flag). Names are not checked here. Words after
    a bare ``--`` are arguments of init, not kernel parameters, and are
    not read."""
    found = []
    for word in split_cmdline(text):
        if word == "--":
            break
        if not word.startswith(PREFIX):
            continue
        key, sep, value = word[len(PREFIX):].partition("=")
        if not sep:
            value = "true"
        parts = key.replace("-", "_").split(".")
        if len(parts) == 1:
            found.append((None, parts[0], value))
        elif len(parts) == 2:
            found.append((parts[0], parts[1], value))
        else:
            found.append((None, key, value))
    return found


def _is_group(conf, name):
    try:
        return isinstance(conf[name], cfg.ConfigOpts.GroupAttr)
    except (cfg.Error, KeyError, AttributeError):
        # An option whose value cannot be read before parsing: not a group.
        return False


def _known(conf, group, name):
    """Whether ``conf`` has an option ``name`` in ``group`` (None: the
    DEFAULT group)."""
    if group is None:
        return name in set(conf) and not _is_group(conf, name)
    if group not in set(conf) or not _is_group(conf, group):
        return False
    return name in set(conf[group])


def _hint(suggestion):
    """The "did you mean" of a kernel command line word."""
    if suggestion is None:
        return ""
    section, option = suggestion
    if option is None:
        return "; did you mean %s%s.<option>?" % (PREFIX, section)
    if section == "DEFAULT":
        return "; did you mean %s%s?" % (PREFIX, option)
    return "; did you mean %s%s.%s?" % (PREFIX, section, option)


class Label(strict.Label):
    """How configuration errors name the file written from the kernel
    command line: by the words that set its values."""

    def setting(self, section, option, value):
        word = PREFIX + (option if section == "DEFAULT"
                         else "%s.%s" % (section, option))
        return word if value is None else "%s=%s" % (word, value)


class KernelCommandLine:
    """The ``teeth_agent.`` options found on a kernel command line.

    ``options`` maps a group name (``"DEFAULT"`` for the default group) to
    ``{option: value}`` of the recognised words; ``unknown`` lists the
    ``(group or None, name)`` of the words that match no option, and
    ``ignored`` the same as ``group.name`` or ``name``; :meth:`check`
    refuses them. Build one with :meth:`load`.
    """

    def __init__(self, options, unknown, source):
        self.options = options
        self.unknown = unknown
        self.source = source
        self.path = None

    @property
    def ignored(self):
        return [name if group is None else "%s.%s" % (group, name)
                for group, name in self.unknown]

    @classmethod
    def load(cls, conf, path=PROC_CMDLINE, known=None):
        """Read the command line at ``path`` (missing or unreadable: no
        options) and sort its words against the options registered on
        ``conf`` (register them first) or, when given, the
        :class:`~teeth_agent.conf.strict.KnownOptions` ``known``."""
        try:
            with open(path) as stream:
                text = stream.read()
        except OSError:
            text = ""
        options = {}
        unknown = []
        for group, name, value in parse(text):
            if known is not None:
                found = known.has_option(group, name)
            else:
                found = _known(conf, group, name)
            if found:
                options.setdefault(group or "DEFAULT", {})[name] = value
            else:
                unknown.append((group, name))
        return cls(options, unknown, path)

    def check(self, known):
        """Raise :class:`~teeth_agent.conf.strict.UnknownOptionError` when
        a word matches no option, naming it and the closest option of
        ``known`` (a :class:`~teeth_agent.conf.strict.KnownOptions`)."""
        if not self.unknown:
            return
        where = "kernel command line (%s)" % self.source
        lines = []
        entries = []
        for group, name in self.unknown:
            word = PREFIX + (name if group is None
                             else "%s.%s" % (group, name))
            if group is not None and not known.has_section(group):
                guess = known.suggest_section(group)
                if guess is not None and known.has_option(guess, name):
                    suggestion = (guess, name)
                else:
                    suggestion = (guess, None) if guess else None
            else:
                suggestion = known.suggest_option(group, name)
            entries.append(strict.Unknown(where, group or "DEFAULT", name,
                                          suggestion, ()))
            lines.append("%s: %s matches no option%s"
                         % (where, word, _hint(suggestion)))
        raise strict.UnknownOptionError(lines, entries)

    def label(self):
        """The :class:`Label` naming the written file in configuration
        errors (call after :meth:`write`)."""
        return Label("kernel command line (%s, written to %s)"
                     % (self.source, self.path))

    def render(self):
        """The options as the text of an oslo.config file."""
        lines = ["# Written by teeth-agent from %s; these options override"
                 % self.source,
                 "# the configuration files given before this one."]
        for group in sorted(self.options, key=lambda g: (g != "DEFAULT", g)):
            lines.append("")
            lines.append("[%s]" % group)
            for name, value in self.options[group].items():
                lines.append("%s = %s" % (name, value))
        return "\n".join(lines) + "\n"

    def write(self, directory=None):
        """Write :meth:`render` to ``directory`` (default ``/run/teeth-agent``,
        else a new temporary directory when that cannot be created) with
        mode 0600; returns the file's path, also kept as ``self.path``."""
        if directory is None:
            try:
                os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
                directory = RUN_DIR
            except OSError:
                # Not root (a developer trying the agent): any private
                # directory will do, the file is only read at start-up.
                directory = tempfile.mkdtemp(prefix="teeth-agent-")
        else:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, FILE_NAME)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                             0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(self.render())
        self.path = path
        return path

    def extend_args(self, args, project, prog, directory=None):
        """``args`` (command-line arguments for ``conf()``) plus a
        ``--config-file`` naming the file written from these options, so
        that it is read last and overrides the others. When ``args`` name
        no configuration file or directory, the ones oslo.config would have
        found by default are named first, so they are still read. Returns
        ``args`` unchanged when there are no options."""
        if not self.options:
            return list(args)
        path = self.write(directory)
        extended = list(args)
        if not any(arg.startswith(("--config-file", "--config-dir"))
                   for arg in args):
            for default in cfg.find_config_files(project=project,
                                                 prog=prog):
                extended += ["--config-file", default]
            for default in cfg.find_config_dirs(project=project, prog=prog):
                extended += ["--config-dir", default]
        return extended + ["--config-file", path]

    def log_outcome(self):
        """Log what was applied and what was ignored (call once logging is
        set up)."""
        for group, values in sorted(self.options.items()):
            LOG.info("kernel command line sets [%s] %s (written to %s)",
                     group, ", ".join(sorted(values)), self.path)
        for name in self.ignored:
            LOG.warning("kernel command line: %s%s matches no option; "
                        "ignored", PREFIX, name)
