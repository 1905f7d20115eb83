#!/usr/bin/env python3
"""Coverage-guided fuzzing of the protocol parser (teeth_agent.protocol)
and of the streamed qcow2 parser (teeth_agent.images.qcow2_stream).

Usage::

    python3 benchmarks/fuzz.py [--count 1000000] [--timeout 10]
    python3 benchmarks/fuzz.py --target qcow2 [--count 100000]

With atheris installed (``pip install atheris``; libFuzzer, guided by the
coverage of the instrumented :mod:`teeth_agent.protocol`) a worker process
runs ``--count`` inputs; without it, hypothesis generates ``--count``
examples (slower, and guided by its own heuristics instead of coverage).

Each input becomes a random line-length limit, up to three outstanding
commands (so answers are matched) and a byte stream cut into random chunks,
fed to one :class:`protocol.Session`. An input fails when the parser
raises, produces an event that breaks the contract (a command without a
string id, non-object params, an event after a fatal one, a session that
stays open after a violation), or when the result it would send back for a
received command does not decode to the same value. A hang is an input that
takes more than ``--timeout`` seconds.

With ``--target qcow2`` the seeds are small images made by ``qemu-img``
(cluster sizes 512 and 4096 bytes, deflate and zstd compression, extended
L2, preallocation, v2 and v3) and each input is one image, fed in chunks
to :class:`teeth_agent.images.qcow2_stream.Qcow2Stream` over an in-memory
disk of 1 MiB. It fails when the parser raises anything but its own
errors (``UnsafeImage``, ``NotStreamable``, or the caller's size check) or
writes or zeroes outside the disk. The last line printed is one JSON
object; the exit status is 1 when anything failed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

SEEDS = [
    b'{"version":"v1","id":"a-1","method":"ping","params":{"x":[1,2.5]}}\n',
    b'{"version":"v1","id":"c0","result":{}}\r\n\n',
    b'{"id":"c1","error":{"type":"Busy","code":-32002,"msg":"m"}}\n',
    b'{"fatal_error":"bye"}\n',
    b'{"version":"v2","id":"x","method":"m","params":[]}\n{"method":1}\n',
    b'{"version":"v1","id":"t","method":"task_status","params":{"task_id":'
    b'"t1","state":"running","percent":5.5,"eta":null}}\n',
]

_KNOWN_EVENTS = None


def load_protocol():
    global _KNOWN_EVENTS
    from teeth_agent import protocol
    _KNOWN_EVENTS = (protocol.CommandReceived, protocol.CommandRejected,
                     protocol.ResponseReceived, protocol.UnmatchedResponse,
                     protocol.FatalErrorReceived, protocol.ProtocolViolation,
                     protocol.ConnectionClosed)
    return protocol


def receiving_ended(session):
    """Whether the session takes no more input (``receive_closed`` where
    the session distinguishes it from having sent a fatal error)."""
    return getattr(session, "receive_closed", session.closed)


def check_events(protocol, session, events):
    for index, event in enumerate(events):
        if not isinstance(event, _KNOWN_EVENTS):
            raise AssertionError("unknown event %r" % (event,))
        if isinstance(event, (protocol.ProtocolViolation,
                              protocol.FatalErrorReceived)):
            if index != len(events) - 1:
                raise AssertionError("events after a fatal one: %r"
                                     % (events,))
            if not receiving_ended(session):
                raise AssertionError("session open after %r" % (event,))
        if isinstance(event, protocol.CommandReceived):
            command = event.command
            if not isinstance(command.id, str) or \
                    not isinstance(command.method, str) or \
                    not command.method or \
                    not isinstance(command.params, dict):
                raise AssertionError("bad command %r" % (command,))
            if command.version not in protocol.SUPPORTED_VERSIONS:
                raise AssertionError("unsupported version passed: %r"
                                     % (command,))
            if not session.closed:
                echoed = session.send_result(command.id, command.params)
                if len(echoed) - 1 <= session.max_line_length:
                    answer = json.loads(echoed)
                    if "result" in answer and \
                            answer["result"] != command.params:
                        raise AssertionError("echo differs: %r" % (answer,))
        if isinstance(event, protocol.CommandRejected):
            if not isinstance(event.id, str):
                raise AssertionError("rejected without id %r" % (event,))
            if not session.closed:
                session.send_error(event.id, event.error)
        if isinstance(event, protocol.ResponseReceived):
            response = event.response
            if (response.result is None) == (response.error is None):
                raise AssertionError("response with both or neither "
                                     "result and error %r" % (response,))


def run_input(protocol, data):
    """Drive one Session with ``data`` (the whole fuzz input)."""
    if len(data) < 3:
        return
    max_line = 64 + data[0] * 16
    outstanding = data[1] % 4
    chunk_seed = data[2]
    stream = data[3:]
    session = protocol.Session(max_line_length=max_line, id_prefix="f")
    for number in range(outstanding):
        session.send_command("ping", {}, command_id="c%d" % number)
    position = 0
    step = 1 + chunk_seed % 17
    while position < len(stream) and not receiving_ended(session):
        chunk = stream[position:position + step]
        position += step
        step = 1 + (step * 7 + chunk_seed) % 97
        check_events(protocol, session, session.receive_data(chunk))
    events = session.receive_data(b"")
    check_events(protocol, session, events)
    if not receiving_ended(session):
        raise AssertionError("session open after the end of stream")


# -- the qcow2 target --------------------------------------------------------

QCOW2_DISK = 1024 * 1024

QCOW2_SEED_OPTIONS = [
    ("cluster_size=512",), ("cluster_size=4096",),
    ("cluster_size=4096", "compat=0.10"),
    ("cluster_size=512", "-c"), ("cluster_size=4096", "-c"),
    ("cluster_size=4096", "compression_type=zstd", "-c"),
    ("cluster_size=16384", "extended_l2=on"),
    ("cluster_size=4096", "preallocation=metadata"),
]


class _SizeRefused(Exception):
    """The caller's check: the virtual size is larger than the disk."""


