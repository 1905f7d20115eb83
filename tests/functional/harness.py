"""Real agent and endpoint processes, and a raw-socket protocol peer.

The core functional tests talk to a real ``teeth-agent`` and a real
``teeth-endpoint serve`` with nothing but sockets and the rules of
``docs/protocol.md``; this module gives them the pieces:

* :class:`JsonLinePeer`: one side of a connection, speaking JSON lines over a
  plain (or TLS) socket with bounded waits everywhere. It answers the
  peer's commands through a policy the test chooses and keeps every message
  it received, in order.
* :class:`ListeningServer`: a listening socket on 127.0.0.1 playing the
  endpoint, so a real agent can be pointed at it.
* :class:`AgentProcess` and :class:`EndpointProcess`: the console scripts run
  as child processes (``python -m``, so tox venvs work) with temporary
  config files; they are stopped by :meth:`ManagedProcess.stop`, which the
  ``start_*`` helpers register as test cleanup so a failing test never
  leaves one behind.

Everything speaks TLS by default, as the shipped defaults do: a
session-wide throwaway CA (:func:`tls_material`, made with
:mod:`teeth_agent.pki`) signs a certificate for 127.0.0.1 that endpoints
started here serve and that agents started here verify. A test that needs
plaintext says so with the overrides :data:`PLAINTEXT_AGENT` (``{"tls":
{"enabled": "false"}}``) and :data:`PLAINTEXT_ENDPOINT` (``{"endpoint":
{"tls_enabled": "false"}}``). :func:`connect_peer` wraps its socket in TLS
when the port belongs to a TLS endpoint started here, and
:class:`ListeningServer` answers a TLS ClientHello with TLS and plaintext
with plaintext, so raw-socket tests work either way.

Agents started here never see a real disk (``[hardware] device_include`` is
a pattern nothing matches), never reboot or kexec (``[power] simulate``)
and keep their task state in a temporary directory. Only 127.0.0.1 is used.
"""

import atexit
import collections
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from teeth_agent import pki
from tests import result_schemas

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGINS_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "plugins")
HOST = "127.0.0.1"

# Generous bounds: they only decide how long a broken build takes to fail.
START_TIMEOUT = 60.0
MESSAGE_TIMEOUT = 30.0

_PR_SET_PDEATHSIG = 1


#: Overrides for a test that needs a plaintext agent or endpoint.
PLAINTEXT_AGENT = {"tls": {"enabled": "false"}}
PLAINTEXT_ENDPOINT = {"endpoint": {"tls_enabled": "false"}}

_TLS_HANDSHAKE_RECORD = 0x16  # the first byte of a TLS ClientHello


class PeerTimeout(AssertionError):
    """An expected message did not arrive within the bound."""


class PeerClosed(AssertionError):
    """The connection closed while a message was still expected."""


# -- small helpers ----------------------------------------------------------


