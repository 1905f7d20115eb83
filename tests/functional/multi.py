"""Several ``teeth-endpoint serve`` processes for the multi-process tests.

:class:`ServeProcess` is a :class:`harness.EndpointProcess` that may share
its port (``[endpoint] reuse_port``) and its database with others: its
control socket is the per-process one (``control.<pid>.sock``) when it
shares the port. Every process is stopped at test cleanup, also on failure.

:class:`Hosts` makes two "machines" on this one: two network namespaces
joined by a veth pair, in which processes run with a host name of their
own (a UTS namespace each), so endpoint processes see each other as on
another host and reach each other only over the veth addresses.
"""

import os
import shutil
import signal
import subprocess
import sys
import unittest

from tests.functional import harness


class ServeProcess(harness.EndpointProcess):
    """``serve`` with the given overrides; ``control_dir`` may be shared
    by several processes (their sockets are told apart by pid).
    ``argv_prefix`` runs it through another command (:meth:`Hosts.run`)."""

    def __init__(self, workdir, control_dir, overrides=None, argv_prefix=()):
        self.shared_control_dir = control_dir
        self.argv_prefix = tuple(argv_prefix)
        super().__init__(workdir, overrides)

    def wait_ready(self, timeout=harness.START_TIMEOUT):
        match = self.wait_for_output(
            r"teeth-endpoint listening on [^\s:]+:(\d+), control socket "
            r"(\S+)", timeout)
        self.port = int(match.group(1))
        self.control_socket = match.group(2)
        harness._tls_ports[self.port] = self.session_tls
        harness.wait_until(lambda: os.path.exists(self.control_socket),
                           timeout, what="control socket")
        return self.port

    def kill(self):
        """SIGKILL: nothing is flushed, no row is unregistered."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(harness.START_TIMEOUT)

    def own_config(self):
        """A copy of the config whose control_socket is this process's
        own socket (made once)."""
        config = self.config_path + ".own"
        if not os.path.exists(config):
            with open(self.config_path) as stream:
                text = stream.read()
            configured = os.path.join(self.shared_control_dir,
                                      "control.sock")
            with open(config, "w") as stream:
                stream.write(text.replace(configured, self.control_socket))
        return config

    def cli_on(self, *args, timeout=60):
        """A command sent to this process's own control socket."""
        return harness.run_command(
            harness.endpoint_cli_argv(self.own_config(), *args),
            timeout=timeout, cwd=self.workdir)


def start_serve(testcase, workdir, overrides=None, argv_prefix=()):
    """A :class:`ServeProcess` whose control sockets live in
    ``workdir/control``; stopped at cleanup whatever happens."""
    control_dir = os.path.join(workdir, "control")
    process = ServeProcess(workdir, control_dir, overrides, argv_prefix)
    testcase.addCleanup(process.stop)
    process.wait_ready()
    return process


class AgentIn(harness.AgentProcess):
    """A test agent run through ``argv_prefix`` (:meth:`Hosts.run`)."""

    def __init__(self, workdir, endpoints, overrides=None, argv_prefix=()):
        self.argv_prefix = tuple(argv_prefix)
        super().__init__(workdir, endpoints, overrides)


def require_root_and_ip(testcase):
    """Skip (with the reason) unless this runs as root with ``ip`` and
    ``unshare``; under CI (the CI variable set) fail instead."""
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    else:
        missing = [tool for tool in ("ip", "unshare", "hostname")
                   if shutil.which(tool) is None]
        if missing:
            reason = "network namespaces need %s" % ", ".join(missing)
    if reason is None:
        return
    if os.environ.get("CI"):
        testcase.fail("CI must run the cross-host tests, but " + reason)
    raise unittest.SkipTest(reason)


class Hosts:
    """Two network namespaces joined by a veth pair: ``address(0)`` and
    ``address(1)`` on one /24; loopback up in each. Removed at cleanup
    (deleting a namespace removes its end of the pair)."""

    def __init__(self, testcase, subnet="10.213.%d" % (os.getpid() % 250)):
        require_root_and_ip(testcase)
        tag = "teeth%d" % os.getpid()
        self.namespaces = ["%s-a" % tag, "%s-b" % tag]
        self.addresses = ["%s.1" % subnet, "%s.2" % subnet]
        ends = ["%sa" % tag[:10], "%sb" % tag[:10]]
        for namespace in self.namespaces:
            _ip("netns", "add", namespace)
            testcase.addCleanup(_ip, "netns", "delete", namespace,
                                check=False)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", ends[0], "netns", self.namespaces[0], "type",
            "veth", "peer", "name", ends[1], "netns", self.namespaces[1])
        for namespace, end, address in zip(self.namespaces, ends,
                                           self.addresses):
            _ip("-n", namespace, "addr", "add", address + "/24", "dev", end)
            _ip("-n", namespace, "link", "set", end, "up")

    def address(self, index):
        return self.addresses[index]

    def run(self, index, hostname):
        """The argv prefix that runs a command in namespace ``index`` with
        the host name ``hostname`` (a UTS namespace of its own)."""
        return ["ip", "netns", "exec", self.namespaces[index], "unshare",
                "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


def _ip(*args, check=True):
    done = subprocess.run(["ip"] + list(args), capture_output=True,
                          text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError("ip %s failed: %s" % (" ".join(args),
                                                   done.stderr.strip()))
    return done


def migrate(url):
    """Bring the database at ``url`` to the code's schema, in a child
    process as an operator would (``teeth_agent.db.schema.upgrade``)."""
    done = harness.run_command([
        sys.executable, "-c",
        "import sys; from teeth_agent.db import schema; "
        "schema.upgrade(schema.make_engine(sys.argv[1]))", url], timeout=120)
    if done.returncode != 0:
        raise AssertionError("the migration failed: %s" % done.stderr)
