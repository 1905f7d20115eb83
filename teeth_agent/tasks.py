"""Tasks: long work that reports progress and ends exactly once.

A :class:`Task` runs its body in an OS thread (the body is ordinary blocking
code: disk I/O, subprocesses). The :class:`TaskRegistry` owns every task the
agent knows, enforces exclusivity of disk tasks, keeps a bounded history and
tracks, per task, which state the endpoint has acknowledged, so the final
state is re-delivered after a reconnect until it is answered.

Nothing here uses eventlet; the registry calls each subscriber
(:meth:`TaskRegistry.subscribe`) with the task from whichever thread changed
it, and the agent turns that into a wake-up of its status reporter on the
hub.
"""

# Size: 561 lines, over the ~500 guideline: Task and TaskRegistry (312 + 92
# lines) are one lifecycle: exclusivity, history, persistence and ETA share
# the registry's lock.

import collections
import hashlib
import json
import logging
import os
import threading
import time

from teeth_agent import protocol

LOG = logging.getLogger(__name__)

RUNNING = "running"
ERROR = "error"
COMPLETE = "complete"
#: Every state a task can be in, as the wire names them.
TASK_STATES = (RUNNING, ERROR, COMPLETE)
TERMINAL = (ERROR, COMPLETE)

#: The longest ``msg`` a task summary carries, in characters; the full
#: message travels in the final ``task_status``.
SUMMARY_MSG_LENGTH = 256


def params_digest(method, params):
    """The sha256 (hex) of a command's method and checked params.

    Canonical JSON (sorted keys, no spaces, ASCII) so that equal parameters
    give equal digests however the endpoint ordered or spaced them.
    """
    canonical = json.dumps({"method": method, "params": params},
                           sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True, default=repr)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def shrink_status(status, room):
    """A ``task_status`` params object whose size fits ``room`` bytes.

    An oversized ``result`` (of ``complete``) or ``details`` (of
    ``error``) is replaced by the stand-in ``{"truncated": true, "size": N,
    "limit": L, "msg": ...}``, N being the size of what was left out; a
    ``msg`` still too long is cut. Returns None when nothing fits (a room
    smaller than the task's id).
    """
    if protocol.encoded_size(status) <= room:
        return status
    status = dict(status)
    for key in ("result", "details"):
        if key in status:
            size = protocol.encoded_size(status[key])
            status[key] = {
                "truncated": True, "size": size, "limit": room,
                "msg": "the %s of %d bytes does not fit the endpoint's "
                       "line limit; the agent keeps it in its state "
                       "directory" % (key, size)}
    if protocol.encoded_size(status) <= room:
        return status
    if isinstance(status.get("msg"), str):
        return protocol.shorten_to_fit(status, "msg", room)
    return None


