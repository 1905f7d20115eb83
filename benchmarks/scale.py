#!/usr/bin/env python3
"""How many agents one endpoint process holds: memory, CPU, ping latency.

Usage::

    python3 benchmarks/scale.py [--levels 1000,2500,5000,7500,10000]
        [--ping-interval 5] [--status-interval 2] [--window 12]
        [--database sqlite|URL]

One :class:`teeth_agent.endpoint.server.Endpoint` runs in a child process on
127.0.0.1. This process simulates the agents with raw non-blocking sockets
and one ``selectors`` loop (no eventlet, no threads): each agent connects,
sends its handshake, then pings the endpoint every ``--ping-interval``
seconds and streams a ``running`` ``task_status`` every
``--status-interval`` seconds, and answers the endpoint's own commands.
Timers start at random offsets so the load is spread evenly.

The agent count grows level by level. At each level, once every agent has
shaken hands, the load runs for a warm-up and then for ``--window`` seconds
cut in three parts; for each part the p50 and p99 of the ping round trips
of all agents are taken, and the figures are the medians over the parts
with their spread. Also recorded: the endpoint's resident memory (RSS) and
its growth per agent since it had none, the endpoint's CPU use (percent of
one core) and this load generator's own CPU use, which says whether the
figures measure the endpoint or the generator. The generator runs with the
cyclic garbage collector off, so that its own pauses are not counted as the
endpoint's latency; the endpoint runs as it would in production. The
largest level whose p99 stays under 100 ms is reported (target: 10,000
agents).

With ``--database`` the endpoint keeps its state in a database (``sqlite``:
an SQLite file in a temporary directory, else a SQLAlchemy URL, migrated
first), as ``teeth-endpoint serve`` does; without it, in memory only.

A process may hold at most 20,000 file descriptors here, so the soft limit
is raised to the hard limit in both processes; 10,000 client sockets and
10,000 server sockets fit. The last line printed is one JSON object.
"""

import argparse
import gc
import heapq
import json
import os
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import benchstats  # noqa: E402
HOST = "127.0.0.1"
TARGET_P99_MS = 100.0
TARGET_AGENTS = 10000
PING, STATUS = 0, 1


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the endpoint (child process) --------------------------------------------

def serve(database=None):
    raise_fd_limit()
    from teeth_agent.endpoint import server as endpoint
    from teeth_agent import transport
    store = None
    if database:
        from teeth_agent.db import schema
        from teeth_agent.db import store as store_mod
        if database == "sqlite":
            database = "sqlite:///" + os.path.join(
                tempfile.mkdtemp(prefix="teeth-scale-"), "endpoint.sqlite")
        store = store_mod.Store.from_url(database)
        schema.upgrade(store.engine)
    # Every simulated agent comes from 127.0.0.1: no per-address limit.
    server = endpoint.Endpoint(host=HOST, port=0, handshake_timeout=600,
                               keepalive_interval=3600, call_timeout=60,
                               max_connections_per_address=0,
                               store=store)
    port = server.start()
    # As teeth-endpoint serve does ([endpoint] gc_thresholds' default).
    from teeth_agent.cmd import lifecycle
    from teeth_agent.conf import defaults
    lifecycle.tune_gc(defaults.GC_THRESHOLDS)
    print(port, flush=True)
    while True:
        transport.sleep(3600)


def process_cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def process_rss_bytes(pid):
    with open("/proc/%d/status" % pid) as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the simulated agents ----------------------------------------------------

class SimAgent:
    __slots__ = ("index", "sock", "inbuf", "outbuf", "pings", "handshake_id",
                 "handshook", "seq", "percent")

    def __init__(self, index, sock):
        self.index = index
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pings = {}
        self.handshake_id = None
        self.handshook = False
        self.seq = 0
        self.percent = 0.0


