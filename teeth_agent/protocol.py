"""The teeth-agent wire protocol, v1, without any I/O.

This module turns bytes into typed events and typed messages into bytes. It
imports no socket and no concurrency library, so it can be driven from tests,
fuzzers and any transport. The rules it enforces are those of
``docs/protocol.md``:

* one JSON object per line, ``\\n`` terminated; ``\\r\\n`` accepted and empty
  lines ignored;
* a line longer than ``max_line_length`` is fatal;
* invalid JSON, a non-object, or a command without a string ``id`` is fatal;
* a command with a non-object ``params`` or an unsupported ``version`` is
  answered with an error response, the connection stays up;
* a response whose ``id`` matches no outstanding command is reported as
  :class:`UnmatchedResponse` so the caller can log and drop it.

Whose fault an error is matters: :class:`RemoteProtocolError` (carried by the
:class:`ProtocolViolation` event) means the peer sent bad data and the session
must send a fatal error and close; :class:`LocalProtocolError` means our own
code misused this API, which is a bug.
"""

# Size: 715 lines, over the ~500 guideline: the whole wire contract (message
# vocabulary, framing and the Session state machine) stays one sans-IO module
# so that it reads as one text next to docs/protocol.md; Session alone is 282
# lines.

import dataclasses
import itertools
import json
import logging
import os
import typing

VERSION = "v1"
SUPPORTED_VERSIONS = (VERSION,)
DEFAULT_MAX_LINE_LENGTH = 1024 * 1024


# -- wire errors -------------------------------------------------------------

class WireError(Exception):
    """An error that is sent to the peer as an error response.

    ``type`` is the stable machine-readable name, ``code`` the JSON-RPC 2.0
    number (or one from its implementation-defined server range -32000 to
    -32099 where JSON-RPC has none), ``msg`` a sentence for humans and
    ``details`` an optional object with structured data.
    """

    type = "InternalError"
    code = -32603

    def __init__(self, msg, details=None):
        super().__init__(msg)
        self.msg = str(msg)
        self.details = details

    def to_dict(self):
        error = {"type": self.type, "code": self.code, "msg": self.msg}
        if self.details is not None:
            error["details"] = self.details
        return error

    @staticmethod
    def from_dict(error):
        """The error an error object (as :meth:`to_dict` makes it, from a
        peer) describes: an instance of the subclass its ``type`` names,
        or, for a type this side does not know (or none), a plain
        :class:`WireError` carrying the ``type`` and ``code`` received
        (None where absent). ``msg`` is "" when absent; a non-object
        becomes a plain WireError whose ``msg`` is its text.
        """
        if not isinstance(error, dict):
            error = {"msg": str(error)}
        msg = error.get("msg")
        msg = "" if msg is None else msg
        known = _ERRORS_BY_TYPE.get(error.get("type")) \
            if isinstance(error.get("type"), str) else None
        if known is not None:
            exc = known(msg, error.get("details"))
            if error.get("code") != known.code:
                exc.code = error.get("code")
            return exc
        exc = WireError(msg, error.get("details"))
        exc.type = error.get("type")
        exc.code = error.get("code")
        return exc


class InvalidRequest(WireError):
    type = "InvalidRequest"
    code = -32600


class UnknownMethod(WireError):
    type = "UnknownMethod"
    code = -32601


class InvalidParams(WireError):
    type = "InvalidParams"
    code = -32602


class InternalError(WireError):
    type = "InternalError"
    code = -32603


class UnsupportedVersion(WireError):
    type = "UnsupportedVersion"
    code = -32001


class Busy(WireError):
    type = "Busy"
    code = -32002


class NotFound(WireError):
    type = "NotFound"
    code = -32003


class ResponseTooLarge(WireError):
    type = "ResponseTooLarge"
    code = -32004


class Conflict(WireError):
    """A ``task_id`` sent again with another method or other parameters.

    ``details`` carries ``task_id`` and ``method``, the method of the task
    that already holds the id.
    """

    type = "Conflict"
    code = -32005


#: The wire error classes by ``type``.
_ERRORS_BY_TYPE = {cls.type: cls for cls in (
    InvalidRequest, UnknownMethod, InvalidParams, InternalError,
    UnsupportedVersion, Busy, NotFound, ResponseTooLarge, Conflict)}


class RemoteProtocolError(Exception):
    """The peer broke the framing or message rules (its fault)."""


