"""Where the control sockets of several ``serve`` processes live.

One ``teeth-endpoint serve`` opens its control socket at ``[endpoint]
control_socket``. With ``[endpoint] reuse_port`` several processes share the
agents' port on one machine, and each opens its own control socket next to
the configured one, with its process id added (``control.sock`` becomes
``control.1234.sock``), so that two processes never fight over one path.
The commands (``agents``, ``call``, ...) try the configured path first and
then every process socket in its directory, the newest first: any live
process answers for the whole fleet (see :mod:`teeth_agent.endpoint.peers`).
"""

import glob
import os


def process_socket(path, pid):
    """The control socket of process ``pid`` for the configured ``path``:
    ``/run/x/control.sock`` -> ``/run/x/control.<pid>.sock``."""
    stem, ext = os.path.splitext(path)
    return "%s.%d%s" % (stem, pid, ext or ".sock")


def serve_socket(path, reuse_port, pid=None):
    """The control socket a ``serve`` process opens."""
    if not reuse_port:
        return path
    return process_socket(path, os.getpid() if pid is None else pid)


def candidates(path):
    """The control sockets a command tries, in order: the configured path,
    then the process sockets next to it, the most recently created first.
    Only paths that exist are listed after the first."""
    stem, ext = os.path.splitext(path)
    ext = ext or ".sock"
    found = []
    prefix = stem + "."
    for name in glob.glob(glob.escape(stem) + ".*" + glob.escape(ext)):
        middle = name[len(prefix):len(name) - len(ext)]
        if not middle.isdigit():
            continue
        try:
            found.append((os.stat(name).st_mtime, name))
        except OSError:
            continue
    found.sort(reverse=True)
    return [path] + [name for _, name in found]
