#!/usr/bin/env python3
"""Many agents over several endpoint processes sharing one database.

Usage::

    python3 benchmarks/scale.py --processes 4 [--generators 3]
        [--levels 10000,20000,40000] [--postgres | --database URL]
        [--ping-interval 10] [--status-interval 10] [--window 12]

``--processes`` real ``teeth-endpoint serve`` processes (the console
script, with a config file written here) listen on one port with
``[endpoint] reuse_port``, so the kernel spreads the agents over them, and
share one database: a throwaway PostgreSQL cluster (``--postgres``, made
with ``tests/functional/postgres.py``, migrated with ``teeth-endpoint db
upgrade``), any ``--database`` URL, or none (each process in memory).

The agents are simulated by ``--generators`` child processes, each one the
single-process mode's :class:`benchmarks.scale.LoadGenerator` (raw
non-blocking sockets, one ``selectors`` loop, cyclic GC off) holding its
share of the agents: a process may hold at most 20,000 descriptors here, so
40,000 agents need at least three of them. They are driven through their
stdin and stdout, one JSON line per command, and keep serving their agents
between commands.

At each level, once every agent has shaken hands, the load runs for a
warm-up and then for ``--window`` seconds cut in three parts; the ping
round trips of all generators are pooled per part and the figures are the
medians of the parts' p50 and p99, with their spread. Also recorded: each
endpoint process's CPU (percent of one core) and RSS and how many agents it
holds, the generators' CPU, and with PostgreSQL the database's write rate
during the window (``pg_stat_database``: transactions committed and rows
inserted, updated and deleted per second). The intervals default to the
agent's own keepalive (10 s) and a running update every 10 s: 40,000 such
agents send 8,000 messages a second, about what 10,000 agents send in the
single-process mode's defaults. The last line printed is one JSON object.
"""

import argparse
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import benchstats  # noqa: E402
from benchmarks import scale  # noqa: E402

TARGET_AGENTS = 40000
FDS_PER_GENERATOR = 20000 - 200
START_TIMEOUT = 120.0


# -- a generator child --------------------------------------------------------

#: The source ports the generators bind their connections to, split
#: between them: 40,000 connections to one address and port cannot all
#: come from the kernel's ephemeral range (28,232 ports by default).
SOURCE_PORTS = (10000, 64999)


def source_ranges(count):
    """``count`` disjoint ``(first, last)`` slices of SOURCE_PORTS."""
    first, last = SOURCE_PORTS
    size = (last - first + 1) // count
    return [(first + index * size, first + (index + 1) * size - 1)
            for index in range(count)]


def generator_main(port, id_offset, ping_interval, status_interval,
                   source_ports=None):
    """One generator: commands on stdin, answers on stdout."""
    import gc
    gc.disable()
    scale.raise_fd_limit()
    generator = scale.LoadGenerator(port, ping_interval, status_interval,
                                    id_offset=id_offset,
                                    source_ports=source_ports)
    stdin = sys.stdin.buffer
    os.set_blocking(stdin.fileno(), False)
    generator.selector.register(stdin, selectors.EVENT_READ, None)
    pending = bytearray()
    state = {"quit": False}

    def answer(message):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def on_control():
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            state["quit"] = True
            return
        pending.extend(chunk)
        while b"\n" in pending:
            index = pending.index(b"\n")
            command = json.loads(bytes(pending[:index]))
            del pending[:index + 1]
            run(command)

    def run(command):
        if "grow" in command:
            try:
                generator.grow(command["grow"], timeout=command["timeout"])
            except RuntimeError as exc:
                answer({"error": str(exc), "handshook": generator.handshook})
                return
            answer({"handshook": generator.handshook,
                    "closed": generator.closed})
        elif "measure" in command:
            before = scale.own_cpu_seconds()
            generator.latencies = []
            generator.run_for(command["measure"])
            latencies, generator.latencies = generator.latencies, None
            answer({"latencies": latencies,
                    "cpu_s": scale.own_cpu_seconds() - before,
                    "errors": generator.errors, "closed": generator.closed})

    generator.on_control = on_control
    while not state["quit"]:
        generator.run_for(1.0)
    generator.close()
    return 0