class LocalProtocolError(Exception):
    """Our own code used the session wrongly (a bug on this side)."""


class LineTooLong(LocalProtocolError):
    """A message of ours is longer than the peer accepts.

    Raised before anything is written: the caller must send something
    smaller (or nothing). ``size`` and ``limit`` are in bytes, without the
    line terminator.
    """

    def __init__(self, msg, size, limit):
        super().__init__(msg)
        self.size = size
        self.limit = limit


# -- messages ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    id: str
    method: str
    params: dict
    version: str = VERSION

    def to_wire(self):
        return {"version": self.version, "id": self.id,
                "method": self.method, "params": self.params}


@dataclasses.dataclass(frozen=True)
class Response:
    """A success (``error is None``) or error response."""

    id: str
    result: typing.Optional[dict] = None
    error: typing.Optional[dict] = None
    version: typing.Optional[str] = VERSION

    @property
    def ok(self):
        return self.error is None

    def to_wire(self):
        message = {"version": self.version or VERSION, "id": self.id}
        if self.error is not None:
            message["error"] = self.error
        else:
            message["result"] = self.result if self.result is not None else {}
        return message


@dataclasses.dataclass(frozen=True)
class FatalError:
    message: str

    def to_wire(self):
        return {"fatal_error": self.message}


# -- events produced by Session.receive_data ---------------------------------

@dataclasses.dataclass(frozen=True)
class CommandReceived:
    """A well-formed command; the application must answer it exactly once."""

    command: Command


@dataclasses.dataclass(frozen=True)
class CommandRejected:
    """A command the protocol layer itself must answer with ``error``.

    The session has not answered it: send ``session.send_error(id, error)``.
    """

    id: str
    error: WireError


@dataclasses.dataclass(frozen=True)
class ResponseReceived:
    """The answer to a command this side sent and is still waiting for."""

    response: Response
    method: str


@dataclasses.dataclass(frozen=True)
class UnmatchedResponse:
    """A response whose id matches no outstanding command: log and drop."""

    response: typing.Any


@dataclasses.dataclass(frozen=True)
class FatalErrorReceived:
    """The peer sent ``fatal_error`` and will close the connection."""

    message: str


@dataclasses.dataclass(frozen=True)
class ProtocolViolation:
    """The peer broke the protocol: send ``session.send_fatal(reason)``."""

    reason: str


@dataclasses.dataclass(frozen=True)
class ConnectionClosed:
    """End of stream; ``partial`` is True when a partial line was lost."""

    partial: bool = False


def _reject_constant(name):
    raise ValueError("%s is not valid JSON" % name)


# One decoder and one encoder for every line: ``json.loads`` and
# ``json.dumps`` build a new one per call whenever an option is given, which
# cost more than the parsing of a typical message (measured at 20,000
# messages a second per endpoint process). Both are safe to share between
# threads: they keep no state between calls.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False)


def decode_json(line):
    """Decode one line to a Python value; ValueError when it is not JSON."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("line is not valid UTF-8: %s" % exc) from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def encode_json(message):
    """Encode one message (a dict) to a terminated line.

    ``ensure_ascii`` keeps the output valid UTF-8 even when a string that was
    received holds a lone surrogate escape, which a ping may echo back.
    """
    return (_ENCODER.encode(message) + "\n").encode("ascii")


def encoded_size(value):
    """Bytes of ``value`` as :func:`encode_json` writes it inside a message.

    The compact encoding puts nothing between the parts of a message, so the
    size of a message is the sum of the sizes of its parts and their
    punctuation; callers use it to budget a list against a line limit.
    """
    return len(_ENCODER.encode(value))


def printable(text, limit=500):
    """Peer-supplied text made safe for a log line.

    The result is a quoted JSON string: control characters, newlines and
    non-ASCII are escaped, so a peer cannot forge log lines; text beyond
    ``limit`` characters is cut and the cut is marked.
    """
    text = str(text)
    if len(text) > limit:
        return json.dumps(text[:limit]) + "... (%d characters)" % len(text)
    return json.dumps(text)


def escape_unprintable(text):
    """``text`` with every character that is not printable (control
    characters, newlines, tabs, bidirectional overrides, lone surrogates)
    replaced by its backslash escape (``\\x1b``, ``\\n``, ``\\u202e``);
    printable text, non-ASCII letters included, is returned as it is.
    Escaping twice changes nothing more."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable()
        else char.encode("unicode_escape", "backslashreplace").decode("ascii")
        for char in text)


