"""Usage errors of the console scripts: one line on stderr, exit status 2.

A command line that parses but cannot be run (PARAMS that are not a JSON
object, ``--timeout 0``, ``--limit 0``, ``watch`` without its task) raises
:class:`UsageError` from the command; the script's ``main`` hands it to
:func:`report`, which writes ``<prog>: <message>`` as one line and returns
:data:`EXIT_USAGE`, the status argparse itself exits with for a command
line it cannot parse and :mod:`teeth_agent.conf.strict` for a refused
configuration. No traceback, no usage text: the one line says what to
change.
"""

import math
import sys

#: A usage or configuration error (as argparse and the strict
#: configuration exit).
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line cannot be run; the message is one sentence, without
    the program's name."""


def report(prog, error, stream=None):
    """Write ``error`` (a :class:`UsageError`) as one line to ``stream``
    (stderr) and return :data:`EXIT_USAGE`."""
    stream = stream or sys.stderr
    text = " ".join(str(error).split())
    stream.write("%s: %s\n" % (prog, text))
    stream.flush()
    return EXIT_USAGE


def check_seconds(value, option="--timeout"):
    """``value`` (None: not given) must be a finite number of seconds above
    0; raises :class:`UsageError` otherwise (``nan`` and ``inf`` parse as
    floats and would otherwise slip through a ``<= 0`` check)."""
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError("%s must be a positive number of seconds, not %s"
                         % (option, value))
    return value


def check_positive(value, option):
    """``value`` (None: not given) must be an integer of at least 1; raises
    :class:`UsageError` otherwise."""
    if value is not None and value < 1:
        raise UsageError("%s must be a positive number, not %s"
                         % (option, value))
    return value