class Generator:
    """The parent's handle on one generator child."""

    def __init__(self, port, id_offset, args, source_ports):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--generator",
             "--port", str(port), "--id-offset", str(id_offset),
             "--ping-interval", str(args.ping_interval),
             "--status-interval", str(args.status_interval),
             "--source-ports", "%d-%d" % source_ports],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a generator exited (%s)"
                               % self.process.poll())
        return json.loads(line)

    def stop(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def all_do(generators, commands):
    """Send each generator its command, then gather all answers."""
    for generator, command in zip(generators, commands):
        generator.send(command)
    return [generator.receive() for generator in generators]


# -- the endpoint processes ---------------------------------------------------

def write_config(path, workdir, port, database):
    sections = {
        "DEFAULT": {"debug": "false"},
        "endpoint": {
            "listen_host": scale.HOST, "listen_port": str(port),
            "reuse_port": "true", "tls_enabled": "false",
            "control_socket": os.path.join(workdir, "control",
                                           "control.sock"),
            # Empty without a database: memory only (no SQLite file).
            "state_dir": os.path.join(workdir, "state") if database else "",
            "max_connections_per_address": "0",
            "max_connections": "0", "max_agents": "0",
            "handshake_timeout": "600", "keepalive_interval": "3600",
            "call_timeout": "60",
        },
    }
    if database:
        sections["database"] = {"connection": database}
    with open(path, "w") as stream:
        for name, options in sections.items():
            stream.write("[%s]\n" % name)
            for key, value in options.items():
                stream.write("%s = %s\n" % (key, value))
            stream.write("\n")
    return path


def endpoint_argv(config, *args):
    return [sys.executable, "-m", "teeth_agent.cmd.endpoint",
            "--config-file", config] + list(args)


class Serve:
    def __init__(self, config, workdir, index):
        self.log_path = os.path.join(workdir, "serve-%d.log" % index)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            endpoint_argv(config, "serve"), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as stream:
                if b"teeth-endpoint listening on" in stream.read():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        with open(self.log_path, "rb") as stream:
            tail = stream.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError("an endpoint process did not start:\n" + tail)

    def held(self, port):
        """Agents this process holds: its established TCP sockets on
        ``port`` (from /proc, without asking the process anything)."""
        inodes = set()
        for name in os.listdir("/proc/%d/fd" % self.pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (self.pid, name))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        with open("/proc/%d/net/tcp" % self.pid) as stream:
            next(stream)
            for line in stream:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes and \
                        int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
        return count

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# -- the database's write rate ------------------------------------------------

class WriteRate:
    """``pg_stat_database`` counters of one database, read over psycopg."""

    FIELDS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")

    def __init__(self, url):
        import psycopg
        self.connection = psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://", 1),
            autocommit=True)

    def sample(self):
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT %s FROM pg_stat_database WHERE datname = "
                           "current_database()" % ", ".join(self.FIELDS))
            return dict(zip(self.FIELDS, cursor.fetchone()))

    def rows(self, table):
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM %s" % table)
            return cursor.fetchone()[0]

    @staticmethod
    def rate(before, after, seconds):
        return {"%s_per_s" % key: round((after[key] - before[key]) / seconds)
                for key in WriteRate.FIELDS}

    def close(self):
        self.connection.close()


# -- one level ----------------------------------------------------------------

def shares(count, generators):
    base, extra = divmod(count, generators)
    return [base + (1 if index < extra else 0) for index in range(generators)]