class EscapingLogFilter(logging.Filter):
    """A handler filter that makes every record one line of printable
    text (:func:`escape_unprintable`).

    Log lines quote what peers, image servers and images supply (URLs,
    HTTP reasons, tool output); on the ramdisk console and in log files a
    newline in such text would forge a record and an escape sequence would
    drive the operator's terminal. A traceback the formatter appends is
    the program's own and is left as it is.
    """

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # a broken record is logging's to report
            return True
        safe = escape_unprintable(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


def install_log_escaping(logger=None):
    """Add an :class:`EscapingLogFilter` to every handler of ``logger``
    (the root logger by default) that has none yet."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, EscapingLogFilter)
                   for f in handler.filters):
            handler.addFilter(EscapingLogFilter())


def shorten_to_fit(message, field, room, marker=" [truncated]"):
    """A copy of ``message`` whose string ``field`` is cut to fit ``room``.

    ``room`` is the largest :func:`encoded_size` the whole message may
    have. The text is cut at a character boundary and ends with
    ``marker``. Returns None when even an empty ``field`` does not fit.
    """
    text = message.get(field)
    if encoded_size(message) <= room:
        return message
    if not isinstance(text, str):
        return None
    shorter = dict(message)
    low, high = 0, len(text)
    best = None
    while low <= high:
        middle = (low + high) // 2
        shorter[field] = text[:middle] + marker
        if encoded_size(shorter) <= room:
            best = middle
            low = middle + 1
        else:
            high = middle - 1
    if best is None:
        shorter[field] = ""
        return shorter if encoded_size(shorter) <= room else None
    shorter[field] = text[:best] + marker
    return shorter


class LineSplitter:
    """Cuts a byte stream into lines, enforcing the maximum line length."""

    def __init__(self, max_line_length=DEFAULT_MAX_LINE_LENGTH):
        self.max_line_length = max_line_length
        self._buffer = bytearray()
        self._scanned = 0

    @property
    def pending(self):
        return len(self._buffer)

    def feed(self, data):
        """Add data; yield complete lines without terminators.

        Raises RemoteProtocolError as soon as a line is known to be too long,
        without waiting for its end, so a peer cannot make us buffer it.
        """
        self._buffer += data
        while True:
            index = self._buffer.find(b"\n", self._scanned)
            if index < 0:
                self._scanned = len(self._buffer)
                if self._too_long(len(self._buffer)):
                    raise RemoteProtocolError(
                        "line longer than %d bytes" % self.max_line_length)
                return
            line = bytes(self._buffer[:index])
            del self._buffer[:index + 1]
            self._scanned = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_length:
                raise RemoteProtocolError(
                    "line longer than %d bytes" % self.max_line_length)
            yield line

    def _too_long(self, length):
        # A trailing "\r" may still be followed by "\n"; allow for it.
        return length > self.max_line_length + 1


class Session:
    """The state of one protocol connection, from this side's point of view.

    Feed received bytes to :meth:`receive_data` and act on the events it
    returns; use the ``send_*`` methods to get the bytes to write.

    Receiving ends (``receive_closed``) at a protocol violation, a fatal error
    from the peer or the end of the stream; answers to commands already
    received may still be encoded then. Once a fatal error has been sent the
    session is ``closed`` and further sending raises
    :class:`LocalProtocolError`.
    """

    def __init__(self, max_line_length=DEFAULT_MAX_LINE_LENGTH,
                 id_prefix=None):
        self._lines = LineSplitter(max_line_length)
        self._outstanding = {}
        self._prefix = id_prefix or os.urandom(4).hex()
        self._counter = itertools.count(1)
        self.closed = False
        self.receive_closed = False
        self.close_reason = None
        self.peer_max_line_length = None

    @property
    def max_line_length(self):
        return self._lines.max_line_length

    def limit_sent_lines(self, limit):
        """From now on send no line longer than ``limit`` bytes.

        The peer announced the longest line it accepts. Commands that do
        not fit raise :class:`LineTooLong`; results that do not fit become
        ``ResponseTooLarge`` error responses.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                limit < 1:
            raise LocalProtocolError("a line limit must be a positive int, "
                                     "not %r" % (limit,))
        self.peer_max_line_length = limit

    @property
    def response_limit(self):
        """The longest response line sent: the peer's announced limit, else
        our own (a peer that announced none is assumed to match it)."""
        if self.peer_max_line_length is not None:
            return self.peer_max_line_length
        return self.max_line_length

    def room_for_params(self, method, limit=None):
        """The largest :func:`encoded_size` the params of a ``method``
        command may have in a line of ``limit`` bytes (default: the peer's
        announced limit); None when there is no limit."""
        if limit is None:
            limit = self.peer_max_line_length
        if limit is None:
            return None
        # The longest id new_id() can produce: prefix, "-", 20 digits.
        envelope = Command("x" * (len(self._prefix) + 21), method, {})
        return limit - (len(encode_json(envelope.to_wire())) - 1) + 2

    def room_for_result(self, command_id):
        """The largest :func:`encoded_size` the result of the answer to
        ``command_id`` may have."""
        envelope = Response(command_id, result={})
        return self.response_limit - (
            len(encode_json(envelope.to_wire())) - 1) + 2

    @property
    def outstanding(self):
        """Ids of commands sent and not yet answered, mapped to methods."""
        return dict(self._outstanding)

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data):
        """Feed bytes; ``b""`` means the peer closed. Returns a list of events.

        After a :class:`ProtocolViolation` or :class:`FatalErrorReceived`
        event no further events are produced for the data that followed.
        """
        if self.receive_closed:
            return []
        if not data:
            self._stop_receiving("end of stream")
            return [ConnectionClosed(partial=self._lines.pending > 0)]
        events = []
        try:
            for line in self._lines.feed(data):
                if not line.strip():
                    continue
                event = self._parse_line(line)
                events.append(event)
                if isinstance(event, (ProtocolViolation, FatalErrorReceived)):
                    self._stop_receiving(getattr(event, "reason", None)
                                         or getattr(event, "message", None))
                    break
        except RemoteProtocolError as exc:
            events.append(ProtocolViolation(str(exc)))
            self._stop_receiving(str(exc))
        return events

    def _parse_line(self, line):
        try:
            message = decode_json(line)
        except ValueError as exc:
            return ProtocolViolation("message is not valid JSON: %s" % exc)
        if not isinstance(message, dict):
            return ProtocolViolation("message is not a JSON object")
        if "method" in message:
            return self._parse_command(message)
        if "fatal_error" in message:
            return FatalErrorReceived(str(message["fatal_error"]))
        if "result" in message or "error" in message:
            return self._parse_response(message)
        if isinstance(message.get("id"), str):
            return CommandRejected(message["id"], InvalidRequest(
                "message is neither a command nor a response"))
        return ProtocolViolation(
            "message is neither a command nor a response and has no id")

    def _parse_command(self, message):
        command_id = message.get("id")
        if not isinstance(command_id, str):
            return ProtocolViolation("command has no string id")
        version = message.get("version")
        if version not in SUPPORTED_VERSIONS:
            return CommandRejected(command_id, UnsupportedVersion(
                "unsupported protocol version %s; supported: %s"
                % (json.dumps(version), ", ".join(SUPPORTED_VERSIONS)),
                details={"supported": list(SUPPORTED_VERSIONS)}))
        method = message["method"]
        if not isinstance(method, str) or not method:
            return CommandRejected(command_id, InvalidRequest(
                "method must be a non-empty string"))
        params = message.get("params", {})
        if not isinstance(params, dict):
            return CommandRejected(command_id, InvalidParams(
                "params must be an object", details={"param": "params"}))
        return CommandReceived(Command(command_id, method, params, version))

    def _parse_response(self, message):
        response_id = message.get("id")
        if not isinstance(response_id, str) or \
                response_id not in self._outstanding:
            return UnmatchedResponse(message)
        error = message.get("error")
        if "error" in message:
            if not isinstance(error, dict):
                error = {"type": "InvalidResponse", "code": -32603,
                         "msg": "peer sent a non-object error: %r" % (error,)}
            result = None
        else:
            result = message.get("result")
            if not isinstance(result, dict):
                # The contract says result is an object; keep the value
                # but mark the answer as an error so callers do not trust it.
                error = {"type": "InvalidResponse", "code": -32603,
                         "msg": "peer sent a non-object result",
                         "details": {"result": result}}
                result = None
        method = self._outstanding.pop(response_id)
        return ResponseReceived(
            Response(response_id, result, error, message.get("version")),
            method)

    # -- sending -------------------------------------------------------------

    def new_id(self):
        return "%s-%d" % (self._prefix, next(self._counter))

    def send_command(self, method, params=None, command_id=None):
        """Return ``(id, bytes)`` for a new command; it becomes outstanding."""
        self._check_open()
        if params is None:
            params = {}
        if not isinstance(method, str) or not isinstance(params, dict):
            raise LocalProtocolError("method must be str and params a dict")
        command_id = command_id or self.new_id()
        if command_id in self._outstanding:
            raise LocalProtocolError("id %s is already outstanding"
                                     % command_id)
        try:
            data = encode_json(Command(command_id, method, params).to_wire())
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError("params of %s cannot be sent as JSON: "
                                     "%s" % (method, exc)) from None
        limit = self.peer_max_line_length
        if limit is not None and len(data) - 1 > limit:
            raise LineTooLong("a %s command of %d bytes is longer than the "
                              "%d bytes the peer accepts"
                              % (method, len(data) - 1, limit),
                              len(data) - 1, limit)
        self._outstanding[command_id] = method
        return command_id, data

    def forget(self, command_id):
        """Stop waiting for an answer (a timed-out call); a late one is
        then reported as :class:`UnmatchedResponse`."""
        self._outstanding.pop(command_id, None)

    def send_result(self, command_id, result):
        self._check_open()
        if not isinstance(result, dict):
            raise LocalProtocolError("a result must be a dict, not %s"
                                     % type(result).__name__)
        try:
            data = encode_json(Response(command_id, result=result).to_wire())
        except (TypeError, ValueError) as exc:
            # A value JSON cannot carry (an infinite number the peer sent,
            # a set from a plugin): the command still gets its one answer.
            return self.send_error(command_id, InternalError(
                "the result cannot be sent as JSON: %s" % exc))
        limit = self.response_limit
        if len(data) - 1 > limit:
            return self.send_error(command_id, ResponseTooLarge(
                "the result of %d bytes is larger than the %d-byte line "
                "limit" % (len(data) - 1, limit),
                details={"size": len(data) - 1, "limit": limit}))
        return data

    def send_error(self, command_id, error):
        """Bytes of an error response.

        An error that does not fit the line limit is replaced by a short
        ``ResponseTooLarge`` naming its type; raises :class:`LineTooLong`
        when not even that fits (an id longer than the limit).
        """
        self._check_open()
        if isinstance(error, WireError):
            error = error.to_dict()
        try:
            data = encode_json(Response(command_id, error=error).to_wire())
        except (TypeError, ValueError) as exc:
            data = encode_json(Response(command_id, error=InternalError(
                "the error cannot be sent as JSON: %s" % exc).to_dict()
            ).to_wire())
        limit = self.response_limit
        if len(data) - 1 > limit:
            kind = error.get("type") if isinstance(error, dict) else None
            if not isinstance(kind, str) or len(kind) > 64:
                kind = "original"
            too_large = ResponseTooLarge(
                "the %s error response of %d bytes is larger than the "
                "%d-byte line limit" % (kind, len(data) - 1, limit))
            data = encode_json(Response(
                command_id, error=too_large.to_dict()).to_wire())
            if len(data) - 1 > limit:
                raise LineTooLong("the id of command %.64s... is too long "
                                  "to answer" % command_id, len(data) - 1,
                                  limit)
        return data

    def send_fatal(self, reason):
        """Bytes of a fatal error; the session is closed afterwards.

        A reason too long for the peer's line limit is cut to fit.
        """
        message = FatalError(reason).to_wire()
        limit = self.peer_max_line_length
        if limit is not None:
            message = shorten_to_fit(message, "fatal_error", limit) or \
                {"fatal_error": ""}
        data = encode_json(message)
        self._close(reason)
        return data

    def _check_open(self):
        if self.closed:
            raise LocalProtocolError("session is closed (%s)"
                                     % self.close_reason)

    def _stop_receiving(self, reason):
        if not self.receive_closed:
            self.receive_closed = True
            self.close_reason = self.close_reason or reason

    def _close(self, reason):
        self._stop_receiving(reason)
        if not self.closed:
            self.closed = True
            self.close_reason = reason