def no_delay(sock):
    """Turn Nagle's algorithm off on ``sock`` and return it.

    The real agent and endpoint do (``transport.sockets``); a stand-in that
    did not would hold a command written right after an answer (a ``ping``
    after the answer to a ``task_status``) until the agent's delayed ACK,
    about 40 ms, and a latency measured through it would be its own.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def refused_port():
    """A socket bound to a port on 127.0.0.1 without listening.

    Connections to its port are refused for as long as the socket stays open
    (no other process can take the port meanwhile). Returns ``(socket,
    port)``; the caller closes the socket.
    """
    sock = socket.socket()
    sock.bind((HOST, 0))
    return sock, sock.getsockname()[1]


def write_config(path, sections):
    """Write an oslo.config file: ``{section: {option: value}}``.

    Lists are joined with commas, booleans written as true/false.
    """
    lines = []
    for section, options in sections.items():
        lines.append("[%s]" % section)
        for name, value in options.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                value = ",".join(str(item) for item in value)
            lines.append("%s = %s" % (name, value))
        lines.append("")
    with open(path, "w") as stream:
        stream.write("\n".join(lines))
    return path


def merge_sections(base, overrides):
    """A new ``{section: {option: value}}``: ``base`` with ``overrides``.

    Neither argument changes.
    """
    merged = {section: dict(options) for section, options in base.items()}
    for section, options in (overrides or {}).items():
        merged.setdefault(section, {}).update(options)
    return merged


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll ``predicate()`` until it returns a true value (returned).

    Raises :class:`PeerTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise PeerTimeout("%s not reached within %ss" % (what, timeout))
        time.sleep(interval)


def is_command(message, method=None):
    return (isinstance(message, dict) and "method" in message
            and (method is None or message.get("method") == method))


def is_response(message, command_id=None):
    return (isinstance(message, dict) and "method" not in message
            and ("result" in message or "error" in message)
            and (command_id is None or message.get("id") == command_id))


def is_task_status(message, task_id=None):
    return (is_command(message, "task_status")
            and isinstance(message.get("params"), dict)
            and (task_id is None
                 or message["params"].get("task_id") == task_id))


def answer_core(message):
    """The default answer policy: what a plain endpoint would answer.

    ``ping`` echoes its params; ``log`` and ``task_status`` are acknowledged
    with ``{}``; anything else (the handshake included) is left to the test.
    """
    method = message.get("method")
    if method == "ping":
        return message.get("params")
    if method in ("log", "task_status"):
        return {}
    return None


def answer_nothing(message):
    """An answer policy for a peer that reads but never replies."""
    return None


# -- TLS ----------------------------------------------------------------------

class TLSMaterial:
    """The session's throwaway CA and the endpoint certificate it signed
    for 127.0.0.1 (and localhost), in a directory removed at exit."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="teeth-func-tls-")
        atexit.register(shutil.rmtree, self.directory, True)
        self.ca, self.server = pki.make_throwaway(self.directory)
        self.ca_file = self.ca.cert_path
        self.cert_file = self.server.cert_path
        self.key_file = self.server.key_path

    def client_context(self, cert=None):
        """An ``ssl.SSLContext`` trusting the session CA (``cert``: an
        optional ``(cert_file, key_file)`` to present)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            context.load_cert_chain(*cert)
        return context

    def server_context(self):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def agent_certificate(self, agent_id):
        """A client certificate for ``agent_id`` signed by the session CA;
        returns ``(cert_file, key_file)``."""
        directory = os.path.join(self.directory, "agents", agent_id)
        if not os.path.exists(os.path.join(directory, pki.AGENT_CERT)):
            pki.make_agent_certificate(self.ca, agent_id, directory)
        return (os.path.join(directory, pki.AGENT_CERT),
                os.path.join(directory, pki.AGENT_KEY))


_material = None


def tls_material():
    """The session-wide :class:`TLSMaterial`, made on first use."""
    global _material
    if _material is None:
        _material = TLSMaterial()
    return _material


def _is_false(value):
    return str(value).strip().lower() in ("false", "0", "no", "off")


#: Ports of the endpoints started here that serve TLS with the session's
#: certificate: :func:`connect_peer` wraps connections to them.
_tls_ports = {}


# -- the raw peer -----------------------------------------------------------

class JsonLinePeer:
    """One end of a protocol connection, driven by hand over a socket.

    Every line received is decoded and kept in :attr:`received` (a line that
    is not JSON is kept as ``{"_raw": bytes}``) and queued in an inbox from
    which :meth:`take` removes the first message matching a predicate.
    Commands from the other side are answered as they are read, by
    ``answer(message)``: it returns the result object, or None to leave the
    command unanswered (the test may then call :meth:`respond`).
    """

    def __init__(self, sock, name="peer", answer=answer_core):
        self.sock = sock
        self.name = name
        self.answer = answer
        self.received = []
        self.sent_ids = []
        self.closed = False
        self.close_error = None
        self._inbox = collections.deque()
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._prefix = "raw%d" % id(self)

    # -- sending -------------------------------------------------------------

    def send_raw(self, data, ignore_errors=False):
        """Write bytes as they are.

        With ``ignore_errors`` a peer that has already closed (as it must
        after a fatal error) is not an error.
        """
        self.sock.settimeout(MESSAGE_TIMEOUT)
        try:
            self.sock.sendall(data)
        except OSError:
            if not ignore_errors:
                raise

    def send(self, message):
        self.send_raw(json.dumps(message).encode("utf-8") + b"\n")

    def new_id(self):
        return "%s-%d" % (self._prefix, next(self._ids))

    def send_command(self, method, params=None, command_id=None,
                     version="v1"):
        """Send a command; returns its id."""
        command_id = command_id or self.new_id()
        message = {"id": command_id, "method": method,
                   "params": {} if params is None else params}
        if version is not None:
            message["version"] = version
        self.send(message)
        self.sent_ids.append(command_id)
        return command_id

    def call(self, method, params=None, timeout=MESSAGE_TIMEOUT, **kwargs):
        """Send a command and return the response message (a dict)."""
        command_id = self.send_command(method, params, **kwargs)
        return self.take_response(command_id, timeout)

    def respond(self, command, result=None, error=None):
        """Answer ``command`` (a received message) with a result or error."""
        message = {"version": "v1", "id": command["id"]}
        if error is not None:
            message["error"] = error
        else:
            message["result"] = {} if result is None else result
        self.send(message)

    # -- receiving -----------------------------------------------------------

    def take(self, predicate, timeout=MESSAGE_TIMEOUT, what="a message"):
        """Remove and return the first message matching ``predicate``.

        Reads more as needed, for up to ``timeout`` seconds.

        Raises :class:`PeerTimeout` or :class:`PeerClosed`, listing what did
        arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            for message in self._inbox:
                if predicate(message):
                    self._inbox.remove(message)
                    return message
            if self.closed:
                raise PeerClosed("%s closed (%s) before %s arrived; got %s"
                                 % (self.name, self.close_error, what,
                                    self._summary()))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout("no %s from %s within %ss; got %s"
                                  % (what, self.name, timeout,
                                     self._summary()))
            self._read(remaining)

    def take_response(self, command_id, timeout=MESSAGE_TIMEOUT):
        return self.take(lambda m: is_response(m, command_id), timeout,
                         what="response to %s" % command_id)

    def take_command(self, method, timeout=MESSAGE_TIMEOUT, predicate=None):
        return self.take(
            lambda m: is_command(m, method) and (predicate is None
                                                 or predicate(m)),
            timeout, what="%s command" % method)

    def take_any(self, timeout=MESSAGE_TIMEOUT):
        return self.take(lambda m: True, timeout, what="any message")

    def pending(self, predicate=None):
        """Messages received and not taken yet (matching ``predicate``)."""
        return [m for m in self._inbox if predicate is None or predicate(m)]

    def wait_closed(self, timeout=MESSAGE_TIMEOUT):
        """Read (answering commands) until the other side closes.

        Returns True when it closed within ``timeout``, else False.
        """
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._read(remaining)
        return True

    def close(self):
        if not self.closed:
            self.closed = True
            self.close_error = "closed by the test"
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _summary(self):
        text = json.dumps(self.received[-20:], default=repr)
        return text if len(text) < 4000 else text[:4000] + "..."

    def _read(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1024 * 1024)
        except socket.timeout:
            return
        except OSError as exc:
            # A reset is how a peer that closed with unread data ends.
            self.closed = True
            self.close_error = "%s: %s" % (type(exc).__name__, exc)
            return
        if not data:
            self.closed = True
            self.close_error = "end of stream"
        self._buffer += data
        while True:
            index = self._buffer.find(b"\n")
            if index < 0:
                break
            line = bytes(self._buffer[:index]).rstrip(b"\r")
            del self._buffer[:index + 1]
            if line.strip():
                self._received_line(line)

    def _received_line(self, line):
        try:
            message = json.loads(line)
        except ValueError:
            message = {"_raw": line}
        self.received.append(message)
        self._inbox.append(message)
        if is_task_status(message):
            # A real agent's final result fits its command's schema.
            result_schemas.check_status(message["params"])
        if is_command(message) and isinstance(message.get("id"), str):
            result = self.answer(message)
            if result is not None and not self.closed:
                try:
                    self.respond(message, result)
                except OSError as exc:
                    self.closed = True
                    self.close_error = "write failed: %s" % exc