def measure_level(generators, serves, count, args, write_rate, base_rss,
                  port):
    grown = time.monotonic()
    answers = all_do(generators, [
        {"grow": share, "timeout": args.ramp_timeout}
        for share in shares(count, len(generators))])
    failed = [answer["error"] for answer in answers if "error" in answer]
    if failed:
        raise RuntimeError("; ".join(failed))
    ramp = time.monotonic() - grown
    all_do(generators, [{"measure": args.warmup}] * len(generators))
    cpu_before = [scale.process_cpu_seconds(s.pid) for s in serves]
    db_before = write_rate.sample() if write_rate else None
    started = time.monotonic()
    p50s, p99s, samples, generator_cpu, closed = [], [], 0, 0.0, 0
    for _ in range(3):
        parts = all_do(generators,
                       [{"measure": args.window / 3.0}] * len(generators))
        latencies = [value for part in parts for value in part["latencies"]]
        samples += len(latencies)
        generator_cpu += sum(part["cpu_s"] for part in parts)
        closed = sum(part["closed"] for part in parts)
        p50s.append(1000 * benchstats.percentile(latencies, 0.50))
        p99s.append(1000 * benchstats.percentile(latencies, 0.99))
    elapsed = time.monotonic() - started
    db_after = write_rate.sample() if write_rate else None
    processes = []
    for serve, before, rss0 in zip(serves, cpu_before, base_rss):
        rss = scale.process_rss_bytes(serve.pid)
        processes.append({
            "pid": serve.pid,
            "agents": serve.held(port),
            "cpu_pct": round(100 * (scale.process_cpu_seconds(serve.pid)
                                    - before) / elapsed, 1),
            "rss_mib": round(rss / 2 ** 20, 1)})
    result = {
        "agents": count, "connected": count - closed,
        "ramp_s": round(ramp, 1), "pings_measured": samples,
        "p50_ms": round(statistics.median(p50s), 3),
        "p50_spread": round(benchstats.spread(p50s), 3),
        "p99_ms": round(statistics.median(p99s), 3),
        "p99_spread": round(benchstats.spread(p99s), 3),
        "endpoints": processes,
        "endpoint_cpu_pct": round(sum(p["cpu_pct"] for p in processes), 1),
        "endpoint_rss_mib": round(sum(p["rss_mib"] for p in processes), 1),
        "generator_cpu_pct": round(100 * generator_cpu / elapsed, 1),
        "msgs_per_s": round(count * (1.0 / args.ping_interval
                                     + 1.0 / args.status_interval)),
    }
    if write_rate:
        result["db"] = WriteRate.rate(db_before, db_after, elapsed)
        # What the processes have written so far: every agent and its task.
        result["db"]["agent_rows"] = write_rate.rows("agents")
        result["db"]["task_rows"] = write_rate.rows("tasks")
    return result


def show(result):
    line = ("%6d agents: ping p50 %7.2f ms p99 %7.2f ms (spread %.0f%%), "
            "endpoints CPU %.0f%% RSS %.0f MiB [%s], generators CPU %.0f%%"
            % (result["agents"], result["p50_ms"], result["p99_ms"],
               100 * result["p99_spread"], result["endpoint_cpu_pct"],
               result["endpoint_rss_mib"], ", ".join(
                   "%d: %d agents %.0f%% %.0f MiB"
                   % (p["pid"], p["agents"], p["cpu_pct"], p["rss_mib"])
                   for p in result["endpoints"]),
               result["generator_cpu_pct"]))
    if "db" in result:
        line += (", DB %(xact_commit_per_s)d commits/s, %(tup_inserted_per_s)d"
                 " ins/s %(tup_updated_per_s)d upd/s %(tup_deleted_per_s)d "
                 "del/s (%(agent_rows)d agent rows, %(task_rows)d task rows)"
                 % result["db"])
    print(line, flush=True)


# -- the run ------------------------------------------------------------------

