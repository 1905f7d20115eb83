"""How a console script ends when the reader of its stdout goes away.

``teeth-endpoint tasks --json | head -c 10`` closes the pipe after ten
bytes. Python ignores SIGPIPE, so the next write raises BrokenPipeError;
left alone, that is a traceback, and Python's own flush of stdout at exit
adds another complaint. :func:`run` ends the command quietly instead, with
exit status :data:`EXIT_CLOSED_STDOUT` (141, 128 + SIGPIPE): what the shell
reports for ``seq 100000 | head -1`` and any other Unix tool killed by
SIGPIPE, so ``set -o pipefail`` scripts see the same for teeth-endpoint as
for them, and a script can tell a cut-short listing from a complete one
(0).

SIGPIPE is not set back to its default instead: the commands also write to
sockets (the control socket, agents), where a peer that went away must be
an error the command reports, not a silent death. A BrokenPipeError from
anything but a closed stdout is raised on.
"""

import os
import select
import sys

#: The exit status of a command whose stdout was closed (128 + SIGPIPE).
EXIT_CLOSED_STDOUT = 141


def stdout_closed(stream=None):
    """Whether the reader of ``stream`` (stdout) is gone: its descriptor
    polls as an error (a pipe or socket with no reader)."""
    stream = stream or sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return False
    return any(mask & (select.POLLERR | select.POLLHUP)
               for _, mask in events)


def _silence_stdout():
    # Python flushes sys.stdout once more at exit; what is left in its
    # buffer would fail again ("Exception ignored ... BrokenPipeError").
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def run(main, *args):
    """``main(*args)``; a closed stdout ends it quietly with
    :data:`EXIT_CLOSED_STDOUT`."""
    try:
        return main(*args)
    except BrokenPipeError:
        if not stdout_closed():
            raise
        _silence_stdout()
        return EXIT_CLOSED_STDOUT
