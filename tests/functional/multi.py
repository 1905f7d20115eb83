"""Several ``teeth-endpoint serve`` processes for the multi-process tests.

:class:`ServeProcess` is a :class:`harness.EndpointProcess` that may share
its port (``[endpoint] reuse_port``) and its database with others: its
control socket is the per-process one (``control.<pid>.sock``) when it
shares the port. Every process is stopped at test cleanup, also on failure.
"""

import os
import signal
import sys

from tests.functional import harness


class ServeProcess(harness.EndpointProcess):
    """``serve`` with the given overrides; ``control_dir`` may be shared
    by several processes (their sockets are told apart by pid)."""

    def __init__(self, workdir, control_dir, overrides=None):
        self.shared_control_dir = control_dir
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


def start_serve(testcase, workdir, overrides=None):
    """A :class:`ServeProcess` whose control sockets live in
    ``workdir/control``; stopped at cleanup whatever happens."""
    control_dir = os.path.join(workdir, "control")
    process = ServeProcess(workdir, control_dir, overrides)
    testcase.addCleanup(process.stop)
    process.wait_ready()
    return process


def migrate(url):
    """Bring the database at ``url`` to the code's schema, in a child
    process as an operator would (``teeth_agent.db.schema.upgrade``)."""
    done = harness.run_command([
        sys.executable, "-c",
        "import sys; from teeth_agent.db import schema; "
        "schema.upgrade(schema.make_engine(sys.argv[1]))", url], timeout=120)
    if done.returncode != 0:
        raise AssertionError("the migration failed: %s" % done.stderr)