def connect_peer(port, name="endpoint", answer=answer_core, tls=None,
                 server_hostname=None, timeout=MESSAGE_TIMEOUT):
    """A :class:`JsonLinePeer` connected to 127.0.0.1:``port``.

    ``tls`` is an ``ssl.SSLContext`` to wrap the socket with, False for
    plaintext; by default a connection to an endpoint started here with
    the session's TLS certificate is wrapped, any other is plaintext.
    """
    if tls is None and _tls_ports.get(port):
        tls = tls_material().client_context()
    sock = no_delay(socket.create_connection((HOST, port),
                                             timeout=timeout))
    if tls is False:
        tls = None
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=server_hostname or HOST)
    return JsonLinePeer(sock, name=name, answer=answer)


class ListeningServer:
    """A socket listening on 127.0.0.1, standing in for the endpoint.

    ``tls`` None (the default) serves whatever the agent speaks: a
    connection that opens with a TLS ClientHello is answered with the
    session's endpoint certificate, one that opens with anything else is
    plaintext. An ``ssl.SSLContext`` wraps every connection with it; False
    never wraps.
    """

    def __init__(self, port=0, tls=None):
        self.port = port
        self.tls = tls
        self.sock = None
        self.accepted_tls = []  # per accepted connection: True for TLS
        self.listen()

    def listen(self):
        """(Re)open the listening socket on :attr:`port` (0: a free one)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        sock.listen(16)
        self.sock = sock
        self.port = sock.getsockname()[1]

    @property
    def address(self):
        return "%s:%d" % (HOST, self.port)

    def accept(self, timeout=MESSAGE_TIMEOUT, answer=answer_core):
        """The next connection, as a :class:`JsonLinePeer`."""
        self.sock.settimeout(timeout)
        try:
            sock, address = self.sock.accept()
        except socket.timeout:
            raise PeerTimeout("no connection to %s within %ss"
                              % (self.address, timeout)) from None
        try:
            sock = self._secure(no_delay(sock), timeout)
        except (OSError, PeerTimeout):
            sock.close()
            raise
        sock.settimeout(None)
        return JsonLinePeer(sock, name="agent at %s:%d" % address,
                            answer=answer)

    def _secure(self, sock, timeout):
        context = self.tls
        if context is None:
            sock.settimeout(timeout)
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except socket.timeout:
                raise PeerTimeout("the agent connected to %s but sent "
                                  "nothing within %ss"
                                  % (self.address, timeout)) from None
            if first and first[0] == _TLS_HANDSHAKE_RECORD:
                context = tls_material().server_context()
        if not context:
            self.accepted_tls.append(False)
            return sock
        sock.settimeout(timeout)
        secured = context.wrap_socket(sock, server_side=True)
        self.accepted_tls.append(True)
        return secured

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def accept_handshake(server, timeout=MESSAGE_TIMEOUT, answer=answer_core,
                     reply=None):
    """Accept an agent's connection and answer its handshake.

    The first message must be the handshake command; it is answered with
    ``reply`` (default ``{}``).

    Returns ``(peer, handshake message)``.
    """
    peer = server.accept(timeout, answer=answer)
    try:
        first = peer.take_any(timeout)
        if not is_command(first, "handshake"):
            raise AssertionError("the first message is not a handshake: %r"
                                 % (first,))
        peer.respond(first, {} if reply is None else reply)
    except BaseException:
        peer.close()
        raise
    return peer, first


# -- processes --------------------------------------------------------------

def _die_with_parent():
    # A test run killed outright must not leave agents behind.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def plugin_env(extra=None):
    """The environment of child processes: the test plugins importable."""
    env = dict(os.environ)
    paths = [PLUGINS_DIR, REPO_ROOT]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ManagedProcess:
    """A child process whose output goes to a file in ``workdir``."""

    name = "process"
    #: Prepended to the argv (e.g. to run it in a network namespace).
    argv_prefix = ()

    def __init__(self, argv, workdir, env=None):
        argv = list(self.argv_prefix) + list(argv)
        self.argv = argv
        self.workdir = workdir
        self.log_path = os.path.join(
            workdir, "%s-%d.log" % (self.name, time.monotonic_ns()))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, env=env or plugin_env(),
            cwd=workdir, preexec_fn=_die_with_parent)

    @property
    def pid(self):
        return self.process.pid

    def output(self):
        with open(self.log_path, "rb") as stream:
            return stream.read().decode("utf-8", "replace")

    def wait_for_output(self, pattern, timeout=START_TIMEOUT, count=1):
        """Wait until ``pattern`` (a regex) matched ``count`` times.

        Returns the last match. Fails early if the process exits.
        """
        regex = re.compile(pattern)

        def matched():
            matches = list(regex.finditer(self.output()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.process.poll() is not None:
                raise AssertionError(
                    "%s exited with %s before printing %r; output:\n%s"
                    % (self.name, self.process.returncode, pattern,
                       self.output()[-4000:]))
            return None
        return wait_until(matched, timeout, what="%r in %s output"
                          % (pattern, self.name))

    def count_output(self, pattern):
        return len(re.findall(pattern, self.output()))

    def wait_exit(self, timeout=START_TIMEOUT):
        """Wait for the process to end and return its exit code.

        Kills the process and fails if it still runs after ``timeout``.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("%s did not exit within %ss; output:\n%s"
                                 % (self.name, timeout, self.output()[-4000:]))

    def stop(self):
        """Terminate (then kill) the process; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not self._log.closed:
            self._log.close()


def agent_sections(state_dir, endpoints, overrides=None):
    """The config sections of a test agent.

    The ``testing`` extension, simulated power, no visible disk, short
    timers, TLS trusting the session CA (unless ``overrides`` turn TLS
    off); ``overrides`` is merged over that.
    """
    base = {
        "DEFAULT": {
            "endpoints": list(endpoints),
            "enabled_extensions": ["testing"],
            "state_dir": state_dir,
            "reconnect_initial_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "connect_timeout": 5.0,
            "keepalive_interval": 5.0,
            "keepalive_timeout": 10.0,
            "call_timeout": 10.0,
            "task_status_interval": 0.05,
            "log_forward_level": "INFO",
            "debug": False,
        },
        "power": {"simulate": True},
        "hardware": {"device_include": ["/nonexistent"]},
    }
    sections = merge_sections(base, overrides)
    tls = sections.setdefault("tls", {})
    if not _is_false(tls.get("enabled", True)):
        tls.setdefault("ca_file", tls_material().ca_file)
    return sections


class AgentProcess(ManagedProcess):
    """``teeth-agent --config-file FILE`` in a temporary directory."""

    name = "agent"

    def __init__(self, workdir, endpoints, overrides=None, args=()):
        self.config_path = os.path.join(
            workdir, "agent-%d.conf" % time.monotonic_ns())
        state_dir = os.path.join(workdir, "state")
        write_config(self.config_path,
                     agent_sections(state_dir, endpoints, overrides))
        super().__init__([sys.executable, "-m", "teeth_agent.cmd.agent",
                          "--config-file", self.config_path] + list(args),
                         workdir)


def endpoint_sections(control_socket, overrides=None):
    base = {
        "DEFAULT": {"debug": False},
        "endpoint": {
            "listen_host": HOST,
            "listen_port": 0,
            "control_socket": control_socket,
            # Never the default /var/lib/teeth-endpoint: each endpoint
            # started here keeps its tokens next to its control socket.
            "state_dir": os.path.join(os.path.dirname(control_socket),
                                      "endpoint-state"),
            "handshake_timeout": 10.0,
            "keepalive_interval": 60.0,
            "keepalive_timeout": 30.0,
            "call_timeout": 15.0,
        },
    }
    sections = merge_sections(base, overrides)
    endpoint = sections["endpoint"]
    if not _is_false(endpoint.get("tls_enabled", True)) and \
            not endpoint.get("tls_cert_file"):
        endpoint["tls_cert_file"] = tls_material().cert_file
        endpoint["tls_key_file"] = tls_material().key_file
    return sections


def parse_json_lines(text):
    """The objects of ``teeth-endpoint agents --json``: one a line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def endpoint_cli_argv(config_path, *args):
    """The argv of ``teeth-endpoint --config-file CONFIG ARGS...``."""
    return [sys.executable, "-m", "teeth_agent.cmd.endpoint",
            "--config-file", config_path] + list(args)


