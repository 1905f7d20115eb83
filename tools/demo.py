"""The teeth-agent demo: an endpoint and an agent on 127.0.0.1.

Starts an endpoint (in this process) and a real agent process talking TLS,
as they do by default, with a throwaway certificate authority made for the
run (:mod:`teeth_agent.pki`), shows the handshake, a ping and the status,
then, as root, runs a decommission and standby cycle on loop devices the
demo creates: quality control, secure erase, image caching, image write,
config drive and a simulated kexec.
Everything it creates (processes, loop devices, files) is removed at the
end, also after a failure or Ctrl-C.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from teeth_agent.cmd import display  # noqa: E402
from teeth_agent.endpoint import errors  # noqa: E402
from teeth_agent.endpoint import server as endpoint_mod  # noqa: E402
from teeth_agent import pki  # noqa: E402
from teeth_agent import transport  # noqa: E402
from tools import demo_cycle  # noqa: E402
from tools import demo_output  # noqa: E402

heading = demo_output.heading
show = demo_output.show


class Demo:
    def __init__(self, workdir, full_cycle):
        self.workdir = workdir
        self.full_cycle = full_cycle
        self.endpoint = None
        self.agent_process = None
        self.cycle = None
        # The same progress bar as teeth-endpoint call.
        self.progress = display.TaskProgress(sys.stdout, indent="   ")

    def agent_config(self, port, include, ca_file):
        path = os.path.join(self.workdir, "agent.conf")
        with open(path, "w") as stream:
            stream.write("[tls]\nca_file = %s\n" % ca_file)
            stream.write("[DEFAULT]\n"
                         "endpoints = 127.0.0.1:%d\n"
                         "state_dir = %s\n"
                         "reconnect_initial_delay = 0.2\n"
                         "reconnect_max_delay = 2\n"
                         "task_status_interval = 0.2\n"
                         "log_forward_level = WARNING\n"
                         "[power]\nsimulate = true\n"
                         "final_status_timeout = 10\n"
                         "[hardware]\ndevice_include = %s\n"
                         "[standbye]\nimage_cache_dir = %s\n"
                         "work_dir = %s\n"
                         "cache_reserve = 0\n"
                         % (port, os.path.join(self.workdir, "state"),
                            ",".join(include),
                            os.path.join(self.workdir, "cache"),
                            os.path.join(self.workdir, "work")))
        return path

    def on_event(self, event, agent, data):
        if event == "task_status":
            self.progress.update(data)
        elif event == "log":
            self.progress.note("   [agent log] %s %s"
                               % (data.get("level"), data.get("message")))

    def _end_bar(self):
        self.progress.finish()

    def run_task(self, agent_id, method, params, timeout=600):
        """Start a task, follow its progress bar, return its final state."""
        print("   -> %s %s" % (method, json.dumps(params)[:200]), flush=True)
        answer = self.endpoint.call(agent_id, method, params)
        # The first progress update may already be drawn: keep it below.
        self.progress.note("   <- %s" % json.dumps(answer))
        final = self.endpoint.wait_for_task(agent_id, params["task_id"],
                                            timeout=timeout)
        self._end_bar()
        if final is None:
            raise RuntimeError("%s did not finish in %ss" % (method, timeout))
        print("   %s: %s" % (params["task_id"], final["state"]), flush=True)
        if final["state"] == "error":
            print("   error: %s" % final.get("msg"), flush=True)
        return final

    def run(self):
        heading("starting an endpoint on 127.0.0.1")
        ca, server = pki.make_throwaway(os.path.join(self.workdir, "pki"))
        self.endpoint = endpoint_mod.Endpoint(
            host="127.0.0.1", port=0, tls_context=transport.server_tls_context(
                server.cert_path, server.key_path))
        self.endpoint.subscribe(self.on_event)
        port = self.endpoint.start()
        print("   listening on 127.0.0.1:%d over TLS (certificate from a "
              "throwaway CA: %s)" % (port, ca.cert_path))

        include = ["/nonexistent"]
        if self.full_cycle:
            self.cycle = demo_cycle.Cycle(self.workdir)
            include = self.cycle.prepare_devices()
            print("   loop devices for the agent: %s (files in %s)"
                  % (", ".join(include), self.cycle.devices.directory))

        heading("starting an agent process")
        config = self.agent_config(port, include, ca.cert_path)
        log_path = os.path.join(self.workdir, "agent.log")
        self.agent_process = subprocess.Popen(
            [sys.executable, "-m", "teeth_agent.cmd.agent",
             "--config-file", config],
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
        started = time.monotonic()
        agent = None
        while agent is None and time.monotonic() - started < 60 and \
                self.agent_process.poll() is None:
            agent = self.endpoint.wait_for_agent(timeout=0.5)
        if agent is None:
            with open(log_path) as stream:
                print(stream.read()[-3000:])
            raise RuntimeError("the agent did not connect")
        print("   agent %s connected after %.2fs (pid %d) over %s"
              % (agent.agent_id, time.monotonic() - started,
                 self.agent_process.pid, agent.connection.sock.version()))

        heading("handshake (agent -> endpoint)")
        show(agent.handshake)

        heading("ping (endpoint -> agent)")
        sent = {"hello": "teeth", "n": [1, 2, 3]}
        before = time.perf_counter()
        echoed = self.endpoint.call(agent.agent_id, "ping", sent)
        print("   sent %s, got %s back in %.2f ms"
              % (json.dumps(sent), json.dumps(echoed),
                 (time.perf_counter() - before) * 1000))

        heading("status")
        show(self.endpoint.call(agent.agent_id, "status", {}))

        if self.cycle is not None:
            self.cycle.run(self, agent.agent_id)
        else:
            print("\n(not root: the decommission and standby cycle on loop "
                  "devices needs root and was skipped)")
        heading("done")

    def cleanup(self):
        self._end_bar()
        if self.agent_process is not None:
            self.agent_process.terminate()
            try:
                self.agent_process.wait(10)
            except subprocess.TimeoutExpired:
                self.agent_process.kill()
                self.agent_process.wait()
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.cycle is not None:
            self.cycle.cleanup()


def main():
    # The endpoint logs what agents forward; the demo prints those itself.
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cycle", action="store_true",
                        help="only handshake, ping and status")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (logs) afterwards")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="teeth-demo-")
    full_cycle = not args.no_cycle and os.geteuid() == 0
    demo = Demo(workdir, full_cycle)
    status = 0
    try:
        demo.run()
    except (RuntimeError, transport.RemoteError, transport.CallTimeout,
            errors.AgentNotConnected, OSError) as exc:
        print("\ndemo failed: %s" % exc, file=sys.stderr)
        log_path = os.path.join(workdir, "agent.log")
        if os.path.exists(log_path):
            with open(log_path) as stream:
                print(stream.read()[-4000:], file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    finally:
        demo.cleanup()
        if args.keep:
            print("work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