def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4,
                        help="endpoint processes on the shared port")
    parser.add_argument("--generators", type=int, default=None,
                        help="agent-simulating processes (default: enough "
                             "for 20,000 descriptors each, at least 2)")
    parser.add_argument("--levels", default="10000,20000,40000",
                        help="comma-separated agent counts, increasing")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres", action="store_true",
                       help="a throwaway PostgreSQL cluster for the run")
    group.add_argument("--database", default=None,
                       help="the [database] connection URL to share")
    parser.add_argument("--ping-interval", type=float, default=10.0)
    parser.add_argument("--status-interval", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--ramp-timeout", type=float, default=600.0)
    parser.add_argument("--generator", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--id-offset", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--source-ports", help=argparse.SUPPRESS)
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse(argv)
    # A SIGTERM (timeout, Ctrl-C of a wrapper) still stops the endpoint
    # processes and the PostgreSQL cluster in the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    if args.generator:
        first, _, last = args.source_ports.partition("-")
        return generator_main(args.port, args.id_offset, args.ping_interval,
                              args.status_interval, (int(first), int(last)))
    levels = sorted(int(level) for level in args.levels.split(","))
    needed = -(-levels[-1] // FDS_PER_GENERATOR)
    count = args.generators or max(2, needed)
    if count < needed:
        parser.error("%d agents need at least %d generators (20,000 "
                     "descriptors each)" % (levels[-1], needed))
    workdir = tempfile.mkdtemp(prefix="teeth-scale-multi-")
    cluster, write_rate, serves, generators = None, None, [], []
    results = []
    try:
        database = args.database
        if args.postgres:
            from tests.functional import postgres
            cluster = postgres.PostgresCluster().start()
            database = cluster.url
        port = scale_port()
        config = write_config(os.path.join(workdir, "endpoint.conf"),
                              workdir, port, database)
        if database:
            from teeth_agent.db import schema
            schema.upgrade(schema.make_engine(database))
            write_rate = WriteRate(database) \
                if database.startswith("postgresql") else None
        for index in range(args.processes):
            serves.append(Serve(config, workdir, index))
        for serve in serves:
            serve.wait_ready()
        time.sleep(1.0)
        base_rss = [scale.process_rss_bytes(s.pid) for s in serves]
        offsets = [0] + [sum(shares(levels[-1], count)[:index + 1])
                         for index in range(count - 1)]
        generators = [Generator(port, offset, args, ports) for offset, ports
                      in zip(offsets, source_ranges(count))]
        for level in levels:
            try:
                result = measure_level(generators, serves, level, args,
                                       write_rate, base_rss, port)
            except RuntimeError as exc:
                print("%6d agents: %s" % (level, exc), flush=True)
                results.append({"agents": level, "error": str(exc)})
                break
            results.append(result)
            show(result)
    finally:
        for generator in generators:
            generator.stop()
        for serve in serves:
            serve.stop()
        if write_rate is not None:
            write_rate.close()
        if cluster is not None:
            cluster.stop()
        subprocess.run(["rm", "-rf", workdir], check=False)
    held = [r["agents"] for r in results if "error" not in r
            and r["p99_ms"] < scale.TARGET_P99_MS
            and r["connected"] == r["agents"]]
    largest = max(held) if held else 0
    print("largest level held with p99 < %.0f ms over %d endpoint processes:"
          " %d agents (target %d)" % (scale.TARGET_P99_MS, args.processes,
                                      largest, TARGET_AGENTS))
    print(json.dumps({"processes": args.processes, "generators": count,
                      "database": ("postgresql" if args.postgres or (
                          args.database or "").startswith("postgresql")
                          else args.database or "memory"),
                      "ping_interval_s": args.ping_interval,
                      "status_interval_s": args.status_interval,
                      "levels": results, "largest_held": largest,
                      "target_agents": TARGET_AGENTS,
                      "target_met": largest >= TARGET_AGENTS}))
    return 0


def scale_port():
    import socket
    with socket.socket() as sock:
        sock.bind((scale.HOST, 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
