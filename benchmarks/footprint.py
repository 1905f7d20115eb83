#!/usr/bin/env python3
"""The agent's footprint: time from start to handshake, and idle memory.

Usage::

    python3 benchmarks/footprint.py [--runs 5] [--idle 3]

Each run starts ``python -m teeth_agent.cmd.agent`` with the real command
groups (``decom``, ``standbye``), simulated power, no visible disk and a
temporary state directory, pointed at a socket listening on 127.0.0.1 in
this process, in plaintext (``[tls] enabled = false``, like the
baseline). The time is taken from just before the process is spawned to
the moment its handshake line has arrived; after ``--idle`` seconds
connected and idle, its resident memory (VmRSS) is read.

The baseline, measured the same way in the same run, is a bare Python
interpreter (``python3 -c``) that connects and sends one line: the least
any Python agent could cost. Figures are medians of ``--runs`` runs with
their spread; the ratios are agent / baseline. The last line printed is one
JSON object.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"

BASELINE = (
    "import socket, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s.sendall(b'{\"version\":\"v1\",\"id\":\"1\",\"method\":\"handshake\","
    "\"params\":{}}\\n')\n"
    "while s.recv(65536):\n"
    "    pass\n")


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for %d" % pid)


def write_agent_config(directory, port):
    path = os.path.join(directory, "agent.conf")
    with open(path, "w") as stream:
        stream.write("\n".join([
            "[DEFAULT]",
            "endpoints = %s:%d" % (HOST, port),
            "enabled_extensions = decom,standbye",
            "state_dir = %s" % os.path.join(directory, "state"),
            "keepalive_interval = 60",
            # Plaintext, explicitly: the baseline sends one plaintext line,
            # so the agent is measured without its TLS handshake too.
            "[tls]", "enabled = false",
            "[power]", "simulate = true",
            "[hardware]", "device_include = /nonexistent",
            "[standbye]",
            "image_cache_dir = %s" % os.path.join(directory, "cache"),
            "work_dir = %s" % os.path.join(directory, "work"), ""]))
    return path


def one_run(argv, listener, idle, env):
    """Seconds from spawn to the first line, and RSS after ``idle``."""
    listener.settimeout(60)
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        sock, _ = listener.accept()
        buffer = b""
        while b"\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("%s closed before its first line" % argv)
            buffer += data
        elapsed = time.perf_counter() - started
        first = json.loads(buffer.split(b"\n", 1)[0])
        if first.get("method") != "handshake":
            raise RuntimeError("the first line is not a handshake: %r"
                               % first)
        sock.sendall(json.dumps({"version": "v1", "id": first["id"],
                                 "result": {}}).encode() + b"\n")
        time.sleep(idle)
        rss = rss_bytes(process.pid)
        sock.close()
    finally:
        process.kill()
        process.wait()
    return elapsed, rss


def summary(values):
    median = statistics.median(values)
    return {"median": median, "spread": (max(values) - min(values)) / median,
            "runs": values}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds connected before memory is read")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="teeth-footprint-")
    figures = {"agent_s": [], "agent_rss": [], "base_s": [], "base_rss": []}
    try:
        config = write_agent_config(directory, port)
        agent = [sys.executable, "-m", "teeth_agent.cmd.agent",
                 "--config-file", config]
        baseline = [sys.executable, "-c", BASELINE, str(port)]
        for _ in range(args.runs):
            seconds, rss = one_run(agent, listener, args.idle, env)
            figures["agent_s"].append(seconds)
            figures["agent_rss"].append(rss / 2 ** 20)
            seconds, rss = one_run(baseline, listener, args.idle, env)
            figures["base_s"].append(seconds)
            figures["base_rss"].append(rss / 2 ** 20)
    finally:
        listener.close()
        subprocess.run(["rm", "-rf", directory], check=False)
    result = {name: summary(values) for name, values in figures.items()}
    result["ratio_start"] = (result["agent_s"]["median"]
                             / result["base_s"]["median"])
    result["ratio_rss"] = (result["agent_rss"]["median"]
                           / result["base_rss"]["median"])
    print("agent:    start to handshake %.3fs (spread %.0f%%), idle RSS "
          "%.1f MiB (spread %.0f%%)" % (
              result["agent_s"]["median"], 100 * result["agent_s"]["spread"],
              result["agent_rss"]["median"],
              100 * result["agent_rss"]["spread"]))
    print("baseline: start to first line %.3fs, idle RSS %.1f MiB" % (
        result["base_s"]["median"], result["base_rss"]["median"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