def run_command(argv, timeout=60, cwd="/"):
    """Run a short command to its end.

    Returns the CompletedProcess with text stdout and stderr. Raises
    ``subprocess.TimeoutExpired`` (after killing it) when it runs longer
    than ``timeout``.
    """
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout, env=plugin_env(), cwd=cwd,
                          stdin=subprocess.DEVNULL)


class EndpointProcess(ManagedProcess):
    """``teeth-endpoint serve`` on a free port, private control socket.

    :meth:`cli` runs the other subcommands against it.
    """

    name = "endpoint"

    def __init__(self, workdir, overrides=None):
        self.control_socket = os.path.join(workdir, "control",
                                           "control.sock")
        self.config_path = os.path.join(
            workdir, "endpoint-%d.conf" % time.monotonic_ns())
        sections = endpoint_sections(self.control_socket, overrides)
        write_config(self.config_path, sections)
        self.tls = not _is_false(sections["endpoint"].get("tls_enabled",
                                                          True))
        self.session_tls = self.tls and sections["endpoint"].get(
            "tls_cert_file") == tls_material().cert_file
        self.port = None
        super().__init__([sys.executable, "-m", "teeth_agent.cmd.endpoint",
                          "--config-file", self.config_path, "serve"],
                         workdir)

    def wait_ready(self, timeout=START_TIMEOUT):
        """Wait until the server listens; sets and returns :attr:`port`."""
        match = self.wait_for_output(
            r"teeth-endpoint listening on [^\s:]+:(\d+)", timeout)
        self.port = int(match.group(1))
        _tls_ports[self.port] = self.session_tls
        wait_until(lambda: os.path.exists(self.control_socket), timeout,
                   what="control socket")
        return self.port

    @property
    def address(self):
        return "%s:%d" % (HOST, self.port)

    def cli(self, *args, timeout=60):
        """Run ``teeth-endpoint --config-file F ARGS...`` against it.

        Returns the CompletedProcess (text stdout and stderr).
        """
        return run_command(endpoint_cli_argv(self.config_path, *args),
                           timeout=timeout, cwd=self.workdir)

    def agents(self):
        """The connected agents, from ``teeth-endpoint agents --json``."""
        done = self.cli("agents", "--json", timeout=30)
        if done.returncode != 0:
            raise AssertionError("agents --json failed (%d): %s"
                                 % (done.returncode, done.stderr))
        return [agent for agent in parse_json_lines(done.stdout)
                if agent["connected"]]