class _FuzzDisk:
    def __init__(self):
        self.data = bytearray(QCOW2_DISK)

    def write_at(self, offset, data):
        if offset < 0 or offset + len(data) > QCOW2_DISK:
            raise AssertionError("write outside the disk at %d (+%d)"
                                 % (offset, len(data)))
        self.data[offset:offset + len(data)] = data

    def zero(self, start, end):
        if not 0 <= start < end <= QCOW2_DISK:
            raise AssertionError("zero outside the disk: %d-%d"
                                 % (start, end))


def qcow2_seeds():
    """Small images qemu-img makes (an empty list without qemu-img)."""
    work = tempfile.mkdtemp(prefix="teeth-fuzz-qcow2-")
    raw = os.path.join(work, "seed.raw")
    with open(raw, "wb") as stream:
        stream.truncate(64 * 1024)
        stream.seek(4096)
        stream.write(os.urandom(3000) + b"teeth" * 2000)
        stream.seek(40000)
        stream.write(os.urandom(5000))
    seeds = []
    try:
        for options in QCOW2_SEED_OPTIONS:
            image = os.path.join(work, "seed.qcow2")
            argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
            if "-c" in options:
                argv.append("-c")
            argv += ["-o", ",".join(o for o in options if o != "-c"),
                     raw, image]
            subprocess.run(argv, check=True, capture_output=True)
            with open(image, "rb") as stream:
                seeds.append(stream.read())
    except (OSError, subprocess.CalledProcessError):
        pass
    finally:
        subprocess.run(["rm", "-rf", work], check=False)
    return seeds


def load_qcow2():
    from teeth_agent.images import qcow2
    from teeth_agent.images import qcow2_stream
    return qcow2, qcow2_stream


def run_qcow2_input(modules, data):
    """Feed ``data`` (one image) to a Qcow2Stream in chunks."""
    qcow2, qcow2_stream = modules

    def check(header):
        if header.virtual_size > QCOW2_DISK:
            raise _SizeRefused()
    step = 512 + (data[-1] * 131 if data else 0)
    parser = qcow2_stream.Qcow2Stream(_FuzzDisk(), 1024 * 1024,
                                      check=check)
    try:
        for offset in range(0, len(data), step):
            parser.feed(data[offset:offset + step])
        parser.close()
    except (qcow2.UnsafeImage, qcow2_stream.NotStreamable, _SizeRefused):
        pass


# -- atheris worker ----------------------------------------------------------

def atheris_worker(count, timeout, corpus, artifacts, target="protocol"):
    import atheris
    with atheris.instrument_imports():
        if target == "qcow2":
            modules = load_qcow2()
        else:
            protocol = load_protocol()

    def test_one_input(data):
        if target == "qcow2":
            run_qcow2_input(modules, data)
        else:
            run_input(protocol, data)

    atheris.Setup([sys.argv[0], "-runs=%d" % count,
                   "-timeout=%d" % timeout, "-rss_limit_mb=2048",
                   "-max_len=%d" % (262144 if target == "qcow2" else 4096),
                   "-print_final_stats=1",
                   "-artifact_prefix=%s/" % artifacts, corpus],
                  test_one_input)
    atheris.Fuzz()


