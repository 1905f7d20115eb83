#!/usr/bin/env python3
"""The wire protocol's cost: round trips, pipelined throughput, encode/decode.

Usage::

    python3 benchmarks/protocol.py [--runs 5] [--pings N] [--pipelined N]

Two servers run in child processes on 127.0.0.1, one at a time:

``teeth``
    The real :class:`teeth_agent.endpoint.server.Endpoint` (which answers
    ``ping``
    on any connection): framing, JSON, dispatch, a green thread per command.
``echo``
    A bare echo on the same eventlet green sockets (through
    :mod:`teeth_agent.transport`, the only module that imports eventlet):
    it returns the bytes it reads, so a client sees an answer line of the
    same size with none of the protocol's work. This is the baseline.

Against each the client (a plain blocking socket in this process) measures
the round trip of one ping at a time (p50 and p99 of ``--pings`` pings) and
the throughput of ``--pipelined`` pings written back to back while the
answers are read. Each figure is the median of ``--runs`` runs with its
spread ((max - min) / median). The ratios are teeth / echo for latency and
echo / teeth for throughput (1.0 = no cost over a bare echo). Last, the
in-process cost of encoding and decoding one message with
:class:`teeth_agent.protocol.Session` is compared with bare ``json``.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import benchstats  # noqa: E402
from teeth_agent import protocol  # noqa: E402

HOST = "127.0.0.1"
PING_PARAMS = {"seq": 0, "payload": "x" * 64}


# -- the servers (child processes) ------------------------------------------

def serve_teeth():
    from teeth_agent.endpoint import server as endpoint
    from teeth_agent import transport
    server = endpoint.Endpoint(host=HOST, port=0, handshake_timeout=3600,
                               keepalive_interval=3600)
    port = server.start()
    print(port, flush=True)
    while True:
        transport.sleep(3600)


def serve_echo():
    from teeth_agent import transport
    listener = transport.listen(HOST, 0)
    print(listener.getsockname()[1], flush=True)

    def echo(sock, address):
        while True:
            data = sock.recv(65536)
            if not data:
                sock.close()
                return
            sock.sendall(data)
    transport.accept_loop(listener, echo)


class Server:
    """A server child process; ``port`` once it listens."""

    def __init__(self, kind):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.port = int(self.process.stdout.readline())

    def stop(self):
        self.process.kill()
        self.process.wait()


# -- the client --------------------------------------------------------------

class LineClient:
    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def read_line(self):
        while True:
            index = self.buffer.find(b"\n")
            if index >= 0:
                line = bytes(self.buffer[:index])
                del self.buffer[:index + 1]
                return line
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed")
            self.buffer += data

    def close(self):
        self.sock.close()


def ping_line(seq):
    return protocol.encode_json({"version": "v1", "id": "p%d" % seq,
                                 "method": "ping",
                                 "params": dict(PING_PARAMS, seq=seq)})


def round_trips(port, count):
    """Latencies in seconds of ``count`` pings, one at a time."""
    client = LineClient(port)
    latencies = []
    try:
        for seq in range(count + 100):
            line = ping_line(seq)
            started = time.perf_counter()
            client.sock.sendall(line)
            client.read_line()
            if seq >= 100:  # the first ones warm the server up
                latencies.append(time.perf_counter() - started)
    finally:
        client.close()
    return latencies


def pipelined(port, count):
    """Messages per second with ``count`` pings written back to back."""
    client = LineClient(port)
    lines = [ping_line(seq) for seq in range(count)]
    batch = 100

    def write():
        for start in range(0, count, batch):
            client.sock.sendall(b"".join(lines[start:start + batch]))
    try:
        started = time.perf_counter()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        for _ in range(count):
            client.read_line()
        elapsed = time.perf_counter() - started
        writer.join()
    finally:
        client.close()
    return count / elapsed


def measure_server(kind, runs, pings, pipelined_count):
    server = Server(kind)
    figures = {"p50_ms": [], "p99_ms": [], "msgs_per_s": []}
    try:
        for _ in range(runs):
            latencies = round_trips(server.port, pings)
            for key, fraction in (("p50_ms", 0.50), ("p99_ms", 0.99)):
                figures[key].append(
                    1000 * benchstats.percentile(latencies, fraction))
            figures["msgs_per_s"].append(pipelined(server.port,
                                                   pipelined_count))
    finally:
        server.stop()
    return {name: {"median": statistics.median(values),
                   "spread": benchstats.spread(values), "runs": values}
            for name, values in figures.items()}


# -- encode / decode in process -----------------------------------------------

def codec_costs(runs, count=20000):
    """Microseconds per message: Session vs bare json, encode and decode."""
    status = {"task_id": "task-0001", "state": "running", "method":
              "decom.disk_erase", "percent": 42.5, "eta": 120.0}
    message = {"version": "v1", "id": "a1b2c3d4-1", "method": "task_status",
               "params": status}
    line = protocol.encode_json(message)
    results = {"session_encode_us": [], "json_encode_us": [],
               "session_decode_us": [], "json_decode_us": []}
    for _ in range(runs):
        session = protocol.Session(id_prefix="bench")
        started = time.perf_counter()
        for _ in range(count):
            _, data = session.send_command("task_status", status)
        results["session_encode_us"].append(
            1e6 * (time.perf_counter() - started) / count)
        started = time.perf_counter()
        for _ in range(count):
            json.dumps(message, separators=(",", ":")).encode()
        results["json_encode_us"].append(
            1e6 * (time.perf_counter() - started) / count)
        session = protocol.Session()
        started = time.perf_counter()
        for _ in range(count):
            session.receive_data(line)
        results["session_decode_us"].append(
            1e6 * (time.perf_counter() - started) / count)
        started = time.perf_counter()
        for _ in range(count):
            json.loads(line)
        results["json_decode_us"].append(
            1e6 * (time.perf_counter() - started) / count)
    return {name: {"median": statistics.median(values),
                   "spread": benchstats.spread(values)}
            for name, values in results.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pings", type=int, default=2000,
                        help="round trips per run")
    parser.add_argument("--pipelined", type=int, default=50000,
                        help="pipelined pings per run")
    parser.add_argument("--serve", choices=("teeth", "echo"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "teeth":
        return serve_teeth()
    if args.serve == "echo":
        return serve_echo()
    teeth = measure_server("teeth", args.runs, args.pings, args.pipelined)
    echo = measure_server("echo", args.runs, args.pings, args.pipelined)
    codec = codec_costs(args.runs)
    for name, figures in (("teeth", teeth), ("echo", echo)):
        print("%-5s ping p50 %.3f ms (spread %.0f%%)  p99 %.3f ms (spread "
              "%.0f%%)  pipelined %.0f msg/s (spread %.0f%%)" % (
                  name, figures["p50_ms"]["median"],
                  100 * figures["p50_ms"]["spread"],
                  figures["p99_ms"]["median"],
                  100 * figures["p99_ms"]["spread"],
                  figures["msgs_per_s"]["median"],
                  100 * figures["msgs_per_s"]["spread"]))
    for name, figure in codec.items():
        print("%-18s %.2f us/message (spread %.0f%%)"
              % (name, figure["median"], 100 * figure["spread"]))
    result = {
        "runs": args.runs,
        "teeth": teeth, "echo": echo, "codec": codec,
        "ratio_p50": teeth["p50_ms"]["median"] / echo["p50_ms"]["median"],
        "ratio_p99": teeth["p99_ms"]["median"] / echo["p99_ms"]["median"],
        "ratio_throughput": (echo["msgs_per_s"]["median"]
                             / teeth["msgs_per_s"]["median"]),
        "ratio_encode": (codec["session_encode_us"]["median"]
                         / codec["json_encode_us"]["median"]),
        "ratio_decode": (codec["session_decode_us"]["median"]
                         / codec["json_decode_us"]["median"]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