# -- wiring into unittest ---------------------------------------------------

def make_workdir(testcase, cls_level=False):
    """A temporary directory removed at (class) cleanup."""
    workdir = tempfile.mkdtemp(prefix="teeth-func-")
    add = testcase.addClassCleanup if cls_level else testcase.addCleanup
    add(subprocess.run, ["rm", "-rf", workdir], check=False)
    return workdir


def start_agent(testcase, endpoints, overrides=None, workdir=None,
                cls_level=False, args=()):
    """Start an agent; it is stopped at (class) cleanup whatever happens."""
    workdir = workdir or make_workdir(testcase, cls_level)
    agent = AgentProcess(workdir, endpoints, overrides, args)
    (testcase.addClassCleanup if cls_level else testcase.addCleanup)(
        agent.stop)
    return agent


def start_endpoint(testcase, overrides=None, workdir=None, cls_level=False):
    """Start an endpoint and wait until it listens.

    It is stopped at (class) cleanup whatever happens, also when it fails
    to come up.
    """
    workdir = workdir or make_workdir(testcase, cls_level)
    endpoint = EndpointProcess(workdir, overrides)
    (testcase.addClassCleanup if cls_level else testcase.addCleanup)(
        endpoint.stop)
    endpoint.wait_ready()
    return endpoint


