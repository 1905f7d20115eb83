"""Start-up and shutdown of the two long-running processes.

``teeth-endpoint serve`` claims its control socket and its port before it
serves (:func:`claim_control_socket`, :func:`start_listening`): a socket or
a port held by a live server is a one-line :class:`StartError`, never a
take-over; a socket left behind by a server that died is removed. Both
``serve`` and ``teeth-agent`` stop on SIGTERM, SIGHUP or Ctrl-C through
:class:`StopSignals` and log why they stopped.
"""

import errno
import gc
import logging
import os
import signal
import stat
import sys

from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: The signals that stop a process cleanly, with the reason logged.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StartError(Exception):
    """The process cannot start (one sentence for the operator)."""


class Stop(SystemExit):
    """Raised in the main green thread by a stop signal.

    A SystemExit, so eventlet's hub hands it to the main green thread as
    it does KeyboardInterrupt, wherever the signal arrived.
    """

    def __init__(self, reason):
        super().__init__(0)
        self.reason = reason


#: An OSError as one short phrase: ``connection refused``, not
#: ``[Errno 111] ECONNREFUSED: ConnectionRefusedError: ...``
#: (:func:`teeth_agent.transport.sockets.error_text`, which the agent's
#: connect warning uses too).
os_error_text = transport.error_text


def claim_control_socket(path, connect=None):
    """Make sure no live server holds the control socket at ``path``.

    Raises :class:`StartError` when a server answers on it, or when the
    path is something other than a socket; removes a socket nobody
    listens on any more (a server that died). ``connect(path)`` opens a
    connection (the transport's, unless given).
    """
    if connect is None:
        def connect(where):
            return transport.connect_unix(where, timeout=5)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartError("cannot check the control socket %s: %s"
                         % (path, os_error_text(exc))) from None
    if not stat.S_ISSOCK(mode):
        raise StartError("%s is not a socket; remove it or choose another "
                         "[endpoint] control_socket" % path)
    try:
        sock = connect(path)
    except ConnectionRefusedError:
        sock = None
    except OSError as exc:
        raise StartError("cannot check the control socket %s: %s"
                         % (path, os_error_text(exc))) from None
    if sock is None:
        # Logged outside the except block: oslo.log would repeat the
        # exception being handled after the message.
        os.unlink(path)
        LOG.warning("removed the stale control socket %s (the server that "
                    "made it is gone)", path)
        return
    sock.close()
    raise StartError("a running teeth-endpoint serve holds the control "
                     "socket %s; stop it first, or give this one another "
                     "[endpoint] control_socket" % path)


def start_listening(endpoint):
    """``endpoint.start()``, with a port in use as a :class:`StartError`."""
    try:
        return endpoint.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartError(
                "port %d on %s is in use (another teeth-endpoint serve or "
                "another program holds it); stop it or choose another "
                "[endpoint] port" % (endpoint.port, endpoint.host)) from None
        raise StartError("cannot listen on %s:%d: %s"
                         % (endpoint.host, endpoint.port,
                            os_error_text(exc))) from None


def tune_gc(thresholds):
    """Freeze what the process allocated so far (modules, configuration,
    the schema: it lives as long as the process) out of the cyclic
    garbage collector, and set its ``thresholds`` (three positive
    integers, ``[endpoint] gc_thresholds``). Raises :class:`StartError`
    for anything else.

    Why: a collection of the oldest generation walks every object the
    process holds and stops its event loop meanwhile. Measured with
    ``benchmarks/scale.py --database sqlite`` (one process, a running
    update per agent every 2 s): with CPython's 700, 10, 10 the endpoint
    made 54 full collections in two minutes, up to 565 ms each, and ping
    p99 was 264 ms at 5,000 agents; with 50000, 20, 100 there were none
    and p99 was 24 to 75 ms.
    """
    thresholds = list(thresholds)
    if len(thresholds) != 3 or not all(
            isinstance(value, int) and value > 0 for value in thresholds):
        raise StartError("[endpoint] gc_thresholds must be three positive "
                         "integers, not %s"
                         % ",".join(str(value) for value in thresholds))
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    LOG.debug("garbage collector thresholds %s, %d objects frozen",
              thresholds, gc.get_freeze_count())


def cannot_start(program, reason):
    """Log and print that ``program`` cannot start; returns exit status 2.

    Call it after the ``except`` block that caught the failure: inside
    one, oslo.log appends the exception being handled to the line, which
    then says the same thing twice.
    """
    LOG.error("cannot start: %s", reason)
    print("%s: cannot start: %s" % (program, reason), file=sys.stderr)
    return 2


class StopSignals:
    """While entered, SIGTERM and SIGHUP raise :class:`Stop` (with the
    signal's name as the reason) instead of killing the process without
    a word; :meth:`release` (or leaving) puts the old handlers back."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self._old = {}

    def _handle(self, number, frame):
        raise Stop("%s received" % signal.Signals(number).name)

    def __enter__(self):
        for number in self.signals:
            self._old[number] = signal.signal(number, self._handle)
        return self

    def release(self):
        while self._old:
            number, handler = self._old.popitem()
            signal.signal(number, handler)

    def __exit__(self, *exc_info):
        self.release()
        return False


def run_until_stopped(program, work, cleanup):
    """Run ``work()`` until it returns or a stop signal, Ctrl-C or an
    error ends it; then log ``<program> shutting down: <reason>``, call
    ``cleanup()`` and log ``<program> stopped``. An error is re-raised
    after the clean-up. Returns 0."""
    reason = "stopped"
    with StopSignals() as signals:
        try:
            work()
        except Stop as stop:
            reason = stop.reason
        except KeyboardInterrupt:
            reason = "interrupted (SIGINT)"
        except Exception as exc:
            reason = "error: %s" % exc
            raise
        finally:
            signals.release()
            LOG.info("%s shutting down: %s", program, reason)
            cleanup()
            LOG.info("%s stopped", program)
    return 0