def run_atheris(count, timeout, target="protocol"):
    work = tempfile.mkdtemp(prefix="teeth-fuzz-")
    corpus = os.path.join(work, "corpus")
    artifacts = os.path.join(work, "artifacts")
    os.makedirs(corpus)
    os.makedirs(artifacts)
    if target == "qcow2":
        seeds = qcow2_seeds()
    else:
        seeds = [bytes([60, index, 3]) + seed
                 for index, seed in enumerate(SEEDS)]
    for index, seed in enumerate(seeds):
        with open(os.path.join(corpus, "seed-%d" % index), "wb") as stream:
            stream.write(seed)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker",
         "--target", target,
         "--count", str(count), "--timeout", str(timeout), "--corpus",
         corpus, "--artifacts", artifacts],
        capture_output=True, text=True)
    elapsed = time.monotonic() - started
    output = done.stderr + done.stdout
    runs = re.search(r"Done (\d+) runs", output)
    coverage = re.findall(r"cov: (\d+)", output)
    failures = sorted(os.listdir(artifacts))
    result = {"engine": "atheris", "inputs": int(runs.group(1)) if runs
              else 0, "seconds": round(elapsed, 1),
              "coverage_edges": int(coverage[-1]) if coverage else None,
              "crashes": len([f for f in failures
                              if not f.startswith("timeout")]),
              "hangs": len([f for f in failures if f.startswith("timeout")]),
              "exit_status": done.returncode}
    if done.returncode != 0 or failures:
        print(output[-6000:])
        print("artifacts kept in %s" % artifacts)
    else:
        subprocess.run(["rm", "-rf", work], check=False)
    return result


# -- hypothesis fallback -----------------------------------------------------

def run_hypothesis_qcow2(count, timeout):
    from hypothesis import given
    from hypothesis import HealthCheck
    from hypothesis import settings
    from hypothesis import strategies
    modules = load_qcow2()
    seeds = qcow2_seeds()
    failures = []
    patches = strategies.lists(strategies.tuples(
        strategies.integers(min_value=0, max_value=1 << 18),
        strategies.binary(min_size=1, max_size=8)), max_size=8)

    @settings(max_examples=count, deadline=timeout * 1000,
              suppress_health_check=list(HealthCheck), database=None)
    @given(strategies.sampled_from(seeds or [b"QFI\xfb"]), patches)
    def fuzz(seed, changes):
        image = bytearray(seed)
        for offset, data in changes:
            offset %= max(len(image), 1)
            image[offset:offset + len(data)] = data
        run_qcow2_input(modules, bytes(image))

    started = time.monotonic()
    try:
        fuzz()
    except Exception as exc:
        failures.append(repr(exc))
        print("failure: %r" % exc)
    return {"engine": "hypothesis", "inputs": count,
            "seconds": round(time.monotonic() - started, 1),
            "coverage_edges": None, "crashes": len(failures), "hangs": 0,
            "exit_status": 1 if failures else 0}


def run_hypothesis(count, timeout):
    from hypothesis import given
    from hypothesis import HealthCheck
    from hypothesis import settings
    from hypothesis import strategies
    protocol = load_protocol()
    lines = strategies.lists(strategies.one_of(
        strategies.sampled_from(SEEDS),
        strategies.binary(max_size=200)), max_size=8).map(b"".join)
    failures = []

    @settings(max_examples=count, deadline=timeout * 1000,
              suppress_health_check=list(HealthCheck), database=None)
    @given(strategies.binary(min_size=3, max_size=3), lines)
    def fuzz(header, stream):
        run_input(protocol, header + stream)

    started = time.monotonic()
    try:
        fuzz()
    except Exception as exc:
        failures.append(repr(exc))
        print("failure: %r" % exc)
    return {"engine": "hypothesis", "inputs": count,
            "seconds": round(time.monotonic() - started, 1),
            "coverage_edges": None, "crashes": len(failures), "hangs": 0,
            "exit_status": 1 if failures else 0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000000,
                        help="how many inputs to run")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it is a "
                             "hang")
    parser.add_argument("--engine", choices=("auto", "atheris",
                                             "hypothesis"), default="auto")
    parser.add_argument("--target", choices=("protocol", "qcow2"),
                        default="protocol",
                        help="the parser to fuzz")
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return atheris_worker(args.count, args.timeout, args.corpus,
                              args.artifacts, args.target)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    if engine == "atheris":
        result = run_atheris(args.count, args.timeout, args.target)
    elif args.target == "qcow2":
        result = run_hypothesis_qcow2(args.count, args.timeout)
    else:
        result = run_hypothesis(args.count, args.timeout)
    result["target"] = args.target
    ok = result["crashes"] == 0 and result["hangs"] == 0 and \
        result["exit_status"] == 0 and result["inputs"] >= args.count
    result["target_met"] = ok
    print("%s: %d inputs in %.1fs, %s coverage edges, %d crashes, %d hangs"
          % (result["engine"], result["inputs"], result["seconds"],
             result["coverage_edges"], result["crashes"], result["hangs"]))
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