def start_server(testcase, port=0, cls_level=False, tls=None):
    """A :class:`ListeningServer` closed at (class) cleanup."""
    server = ListeningServer(port, tls=tls)
    (testcase.addClassCleanup if cls_level else testcase.addCleanup)(
        server.close)
    return server


def unix_exchange_as(uid, gid, path, payload, timeout=MESSAGE_TIMEOUT):
    """Connect to the Unix socket ``path`` as ``uid``/``gid``, send bytes.

    A forked child drops its privileges before connecting, so the server
    sees exactly those credentials (SO_PEERCRED) without any interpreter
    having to be executable by that user. Returns a dict: ``connect_errno``
    when the connection was refused by the file system, else ``data`` (what
    arrived up to the first newline or the end) and ``closed`` (the server
    closed the connection), or ``timed_out``.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        outcome = {}
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            outcome = _unix_exchange(path, payload, timeout)
        except BaseException as exc:
            outcome = {"child_error": repr(exc)}
        finally:
            try:
                os.write(write_fd, json.dumps(outcome).encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as stream:
        chunks.append(stream.read())
    os.waitpid(pid, 0)
    outcome = json.loads(b"".join(chunks) or b"{}")
    if "child_error" in outcome:
        raise AssertionError("the unprivileged client failed: %s"
                             % outcome["child_error"])
    return outcome


def _unix_exchange(path, payload, timeout):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        return {"connect_errno": exc.errno}
    data = b""
    closed = False
    try:
        sock.sendall(payload)
        while b"\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except socket.timeout:
        return {"data": data.decode("utf-8", "replace"), "timed_out": True}
    except OSError as exc:
        # A reset is a refusal too: the server closed without reading.
        return {"data": data.decode("utf-8", "replace"), "closed": True,
                "errno": exc.errno}
    finally:
        sock.close()
    return {"data": data.decode("utf-8", "replace"), "closed": closed}