def _check_json(what, value):
    """Raise TypeError unless ``value`` can be sent on the wire as JSON."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError("the task's %s cannot be sent as JSON: %s"
                        % (what, exc)) from None


def _started_key(record):
    started = record.get("started")
    return started if isinstance(started, (int, float)) and \
        not isinstance(started, bool) else 0


class TaskFailed(Exception):
    """Raised by a task body to end the task in ``error``.

    ``msg`` is the human-readable reason; ``result`` an optional object that
    is sent along (``details``), e.g. per-device results of the devices that
    did not fail.
    """

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.msg = str(msg)
        self.result = result


class AfterDelivery:
    """Returned by a task body whose last act must wait for the endpoint.

    The task completes with ``result``; once the endpoint has acknowledged
    that final state (or ``timeout`` seconds have passed) ``action()`` runs
    in the task's thread. ``standbye.run_image`` uses it to kexec or reboot
    only after the server knows the outcome.
    """

    def __init__(self, result, action, timeout):
        self.result = result
        self.action = action
        self.timeout = timeout


class ProgressEstimator:
    """Percent and ETA from observed progress.

    Feed it either a percent or ``done``/``total`` units (bytes); the ETA
    is the remaining work divided by the rate over a sliding window, so a
    slow start does not skew it forever.
    """

    def __init__(self, clock=time.monotonic, window=30.0):
        self._clock = clock
        self._window = window
        self._samples = collections.deque()
        self.started = clock()

    def update(self, fraction):
        """Record progress ``fraction`` in [0, 1]; return the ETA or None."""
        now = self._clock()
        self._samples.append((now, fraction))
        while len(self._samples) > 2 and \
                now - self._samples[0][0] > self._window:
            self._samples.popleft()
        if fraction >= 1.0:
            return 0.0
        first_time, first_fraction = self._samples[0]
        if now - first_time <= 0 or fraction <= first_fraction:
            # Only one sample in the window: use the average since start.
            elapsed = now - self.started
            if fraction <= 0 or elapsed <= 0:
                return None
            return elapsed * (1.0 - fraction) / fraction
        rate = (fraction - first_fraction) / (now - first_time)
        return (1.0 - fraction) / rate


class Task:
    """One task. Its public attributes are read-only outside the registry.

    The body receives the task and calls :meth:`progress` as work advances;
    it may be called from any thread.
    """

    def __init__(self, registry, task_id, method, exclusive, clock,
                 params_digest=None):
        self._registry = registry
        self.task_id = task_id
        self.method = method
        # None for a task restored from a record written before digests
        # were kept: then only the method can be compared.
        self.params_digest = params_digest
        self.exclusive = exclusive
        self.state = RUNNING
        self.percent = 0.0
        self.eta = None
        self.msg = None
        self.result = None
        self.details = None
        self.started = time.time()
        self.finished = None
        self.version = 0  # bumped on every change, for delivery tracking
        # Fed by the registry, under its lock.
        self.estimator = ProgressEstimator(clock)
        self.acknowledged = threading.Event()
        self.acknowledged_version = -1

    @property
    def terminal(self):
        return self.state in TERMINAL

    def progress(self, percent=None, done=None, total=None, eta=None):
        """Report progress: a percent, or ``done`` of ``total`` units.

        The ETA is estimated from the observed rate unless given. Percent
        never goes backwards and stays below 100 until the task completes.
        """
        if done is not None and total:
            fraction = min(max(done / total, 0.0), 1.0)
        elif percent is not None:
            fraction = min(max(percent / 100.0, 0.0), 1.0)
        else:
            fraction = self.percent / 100.0
        self._registry.record_progress(self, fraction, eta)

    def status(self):
        """The task's state as sent in ``task_status`` (without version)."""
        status = {"task_id": self.task_id, "state": self.state,
                  "method": self.method}
        if self.state == RUNNING:
            status["percent"] = round(self.percent, 2)
            status["eta"] = None if self.eta is None else round(self.eta, 1)
        elif self.state == ERROR:
            status["msg"] = self.msg
            if self.details is not None:
                status["details"] = self.details
        else:
            status["result"] = self.result if self.result is not None else {}
        return status

    def summary(self):
        """The task as listed in the handshake and ``status``: no result,
        no details, a bounded ``msg``; its size does not depend on what
        the task produced."""
        summary = {"task_id": self.task_id, "method": self.method,
                   "state": self.state, "percent": round(self.percent, 2)}
        if self.state == ERROR:
            msg = self.msg or ""
            if len(msg) > SUMMARY_MSG_LENGTH:
                msg = msg[:SUMMARY_MSG_LENGTH] + " [truncated]"
            summary["msg"] = msg
        return summary

    def matches(self, method, digest):
        """True when ``method`` with params of ``digest`` is this task's
        command (a repeat, not a reuse of the id for other work)."""
        if method != self.method:
            return False
        return self.params_digest is None or digest is None or \
            digest == self.params_digest

    def record(self):
        """The task as kept in the state directory."""
        return {"task_id": self.task_id, "method": self.method,
                "params_digest": self.params_digest,
                "state": self.state, "msg": self.msg, "result": self.result,
                "details": self.details, "started": self.started,
                "finished": self.finished,
                "acknowledged": self.acknowledged.is_set()}


