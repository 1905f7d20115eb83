"""Log forwarding: a bounded buffer of the agent's log records that the
agent sends to its endpoint as ``log`` notifications."""

import collections
import logging
import threading
import time

from teeth_agent import protocol


def fit_log_record(entry, room):
    """A log record that fits ``room`` bytes: the message (then the
    exception text) cut to fit; None when even that does not help."""
    if room is None or protocol.encoded_size(entry) <= room:
        return entry
    entry = dict(entry)
    entry["truncated"] = True
    if isinstance(entry.get("exception"), str):
        without = dict(entry, exception="")
        shorter = protocol.shorten_to_fit(without, "message", room)
        if shorter is not None and shorter.get("message") == \
                entry.get("message"):
            # The message fits on its own: cut the exception instead.
            return protocol.shorten_to_fit(entry, "exception", room)
        entry = without
    return protocol.shorten_to_fit(entry, "message", room)


class ForwardingLogHandler(logging.Handler):
    """Buffers log records for the endpoint (bounded; oldest dropped).

    Records of the transport itself are not forwarded: a failure to send a
    record would otherwise produce another record to send. Subscribers
    (:meth:`subscribe`) are told when a record was buffered.
    """

    def __init__(self, capacity, level=logging.INFO):
        super().__init__(level)
        self.records = collections.deque()
        self.capacity = capacity
        self.dropped = 0
        self.lock_ = threading.Lock()
        self._subscribers = []

    def subscribe(self, callback):
        """Call ``callback()`` after each record is buffered, in the
        thread that logged it; keep it short, and log nothing from it."""
        with self.lock_:
            self._subscribers.append(callback)

    def unsubscribe(self, callback):
        """Stop calling ``callback``; ValueError when it is not
        subscribed."""
        with self.lock_:
            self._subscribers.remove(callback)

    def emit(self, record):
        if record.name.startswith("teeth_agent.transport"):
            return
        try:
            entry = {"level": record.levelname,
                     "message": record.getMessage(),
                     "time": record.created,
                     "logger": record.name,
                     "thread": record.threadName}
            if record.exc_info and record.exc_info[1] is not None:
                entry["exception"] = "%s: %s" % (
                    type(record.exc_info[1]).__name__, record.exc_info[1])
            for key in ("task_id", "device"):
                if hasattr(record, key):
                    entry[key] = getattr(record, key)
        except Exception:
            self.handleError(record)
            return
        with self.lock_:
            if self.capacity <= 0:
                self.dropped += 1
                return
            if len(self.records) >= self.capacity:
                self.records.popleft()
                self.dropped += 1
            self.records.append(entry)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()

    def pop(self):
        with self.lock_:
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                return {"level": "WARNING", "time": time.time(),
                        "logger": __name__,
                        "message": "%d log record(s) were dropped while the "
                                   "endpoint was unreachable" % dropped,
                        "dropped": dropped}
            if self.records:
                return self.records.popleft()
            return None

    def push_back(self, entry):
        with self.lock_:
            if entry.get("dropped"):
                self.dropped += entry["dropped"]
            else:
                self.records.appendleft(entry)
