"""The green-thread hub: spawning, sleeping, events, queues and the
bridge from OS threads into the hub (:class:`ThreadBridge`).

The rest of the agent and the endpoint never touch eventlet directly;
they use these helpers (re-exported by :mod:`teeth_agent.transport`).
"""

import concurrent.futures
import errno
import os
import queue
import threading
import time
import warnings

with warnings.catch_warnings():
    # eventlet announces its maintenance mode on import; it is confined to
    # this package for exactly that reason.
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.event
    import eventlet.greenpool
    import eventlet.hubs
    import eventlet.queue
    import eventlet.semaphore
    import eventlet.tpool


monotonic = time.monotonic

#: The longest timer the hub arms (seconds). epoll takes its timeout in
#: milliseconds in a C int (about 24.8 days): a longer timer, once it is the
#: nearest, stops the whole hub with OverflowError. Longer waits are cut to
#: this; nothing in the project waits that long for one event.
MAX_WAIT = 14 * 86400.0


def bounded(seconds):
    """``seconds`` as a timer the hub can arm (None stays None: no timer)."""
    if seconds is None:
        return None
    return min(float(seconds), MAX_WAIT)


class Timeout(eventlet.Timeout):
    """eventlet's Timeout, its length cut to :data:`MAX_WAIT`."""

    def __init__(self, seconds=None, exception=None):
        super().__init__(bounded(seconds), exception)


def spawn(func, *args, **kwargs):
    """Run ``func`` in a new green thread; returns a handle with ``kill()``
    and ``wait()``."""
    return eventlet.spawn(func, *args, **kwargs)


def spawn_after(seconds, func, *args, **kwargs):
    return eventlet.spawn_after(bounded(seconds), func, *args, **kwargs)


def sleep(seconds=0):
    eventlet.sleep(bounded(seconds))


def run_in_thread(func, *args, **kwargs):
    """Run a blocking call in an OS thread; the calling green thread waits
    while the hub keeps serving the others."""
    return eventlet.tpool.execute(func, *args, **kwargs)


class Event:
    """A resettable green event (wait with an optional timeout)."""

    def __init__(self):
        self._event = eventlet.event.Event()

    def set(self, value=True):
        if not self._event.ready():
            self._event.send(value)

    def is_set(self):
        return self._event.ready()

    def clear(self):
        if self._event.ready():
            self._event = eventlet.event.Event()

    def wait(self, timeout=None):
        """Return True when set, False on timeout."""
        if self._event.ready():
            return True
        with Timeout(timeout, False):
            self._event.wait()
            return True
        return False


Queue = eventlet.queue.Queue
LightQueue = eventlet.queue.LightQueue
QueueEmpty = eventlet.queue.Empty


class ThreadBridge:
    """Lets OS threads hand work to the hub thread.

    :meth:`call` may be used from any thread: it queues the callable, wakes
    the hub through a pipe and returns a :class:`concurrent.futures.Future`.
    The callable runs in a green thread of the hub, where it may use the
    connections. Start the bridge from the hub's thread.
    """

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._hub_thread = None
        self._worker = None
        # Guards the pipe against a task thread writing to it while stop()
        # closes it (the descriptor number could be reused meanwhile).
        self._pipe_lock = threading.Lock()
        self._stopped = False

    def start(self):
        self._hub_thread = threading.get_ident()
        self._worker = eventlet.spawn(self._run)

    def in_hub_thread(self):
        return threading.get_ident() == self._hub_thread

    def call(self, func, *args, **kwargs):
        future = concurrent.futures.Future()
        with self._pipe_lock:
            if self._stopped:
                raise OSError(errno.ESHUTDOWN, "the thread bridge is stopped")
            self._queue.put((future, func, args, kwargs))
            try:
                os.write(self._write_fd, b"x")
            except BlockingIOError:
                pass  # the pipe is full, so the hub is already awake
        return future

    def run(self, func, *args, timeout=None, **kwargs):
        """Like :meth:`call`, but wait for the result (from an OS thread)."""
        if self.in_hub_thread():
            return func(*args, **kwargs)
        return self.call(func, *args, **kwargs).result(timeout)

    def _run(self):
        while True:
            eventlet.hubs.trampoline(self._read_fd, read=True)
            try:
                while os.read(self._read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                eventlet.spawn_n(self._execute, *item)

    @staticmethod
    def _execute(future, func, args, kwargs):
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as exc:  # handed to the waiting thread
            future.set_exception(exc)

    def stop(self):
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        with self._pipe_lock:
            if self._stopped:
                return
            self._stopped = True
            for fd in (self._read_fd, self._write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