class LoadGenerator:
    def __init__(self, port, ping_interval, status_interval, id_offset=0,
                 source_ports=None):
        self.port = port
        #: ``(first, last)``: bind each connection to a port of this range
        #: of 127.0.0.1 instead of letting the kernel pick one. The kernel
        #: picks from net.ipv4.ip_local_port_range (28,232 ports by
        #: default), and every connection goes to the same address and
        #: port: beyond that many agents ``connect`` fails with
        #: EADDRNOTAVAIL. Ports already in use are skipped.
        self._source_ports = None if source_ports is None else iter(
            range(source_ports[0], source_ports[1] + 1))
        # Several generators (the multi-process mode) name their agents
        # apart: sim-<offset + index>.
        self.id_offset = id_offset
        self.on_control = None
        self.ping_interval = ping_interval
        self.status_interval = status_interval
        self.selector = selectors.DefaultSelector()
        self.agents = []
        self.timers = []
        self.timer_seq = 0
        self.latencies = None
        self.handshook = 0
        self.errors = 0
        self.closed = 0
        #: Connections the endpoint closed before answering their
        #: handshake (its [endpoint] max_connections, 16,000 by default,
        #: or any other refusal).
        self.refused = 0

    # -- connections ---------------------------------------------------------

    def grow(self, count, batch=250, timeout=180):
        """Connect agents until ``count`` have shaken hands."""
        deadline = time.monotonic() + timeout
        while len(self.agents) < count:
            for _ in range(min(batch, count - len(self.agents))):
                self._connect()
            target = len(self.agents)
            while self.handshook + self.refused < target:
                if time.monotonic() > deadline:
                    raise RuntimeError("only %d of %d agents shook hands"
                                       % (self.handshook, target))
                self.run_for(0.05)
            if self.refused:
                raise RuntimeError(
                    "the endpoint closed %d of %d connections before "
                    "answering their handshake (%d agents held; its "
                    "[endpoint] max_connections is 16,000 by default)"
                    % (self.refused, target, self.handshook))

    def _open(self):
        if self._source_ports is None:
            return socket.create_connection((HOST, self.port), timeout=30)
        for source in self._source_ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, source))
            except OSError:
                sock.close()  # in use: the next one
                continue
            sock.settimeout(30)
            try:
                sock.connect((HOST, self.port))
            except BaseException:
                sock.close()
                raise
            return sock
        raise RuntimeError("the generator's source ports ran out")

    def _connect(self):
        sock = self._open()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        agent = SimAgent(len(self.agents), sock)
        self.agents.append(agent)
        self.selector.register(sock, selectors.EVENT_READ, agent)
        agent.handshake_id = self._send_command(agent, "handshake", {
            "agent_id": "sim-%06d" % (self.id_offset + agent.index),
            "agent_version": "scale-bench",
            "protocol_versions": ["v1"],
            "hardware": {"vendor": "Sim", "product": "Agent",
                         "serial": "S%06d" % agent.index, "uuid": None,
                         "bios_version": None,
                         "macs": ["02:00:00:%02x:%02x:%02x" % (
                             agent.index >> 16 & 255, agent.index >> 8 & 255,
                             agent.index & 255)]},
            "extensions": {"decom": ["decom.disk_erase"]},
            "tasks": []})

    # -- sending -------------------------------------------------------------

    def _send_command(self, agent, method, params):
        agent.seq += 1
        command_id = "s%d-%d" % (agent.index, agent.seq)
        self._send(agent, {"version": "v1", "id": command_id,
                           "method": method, "params": params})
        return command_id

    def _send(self, agent, message):
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        if agent.outbuf:
            agent.outbuf += data
            return
        try:
            sent = agent.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost(agent)
            return
        if sent < len(data):
            agent.outbuf += data[sent:]
            self.selector.modify(agent.sock, selectors.EVENT_READ
                                 | selectors.EVENT_WRITE, agent)

    def _flush(self, agent):
        try:
            sent = agent.sock.send(agent.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._lost(agent)
            return
        del agent.outbuf[:sent]
        if not agent.outbuf:
            self.selector.modify(agent.sock, selectors.EVENT_READ, agent)

    def _lost(self, agent):
        if agent.sock.fileno() >= 0:
            self.selector.unregister(agent.sock)
            agent.sock.close()
            self.closed += 1
            if not agent.handshook:
                self.refused += 1

    # -- receiving -----------------------------------------------------------

    def _read(self, agent):
        try:
            data = agent.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(agent)
            return
        agent.inbuf += data
        while True:
            index = agent.inbuf.find(b"\n")
            if index < 0:
                return
            line = bytes(agent.inbuf[:index])
            del agent.inbuf[:index + 1]
            self._message(agent, json.loads(line))

    def _message(self, agent, message):
        if "method" in message:
            # The endpoint's own keepalive ping: echo it.
            self._send(agent, {"version": "v1", "id": message["id"],
                               "result": message.get("params") or {}})
            return
        if "error" in message:
            self.errors += 1
        command_id = message.get("id")
        sent = agent.pings.pop(command_id, None)
        if sent is not None:
            if self.latencies is not None:
                self.latencies.append(time.perf_counter() - sent)
            return
        if command_id == agent.handshake_id and not agent.handshook:
            agent.handshook = True
            self.handshook += 1
            now = time.monotonic()
            self._schedule(now + random.random() * self.ping_interval,
                           agent, PING)
            self._schedule(now + random.random() * self.status_interval,
                           agent, STATUS)

    # -- timers and the loop -------------------------------------------------

    def _schedule(self, due, agent, kind):
        self.timer_seq += 1
        heapq.heappush(self.timers, (due, self.timer_seq, agent, kind))

    def _fire(self, agent, kind):
        if agent.sock.fileno() < 0:
            return
        if kind == PING:
            agent.seq += 1
            command_id = "s%d-%d" % (agent.index, agent.seq)
            agent.pings[command_id] = time.perf_counter()
            self._send(agent, {"version": "v1", "id": command_id,
                               "method": "ping", "params": {"n": agent.seq}})
            interval = self.ping_interval
        else:
            agent.percent = min(99.0, agent.percent + 0.5)
            self._send_command(agent, "task_status", {
                "task_id": "task-%06d" % agent.index, "state": "running",
                "method": "decom.disk_erase", "percent": agent.percent,
                "eta": 600.0})
            interval = self.status_interval
        self._schedule(time.monotonic() + interval, agent, kind)

    def run_for(self, seconds):
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, agent, kind = heapq.heappop(self.timers)
                self._fire(agent, kind)
            if now >= end:
                return
            wait = end - now
            if self.timers:
                wait = min(wait, max(0.0, self.timers[0][0] - now))
            for key, mask in self.selector.select(wait):
                agent = key.data
                if agent is None:
                    # The multi-process mode's command pipe.
                    self.on_control()
                    continue
                if mask & selectors.EVENT_READ:
                    self._read(agent)
                if mask & selectors.EVENT_WRITE and agent.outbuf:
                    self._flush(agent)

    def close(self):
        for agent in self.agents:
            if agent.sock.fileno() >= 0:
                agent.sock.close()
        self.selector.close()


# -- measuring -------------------------------------------------------------


def measure_level(generator, pid, count, warmup, window, base_rss):
    grow_started = time.monotonic()
    generator.grow(count)
    grow_seconds = time.monotonic() - grow_started
    generator.run_for(warmup)
    p50s, p99s, samples = [], [], 0
    cpu_before = process_cpu_seconds(pid)
    own_before = own_cpu_seconds()
    started = time.monotonic()
    for _ in range(3):
        generator.latencies = []
        generator.run_for(window / 3.0)
        latencies, generator.latencies = generator.latencies, None
        samples += len(latencies)
        p50s.append(1000 * benchstats.percentile(latencies, 0.50))
        p99s.append(1000 * benchstats.percentile(latencies, 0.99))
    elapsed = time.monotonic() - started
    endpoint_cpu = 100 * (process_cpu_seconds(pid) - cpu_before) / elapsed
    own_cpu = 100 * (own_cpu_seconds() - own_before) / elapsed
    rss = process_rss_bytes(pid)
    return {
        "agents": count,
        "connected": generator.handshook - generator.closed,
        "ramp_s": round(grow_seconds, 2),
        "pings_measured": samples,
        "p50_ms": round(statistics.median(p50s), 3),
        "p50_spread": round(benchstats.spread(p50s), 3),
        "p99_ms": round(statistics.median(p99s), 3),
        "p99_spread": round(benchstats.spread(p99s), 3),
        "endpoint_rss_mib": round(rss / 2 ** 20, 1),
        "rss_per_agent_kib": round((rss - base_rss) / count / 1024, 2),
        "endpoint_cpu_pct": round(endpoint_cpu, 1),
        "generator_cpu_pct": round(own_cpu, 1),
        "msgs_per_s": round(count * (1.0 / generator.ping_interval
                                     + 1.0 / generator.status_interval)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1000,2500,5000,7500,10000",
                        help="comma-separated agent counts, increasing")
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--status-interval", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--database", default=None,
                        help="keep the endpoint's state in a database: "
                             "'sqlite' (a temporary file) or a URL")
    parser.add_argument("--serve", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1,
                        help="endpoint processes sharing one port "
                             "(SO_REUSEPORT) and one database; more than "
                             "one runs benchmarks/scale_multi.py, see its "
                             "--help")
    args, rest = parser.parse_known_args(argv)
    if args.processes > 1:
        from benchmarks import scale_multi
        return scale_multi.main(list(argv if argv is not None
                                     else sys.argv[1:]))
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.database)
    levels = sorted(int(level) for level in args.levels.split(","))
    # The generator is the measuring instrument: a cyclic-GC pause here
    # (thousands of long-lived agent objects) would be counted as endpoint
    # latency. Its objects are freed by reference counting anyway.
    gc.disable()
    limit = raise_fd_limit()
    if levels[-1] + 64 > limit:
        parser.error("%d agents need more than the %d descriptors this "
                     "process may hold" % (levels[-1], limit))
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                               "--serve"] + (["--database", args.database]
                                             if args.database else []),
                              stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    results = []
    generator = None
    try:
        port = int(server.stdout.readline())
        time.sleep(0.5)
        base_rss = process_rss_bytes(server.pid)
        generator = LoadGenerator(port, args.ping_interval,
                                  args.status_interval)
        for count in levels:
            try:
                result = measure_level(generator, server.pid, count,
                                       args.warmup, args.window, base_rss)
            except RuntimeError as exc:
                # The endpoint could not even take the agents in: that
                # level is not held, and the next ones would not be.
                print("%6d agents: %s" % (count, exc), flush=True)
                results.append({"agents": count, "error": str(exc),
                                "connected": generator.handshook,
                                "endpoint_rss_mib": round(process_rss_bytes(
                                    server.pid) / 2 ** 20, 1)})
                break
            results.append(result)
            print("%6d agents: ping p50 %7.2f ms p99 %7.2f ms (spread "
                  "%.0f%%), endpoint RSS %.0f MiB (%.1f KiB/agent), CPU "
                  "%.0f%% (generator %.0f%%), %d msg/s in"
                  % (count, result["p50_ms"], result["p99_ms"],
                     100 * result["p99_spread"], result["endpoint_rss_mib"],
                     result["rss_per_agent_kib"], result["endpoint_cpu_pct"],
                     result["generator_cpu_pct"], result["msgs_per_s"]),
                  flush=True)
    finally:
        if generator is not None:
            generator.close()
        server.kill()
        server.wait()
    held = [r["agents"] for r in results if "error" not in r
            and r["p99_ms"] < TARGET_P99_MS and r["connected"] == r["agents"]]
    largest = max(held) if held else 0
    print("largest level held with p99 < %.0f ms: %d agents (target %d)"
          % (TARGET_P99_MS, largest, TARGET_AGENTS))
    print(json.dumps({"database": args.database or "memory",
                      "ping_interval_s": args.ping_interval,
                      "status_interval_s": args.status_interval,
                      "base_rss_mib": round(base_rss / 2 ** 20, 1),
                      "levels": results, "largest_held": largest,
                      "target_agents": TARGET_AGENTS,
                      "target_met": largest >= TARGET_AGENTS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
