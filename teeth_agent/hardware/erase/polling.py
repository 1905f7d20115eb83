"""Waiting for a device-level erase: the poll loop with its stall
timeout, progress estimates and the [decom] settings they read."""

import contextlib
import threading
import time

from teeth_agent.hardware.erase import catalogue


_POLL_INTERVAL = 5.0
# A device-level erase that reports no progress and has no estimate gets
# this long before the agent gives up on it.
_LONG_COMMAND_TIMEOUT = 24 * 3600


def _conf_value(manager, name, default, group="decom"):
    """An option of the manager's config, or ``default``.

    The default serves managers built without the agent's options.
    """
    try:
        return getattr(getattr(manager.conf, group), name)
    except AttributeError:
        # oslo.config's NoSuchOptError is an AttributeError too.
        return default


def _poll_interval(manager):
    return _conf_value(manager, "erase_poll_interval", _POLL_INTERVAL)


@contextlib.contextmanager
def _estimated_progress(progress, size, estimate_s, clock=time.monotonic,
                        interval=5.0):
    """Report time-based progress while a blocking command runs.

    The device's own estimate of the duration drives it, capped below 100%.
    """
    if not estimate_s:
        yield
        return
    stop = threading.Event()
    started = clock()

    def tick():
        while not stop.wait(interval):
            fraction = min((clock() - started) / estimate_s, 0.99)
            progress(int(size * fraction), size)

    ticker = threading.Thread(target=tick, daemon=True,
                              name="erase-estimate")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


#: A device-level erase whose progress does not move for this long is
#: declared stuck (a large disk's overwrite sanitize takes hours, but its
#: progress counter keeps moving).
STALL_TIMEOUT = 4 * 3600


def _poll(read_state, path, method, size, progress, interval, sleep,
          max_waiting=12, stall_timeout=STALL_TIMEOUT, clock=time.monotonic):
    """Poll ``read_state() -> (state, value)`` until done or failed.

    ``state`` is ``"running"`` (value: fraction), ``"done"``,
    ``"failed"`` (value: reason) or ``"waiting"`` (the device does not
    show the operation yet; allowed ``max_waiting`` times in a row). A
    ``"running"`` fraction that does not change for ``stall_timeout``
    seconds fails the erase instead of waiting forever.
    """
    waiting = 0
    last_value = None
    last_change = clock()
    while True:
        state, value = read_state()
        if state == "done":
            return {}
        if state == "failed":
            raise catalogue.EraseError(
                "%s failed on %s: %s" % (method, path, value))
        if state == "waiting":
            waiting += 1
            if waiting > max_waiting:
                raise catalogue.EraseError(
                    "%s on %s: the device never reported the "
                    "operation as started" % (method, path))
        else:
            waiting = 0
            if value != last_value:
                last_value, last_change = value, clock()
            elif clock() - last_change > stall_timeout:
                raise catalogue.EraseError(
                    "%s on %s: no progress for %ds (stuck at "
                    "%.1f%%)" % (method, path, stall_timeout,
                                 100.0 * value))
            progress(int(size * min(value, 0.999)), size)
        sleep(interval)
