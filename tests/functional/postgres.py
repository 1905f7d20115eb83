"""A throwaway PostgreSQL server for functional tests.

:class:`PostgresCluster` makes a cluster with ``initdb`` in a temporary
directory, starts it with ``pg_ctl`` listening on a Unix socket in that
directory and on 127.0.0.1 at a free port, and stops it (``pg_ctl stop -m
immediate``, then SIGKILL of the postmaster if that fails) and removes the
directory afterwards, also when the test fails: :func:`start_postgres`
registers the stop as a test cleanup, and an ``atexit`` hook stops any
cluster still running when the interpreter exits.

``initdb`` refuses to run as root, so when the tests run as root the
cluster belongs to an unprivileged user (``nobody`` unless
``TEETH_TEST_PG_USER`` names another); the directory is handed to that user
and the tools are run as it. The database superuser is named ``teeth`` and
``trust`` authentication is used: only this process's user can reach the
socket directory, and TCP is bound to 127.0.0.1.

Skips (``unittest.SkipTest``) when no PostgreSQL server binaries are
installed (``tools/install-system-packages`` installs them).
"""

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

#: The database superuser and the database the tests use.
USER = "teeth"
DATABASE = "teeth"
START_TIMEOUT = 60.0

_RUNNING = set()


def find_bindir():
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb, or None."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            try:
                version = int(os.path.basename(os.path.dirname(candidate)))
            except ValueError:
                continue
            found.append((version, candidate))
    return max(found)[1] if found else None


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as(user):
    """A preexec_fn dropping to ``user`` (None: stay who we are)."""
    if user is None:
        return None
    entry = pwd.getpwnam(user)

    def demote():
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    return demote


class PostgresCluster:
    """One throwaway cluster; :meth:`start`, then :attr:`url`, :meth:`stop`.
    """

    def __init__(self, bindir=None):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise unittest.SkipTest("PostgreSQL is not installed (no "
                                    "/usr/lib/postgresql/*/bin/initdb)")
        self.user = None
        if os.geteuid() == 0:
            self.user = os.environ.get("TEETH_TEST_PG_USER", "nobody")
        self.tempdir = None
        self.datadir = None
        self.socket_dir = None
        self.port = None
        self.postmaster_pid = None

    @property
    def url(self):
        """A SQLAlchemy URL (psycopg 3) over TCP to 127.0.0.1."""
        return "postgresql+psycopg://%s@127.0.0.1:%d/%s" % (
            USER, self.port, DATABASE)

    @property
    def socket_url(self):
        """The same database over the Unix socket in the temp dir."""
        return "postgresql+psycopg://%s@/%s?host=%s&port=%d" % (
            USER, DATABASE, self.socket_dir, self.port)

    def _tool(self, name, *args, check=True, timeout=START_TIMEOUT):
        env = dict(os.environ, LC_ALL="C", PGTZ="UTC")
        return subprocess.run(
            [os.path.join(self.bindir, name)] + list(args),
            cwd=self.tempdir, env=env, preexec_fn=_run_as(self.user),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=timeout, check=check,
            text=True)

    def start(self):
        self.tempdir = tempfile.mkdtemp(prefix="teeth-pg-")
        _RUNNING.add(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        self.datadir = os.path.join(self.tempdir, "data")
        self.socket_dir = os.path.join(self.tempdir, "run")
        os.mkdir(self.socket_dir, 0o700)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.tempdir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.tempdir, 0o700)
        self._tool("initdb", "-D", self.datadir, "-U", USER,
                   "--auth=trust", "-E", "UTF8", "--no-sync")
        self.port = _free_port()
        options = ("-c listen_addresses=127.0.0.1 -c port=%d "
                   "-c unix_socket_directories=%s -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=32MB"
                   % (self.port, self.socket_dir))
        result = self._tool("pg_ctl", "-D", self.datadir, "-l",
                            os.path.join(self.tempdir, "server.log"),
                            "-o", options, "-w", "-t",
                            str(int(START_TIMEOUT)), "start", check=False)
        if result.returncode != 0:
            raise RuntimeError("PostgreSQL did not start: %s\n%s"
                               % (result.stdout, self.log()))
        with open(os.path.join(self.datadir, "postmaster.pid")) as stream:
            self.postmaster_pid = int(stream.readline())
        self._tool("createdb", "-h", self.socket_dir, "-p", str(self.port),
                   "-U", USER, DATABASE)

    def log(self):
        try:
            with open(os.path.join(self.tempdir, "server.log")) as stream:
                return stream.read()[-4000:]
        except OSError:
            return ""

    def psql(self, sql):
        """Run ``sql`` with psql; returns its unaligned output."""
        return self._tool("psql", "-h", self.socket_dir, "-p",
                          str(self.port), "-U", USER, "-d", DATABASE,
                          "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-c", sql).stdout

    def stop(self):
        """Stop the server and remove its directory (safe to repeat)."""
        _RUNNING.discard(self)
        if self.tempdir is None:
            return
        if self.datadir and os.path.exists(
                os.path.join(self.datadir, "postmaster.pid")):
            try:
                self._tool("pg_ctl", "-D", self.datadir, "-m", "immediate",
                           "-w", "-t", "30", "stop", check=False, timeout=40)
            except (OSError, subprocess.SubprocessError):
                pass
        if self.postmaster_pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(
                    self.postmaster_pid):
                time.sleep(0.05)
            if _alive(self.postmaster_pid):
                try:
                    os.kill(self.postmaster_pid, signal.SIGKILL)
                except OSError:
                    pass
            self.postmaster_pid = None
        shutil.rmtree(self.tempdir, ignore_errors=True)
        self.tempdir = None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours counts as gone.
    try:
        with open("/proc/%d/stat" % pid) as stream:
            return stream.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def start_postgres(test):
    """A started cluster stopped at ``test``'s cleanup (a TestCase), or
    at the class's cleanup when ``test`` is a TestCase class."""
    cluster = PostgresCluster().start()
    if isinstance(test, type):
        test.addClassCleanup(cluster.stop)
    else:
        test.addCleanup(cluster.stop)
    return cluster


@atexit.register
def _stop_all():
    for cluster in list(_RUNNING):
        cluster.stop()