class TaskRegistry:
    """Every task the agent knows: start, exclusivity, history, delivery."""

    def __init__(self, history=100, state_dir=None, clock=time.monotonic):
        self._lock = threading.RLock()
        self._tasks = collections.OrderedDict()
        self._history = history
        self._state_dir = state_dir or None
        self._clock = clock
        self._subscribers = []
        if self._state_dir:
            self._load()

    # -- starting ------------------------------------------------------------

    def start(self, task_id, method, body, exclusive=False,
              params_digest=None):
        """Start ``body(task)`` in a new thread; return ``(task, created)``.

        An existing ``task_id`` of the same method and params (see
        :meth:`existing`) returns that task and does not start work again.
        Raises :class:`protocol.Conflict` when the id belongs to other work,
        :class:`protocol.Busy` when ``exclusive`` and another exclusive task
        is running.
        """
        with self._lock:
            existing = self.existing(task_id, method, params_digest)
            if existing is not None:
                return existing, False
            if exclusive:
                for other in self._tasks.values():
                    if other.exclusive and not other.terminal:
                        raise protocol.Busy(
                            "task %s (%s) is running and changes disks; "
                            "wait for it to finish"
                            % (other.task_id, other.method),
                            details={"task_id": other.task_id,
                                     "method": other.method})
            task = Task(self, task_id, method, exclusive, self._clock,
                        params_digest=params_digest)
            self._tasks[task_id] = task
            self._persist(task)
        self._notify(task)
        thread = threading.Thread(target=self._run, args=(task, body),
                                  name="task-%s" % task_id, daemon=True)
        thread.start()
        return task, True

    def _run(self, task, body):
        after = None
        try:
            result = body(task)
            if isinstance(result, AfterDelivery):
                after = result
                result = after.result
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise TypeError("task body returned %s, not a dict"
                                % type(result).__name__)
            _check_json("result", result)
        except TaskFailed as exc:
            LOG.error("task %s (%s) failed: %s", task.task_id, task.method,
                      exc.msg)
            details = exc.result
            try:
                _check_json("details", details)
            except TypeError as bad:
                LOG.error("dropping the details of task %s: %s",
                          task.task_id, bad)
                details = None
            self._finish(task, ERROR, msg=exc.msg, details=details)
            return
        except Exception as exc:
            LOG.exception("task %s (%s) failed", task.task_id, task.method)
            self._finish(task, ERROR, msg="%s: %s"
                         % (type(exc).__name__, exc))
            return
        self._finish(task, COMPLETE, result=result)
        if after is not None:
            if not task.acknowledged.wait(after.timeout):
                LOG.warning("the endpoint did not acknowledge task %s within "
                            "%ss; going on", task.task_id, after.timeout)
            try:
                after.action()
            except Exception:
                LOG.exception("the final action of task %s failed",
                              task.task_id)

    # -- changes -------------------------------------------------------------

    def subscribe(self, callback):
        """Call ``callback(task)`` after every change of any task.

        It runs in whichever thread made the change (a task's own thread,
        or the caller of :meth:`start`), outside the registry's lock; keep
        it short. An exception it raises is logged and does not reach the
        task. Subscribing the same callback twice calls it twice.
        """
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback):
        """Stop calling ``callback``; ValueError when it is not
        subscribed."""
        with self._lock:
            self._subscribers.remove(callback)

    def record_progress(self, task, fraction, eta=None):
        """Record that running ``task`` is ``fraction`` (0 to 1) done.

        The ETA is estimated from the observed rate unless ``eta`` is
        given; the percent never goes backwards and stays below 100 until
        the task completes. A task that has ended is left as it is.
        """
        with self._lock:
            # Several worker threads may report for one task (parallel
            # erases); the estimator's window is not thread-safe alone.
            estimated = task.estimator.update(fraction)
            if task.terminal:
                return
            task.percent = max(task.percent, min(fraction * 100.0, 99.9))
            task.eta = eta if eta is not None else estimated
            task.version += 1
        self._notify(task)

    def _finish(self, task, state, msg=None, result=None, details=None):
        with self._lock:
            if task.terminal:
                return
            task.state = state
            task.msg = msg
            task.result = result
            task.details = details
            task.eta = None
            task.finished = time.time()
            if state == COMPLETE:
                task.percent = 100.0
            task.version += 1
            self._persist(task)
            self._trim()
        LOG.info("task %s (%s) ended: %s", task.task_id, task.method, state)
        self._notify(task)

    def acknowledge(self, task_id, version):
        """The endpoint answered the update of ``version`` of a task."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or version <= task.acknowledged_version:
                return
            task.acknowledged_version = version
            if task.terminal and version >= task.version:
                task.acknowledged.set()
                self._persist(task)
                self._trim()

    def _notify(self, task):
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(task)
            except Exception:
                LOG.exception("task change subscriber %r failed", callback)

    def _trim(self):
        finished = [t for t in self._tasks.values()
                    if t.terminal and t.acknowledged.is_set()]
        for task in finished[:max(0, len(finished) - self._history)]:
            del self._tasks[task.task_id]
            self._forget(task)

    # -- reading -------------------------------------------------------------

    def get(self, task_id):
        with self._lock:
            return self._tasks.get(task_id)

    def existing(self, task_id, method, params_digest):
        """The task holding ``task_id`` when it is this very command.

        Returns None when the id is free. Raises :class:`protocol.Conflict`
        when the id belongs to a task of another method, or of the same
        method with other params (by digest; a task restored from an older
        record without one is compared by method only).
        """
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or task.matches(method, params_digest):
            return task
        other = "other parameters" if method == task.method else \
            "another method"
        raise protocol.Conflict(
            "task_id %s is already used by a %s task (%s); it was sent "
            "again with %s" % (task_id, task.method, task.state, other),
            details={"task_id": task_id, "method": task.method})

    def statuses(self):
        """Every known task's latest full state, oldest first."""
        with self._lock:
            return [task.status() for task in self._tasks.values()]

    def summaries(self):
        """Every known task's summary (:meth:`Task.summary`), oldest
        first."""
        with self._lock:
            return [task.summary() for task in self._tasks.values()]

    def undelivered(self):
        """``(task, version, status)`` for tasks whose latest state the
        endpoint has not acknowledged."""
        with self._lock:
            return [(task, task.version, task.status())
                    for task in self._tasks.values()
                    if task.version > task.acknowledged_version]

    def running(self):
        with self._lock:
            return [task for task in self._tasks.values()
                    if not task.terminal]

    # -- persistence ----------------------------------------------------------

    def _path(self, task_id):
        # The file is named after a digest so no task id, however odd, can
        # name a file outside the state directory.
        digest = hashlib.sha256(task_id.encode("utf-8", "replace"))
        return os.path.join(self._state_dir,
                            "task-%s.json" % digest.hexdigest()[:40])

    def _persist(self, task):
        if not self._state_dir:
            return
        try:
            os.makedirs(self._state_dir, mode=0o700, exist_ok=True)
            path = self._path(task.task_id)
            tmp = path + ".tmp"
            with open(tmp, "w") as stream:
                json.dump(task.record(), stream)
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as exc:
            LOG.warning("cannot record task %s in %s: %s", task.task_id,
                        self._state_dir, exc)

    def _forget(self, task):
        if self._state_dir:
            try:
                os.unlink(self._path(task.task_id))
            except OSError:
                pass

    def _load(self):
        """Read the tasks of the agent's previous life.

        A task recorded as running cannot be trusted half-done: it is
        reported as ``error``. A final state the endpoint never acknowledged
        is delivered again.
        """
        try:
            names = sorted(os.listdir(self._state_dir))
        except OSError:
            return
        records = []
        for name in names:
            if not (name.startswith("task-") and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(self._state_dir, name)) as stream:
                    record = json.load(stream)
            except (OSError, ValueError) as exc:
                LOG.warning("ignoring unreadable task record %s: %s",
                            name, exc)
                continue
            if not isinstance(record, dict):
                LOG.warning("ignoring task record %s: not an object", name)
                continue
            records.append(record)
        records.sort(key=_started_key)
        for record in records:
            try:
                task = Task(self, record["task_id"], record["method"],
                            False, self._clock,
                            params_digest=record.get("params_digest"))
            except (KeyError, TypeError, AttributeError):
                continue
            if not isinstance(task.task_id, str) or \
                    not isinstance(task.method, str) or \
                    not isinstance(task.params_digest, (str, type(None))):
                LOG.warning("ignoring a task record with bad fields: %.200r",
                            record)
                continue
            task.started = record.get("started") or task.started
            if record.get("state") in TERMINAL:
                task.state = record["state"]
                task.msg = record.get("msg")
                task.result = record.get("result")
                task.details = record.get("details")
                task.finished = record.get("finished")
                if task.state == COMPLETE:
                    task.percent = 100.0
            else:
                task.state = ERROR
                task.msg = ("the agent stopped while this task was running; "
                            "its work cannot be trusted and must be redone")
                task.finished = time.time()
            task.version = 1
            if record.get("acknowledged") and record.get("state") in TERMINAL:
                task.acknowledged_version = 1
                task.acknowledged.set()
            self._tasks[task.task_id] = task
            self._persist(task)
        self._trim()
