#!/usr/bin/env python3
"""prepare_image against the command line and the hardware's ceilings.

Usage (as root)::

    python3 benchmarks/image_write.py [--size-mib 1024[,4096]] [--runs 3]
        [--algorithms sha256,sha512] [--all]

A random raw image is served by a threaded sendfile HTTP server on
127.0.0.1 and written to a loop device attached with ``losetup
--direct-io=on`` (a sparse file in a temporary directory), in alternating
runs: the agent's ``standbye.prepare_image`` (download, verification and
O_DIRECT write, the command's own code from end to end) and the command
line (``curl | dd bs=4M iflag=fullblock oflag=direct``, no checksum).

Two ceilings are measured in every round, right before the agent's run:
hashing the image's bytes in memory with the requested algorithm on one
core (a separate process, so its memory is not the agent's), and the
device's own O_DIRECT write (``dd if=/dev/zero bs=4M oflag=direct``). Each
of the agent's runs is divided by the lower ceiling of its own round; the
raw target is a median of those ratios of at least 0.90, for every size
and algorithm. A third figure, not one of the target's, is measured in
the same rounds and printed beside it: the download alone (``curl -o
/dev/null``), which on a small machine shares the cores with the hashing.

``--all`` adds, per format: qcow2 streamed, qcow2 staged (the agent's
fall-back, forced) and qcow2 with its tables after its data (keeping
nearly all of ``[standbye] qcow2_stream_buffer``: the memory worst case
that still streams) against ``curl -o`` then ``qemu-img convert``, and
gzip, xz and zstd against ``curl | gzip|xz|zstd -dc | dd`` (sha256, the
first size). Targets: qcow2 streamed at least 1.0 of ``curl -o; qemu-img
convert`` and at least 0.8 of raw's speed. The agent's peak RSS (sampled
every 10 ms during each of its writes) must stay under 150 MiB. The last
line is JSON.
"""

import argparse
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock
import uuid

from oslo_config import cfg

from teeth_agent import conf as teeth_conf
from teeth_agent.disk import writer
from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import standbye
from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent.hardware import power
from teeth_agent import tasks

MIB = 1024 * 1024


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        return

    def copyfile(self, source, outputfile):
        # sendfile keeps the server from being the bottleneck.
        outputfile.flush()
        offset = source.tell()
        size = os.fstat(source.fileno()).st_size
        try:
            while offset < size:
                sent = self.connection.sendfile(source, offset,
                                                size - offset)
                if not sent:
                    break
                offset += sent
        except (BrokenPipeError, ConnectionResetError):
            # The agent reads only the head of the image to detect its
            # format, then hangs up.
            self.close_connection = True


def start_server(directory):
    handler = functools.partial(_FileHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# The agent's RSS is measured in this process: the benchmark's own work
# uses small chunks, or none (the kernel copies), so that what it freed
# does not stay in the process's heap and count as the agent's.

def make_random_file(path, size):
    with open(path, "wb") as stream:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MIB))
            stream.write(chunk)
            remaining -= len(chunk)


def copy_head(source, target, size):
    """The first ``size`` bytes of the file ``source`` into ``target``."""
    with open(source, "rb") as read, open(target, "wb") as write:
        done = 0
        while done < size:
            count = os.copy_file_range(read.fileno(), write.fileno(),
                                       size - done)
            if not count:
                raise RuntimeError("%s is shorter than %d bytes"
                                   % (source, size))
            done += count


def digest_of(path, algorithm="sha256"):
    digest = hashlib.new(algorithm)
    buffer = bytearray(MIB)
    with open(path, "rb") as stream, memoryview(buffer) as view:
        while True:
            count = stream.readinto(view)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def attach(path):
    out = subprocess.run(["losetup", "--find", "--show", "--direct-io=on",
                          path], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def detach(device):
    subprocess.run(["partx", "-d", device], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", device], capture_output=True,
                   check=False)


class RSSPeak:
    """The process's resident set, sampled while a block runs."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now():
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGESIZE")

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self.peak = self.now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


_HASH_CEILING = """
import hashlib, os, sys, time
algorithm, size = sys.argv[1], int(sys.argv[2])
block = os.urandom(min(size, 256 << 20))
digest = hashlib.new(algorithm)
started = time.monotonic()
done = 0
while done < size:
    digest.update(block[:size - done])
    done += min(len(block), size - done)
print(time.monotonic() - started)
"""


def hash_ceiling(algorithm, size):
    """MiB/s of ``algorithm`` over ``size`` in-memory bytes, one core."""
    out = subprocess.run([sys.executable, "-c", _HASH_CEILING, algorithm,
                          str(size)], check=True, capture_output=True,
                         text=True).stdout
    return size / MIB / float(out)


def download_ceiling(url, size):
    """MiB/s of downloading ``url`` with curl into /dev/null: what
    receiving the image costs this machine, serving it included."""
    seconds = timed(lambda: pipeline(["curl", "-s", "-o", "/dev/null",
                                      url]))
    return size / MIB / seconds


def device_ceiling(device, size):
    """MiB/s of the device's O_DIRECT write (``dd`` from /dev/zero)."""
    seconds = timed(lambda: pipeline([
        "dd", "if=/dev/zero", "of=%s" % device, "bs=4M",
        "count=%d" % (size // (4 * MIB)), "oflag=direct", "status=none"]))
    return size / MIB / seconds


class Agent:
    """The standbye extension set up for one device, power simulated."""

    def __init__(self, device, work_dir):
        self.device = device
        conf = cfg.ConfigOpts()
        teeth_conf.register_agent_opts(conf)
        conf([], project="teeth-agent", default_config_files=[],
             default_config_dirs=[])
        for group, name, value in (
                ("hardware", "device_include", [device]),
                ("standbye", "image_cache_dir",
                 os.path.join(work_dir, "cache")),
                ("standbye", "work_dir", os.path.join(work_dir, "state")),
                ("power", "simulate", True)):
            conf.set_override(name, value, group=group)
        dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], conf)
        self.registry = tasks.TaskRegistry()
        context = ext_base.ExtensionContext(
            conf, dispatcher, self.registry, power.PowerController(True))
        self.extension = standbye.StandbyeExtension(context)
        self.extension.name = "standbye"
        self.rss_peaks = []
        #: The process's RSS when each write started: what this process
        #: (benchmark included) already held, not what the write took.
        self.rss_before = []

    def prepare(self, image):
        spec, bound = self.extension.commands()["standbye.prepare_image"]
        checked = ext_base.check_params(spec, {
            "task_id": uuid.uuid4().hex, "image": image,
            "root_device_hints": {"name": self.device}})
        checked = self.extension.validator(spec)(**checked)
        task_id = checked.pop("task_id")
        # Woken by the task's own end, not a polling interval (a 10 ms poll
        # added 5 ms on average, about 1 % of a 1 GiB write).
        ended = threading.Event()

        def changed(task):
            if task.task_id == task_id and task.terminal:
                ended.set()
        self.registry.subscribe(changed)
        try:
            with RSSPeak() as rss:
                before = rss.peak
                task, _ = self.registry.start(
                    task_id, "prepare_image",
                    lambda task: bound(task, **checked), True)
                ended.wait()
        finally:
            self.registry.unsubscribe(changed)
        self.rss_peaks.append(rss.peak)
        self.rss_before.append(before)
        if task.state != tasks.COMPLETE:
            raise RuntimeError("prepare_image failed: %s" % task.msg)
        return task.result


def pipeline(*commands):
    """Run ``commands`` joined by pipes (argument lists, no shell)."""
    processes = []
    previous = None
    for index, argv in enumerate(commands):
        last = index == len(commands) - 1
        process = subprocess.Popen(
            argv, stdin=previous,
            stdout=None if last else subprocess.PIPE)
        if previous is not None:
            previous.close()
        previous = process.stdout
        processes.append(process)
    codes = [process.wait() for process in processes]
    if any(codes):
        raise RuntimeError("%s exited %s" % (commands, codes))


def timed(func):
    started = time.monotonic()
    func()
    return time.monotonic() - started


def compare(name, ours, theirs, runs, size, agent=None, between=None):
    """Time ``ours`` and ``theirs`` in ``runs`` alternating rounds.

    ``between`` (optional) is called once in every round, untimed, right
    before ``ours``; what it returns is kept in the result's
    ``"between"`` list, one entry per round (the raw rows measure their
    ceilings that way, under the load of that round).
    """
    our_times, their_times, measured = [], [], []
    if agent is not None:
        agent.rss_peaks = []
        agent.rss_before = []

    def ours_timed():
        if between is not None:
            measured.append(between())
        return timed(ours)
    for run in range(runs):
        # Alternate who goes first so neither always gets a warm start.
        order = [(our_times, ours_timed), (their_times,
                                           functools.partial(timed, theirs))]
        for times, func in (order if run % 2 == 0 else order[::-1]):
            times.append(func())
    our_median = statistics.median(our_times)
    their_median = statistics.median(their_times)
    ratio = their_median / our_median
    print("%-6s ours   median %6.2fs (%s) %7.1f MiB/s" % (
        name, our_median, ", ".join("%.2f" % t for t in our_times),
        size / MIB / our_median))
    print("%-6s theirs median %6.2fs (%s) %7.1f MiB/s" % (
        name, their_median, ", ".join("%.2f" % t for t in their_times),
        size / MIB / their_median))
    print("%-6s ratio theirs/ours = %.3f (spread ours %.2fs, theirs %.2fs)"
          % (name, ratio, max(our_times) - min(our_times),
             max(their_times) - min(their_times)))
    result = {"ours_s": our_times, "theirs_s": their_times,
              "ours_median_s": our_median, "theirs_median_s": their_median,
              "ours_mib_s": size / MIB / our_median,
              "theirs_mib_s": size / MIB / their_median, "ratio": ratio}
    if between is not None:
        result["between"] = measured
    if agent is not None and agent.rss_peaks:
        result["rss_peak_mib"] = max(agent.rss_peaks) / MIB
        result["rss_before_mib"] = min(agent.rss_before) / MIB
        print("%-6s agent peak RSS %.1f MiB (the process held %.1f MiB "
              "before its first write)" % (name, result["rss_peak_mib"],
                                           result["rss_before_mib"]))
    return result


def verify(device, path, size):
    result = subprocess.run(["cmp", "-n", str(size), path, device],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("device content differs: %s" % result.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", default="1024",
                        help="image sizes in MiB, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--algorithms", default="sha256,sha512",
                        help="checksums the raw runs verify")
    parser.add_argument("--all", action="store_true",
                        help="also qcow2 (streamed and staged), gzip, xz "
                             "and zstd images")
    parser.add_argument("--compressed-size-mib", type=int, default=None,
                        help="with --all: the gzip, xz and zstd rows write "
                             "the first this many MiB of the image (xz of "
                             "random data is slow); default: the first "
                             "--size-mib")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the image and loop file go (not tmpfs)")
    args = parser.parse_args(argv)
    if args.compressed_size_mib is not None and \
            args.compressed_size_mib > int(args.size_mib.split(",")[0]):
        parser.error("--compressed-size-mib cannot exceed the first "
                     "--size-mib")
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices)")
    # A kill runs the clean-up too: loop devices detached, files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    sizes = [int(value) * MIB for value in args.size_mib.split(",")]
    algorithms = args.algorithms.split(",")
    results = {"size_mib": sizes[0] // MIB, "runs": args.runs,
               "sizes_mib": [size // MIB for size in sizes],
               "cpus": os.cpu_count(),
               "load_average": os.getloadavg()[0]}
    for number, size in enumerate(sizes):
        results.update(run_size(args, size, algorithms,
                                args.all and number == 0,
                                suffix="" if number == 0
                                else "-%d" % (size // MIB)))
    targets = {name: figures for name, figures in results.items()
               if isinstance(figures, dict)}
    rss = [figures["rss_peak_mib"] for figures in targets.values()
           if "rss_peak_mib" in figures]
    results["rss_peak_mib"] = max(rss) if rss else None
    results["rss_target_met"] = bool(rss) and max(rss) < 150
    print("agent peak RSS over every write: %.1f MiB (target < 150)"
          % (results["rss_peak_mib"] or 0))
    print(json.dumps(results))


def run_size(args, size, algorithms, everything, suffix):
    results = {}
    work = tempfile.mkdtemp(prefix="teeth-bench-", dir=args.dir)
    device = None
    server = None
    try:
        image = os.path.join(work, "image.raw")
        make_random_file(image, size)
        backing = os.path.join(work, "disk.img")
        with open(backing, "wb") as stream:
            stream.truncate(size + 64 * MIB)
        device = attach(backing)
        server = start_server(work)
        base_url = "http://127.0.0.1:%d/" % server.server_address[1]
        agent = Agent(device, work)
        for algorithm in algorithms:
            digest = digest_of(image, algorithm)

            def ceilings(algorithm=algorithm):
                # Both ceilings in every round, right before our run: on
                # a shared machine the load moves between rounds, and a
                # ceiling measured once, minutes away, is not the ceiling
                # of the run it is compared with.
                figures = {"hash": hash_ceiling(algorithm, size),
                           "device": device_ceiling(device, size),
                           "download": download_ceiling(
                               base_url + "image.raw", size)}
                print("%d MiB: %s ceiling %.1f MiB/s (one core, in "
                      "memory), device O_DIRECT ceiling %.1f MiB/s, "
                      "download %.1f MiB/s (curl -o /dev/null; not one of "
                      "the target's ceilings)"
                      % (size // MIB, algorithm, figures["hash"],
                         figures["device"], figures["download"]))
                return figures

            def raw_image(digest=digest, algorithm=algorithm):
                return {"id": str(uuid.uuid4()),
                        "urls": [base_url + "image.raw"],
                        "hashes": {algorithm: digest}, "size": size}
            name = "raw" if algorithm == "sha256" else "raw-" + algorithm
            figures = compare(
                name + suffix, lambda: agent.prepare(raw_image()),
                lambda: pipeline(["curl", "-s", base_url + "image.raw"],
                                 ["dd", "of=%s" % device, "bs=4M",
                                  "iflag=fullblock", "oflag=direct",
                                  "status=none"]),
                args.runs, size, agent, between=ceilings)
            rounds = figures.pop("between")
            hashing = statistics.median(c["hash"] for c in rounds)
            disk = statistics.median(c["device"] for c in rounds)
            # Each run against the lower ceiling of its own round; the
            # figure is the median of those ratios.
            paired = [size / MIB / seconds / min(c["hash"], c["device"])
                      for seconds, c in zip(figures["ours_s"], rounds)]
            of_ceiling = statistics.median(paired)
            # Not the target: the same against the lowest of the three,
            # the download included (on a small machine the server and
            # the TCP receive share the cores with the hashing).
            with_download = statistics.median(
                size / MIB / seconds / min(c.values())
                for seconds, c in zip(figures["ours_s"], rounds))
            figures.update({
                "algorithm": algorithm, "size_mib": size // MIB,
                "hash_ceiling_mib_s": hashing,
                "device_ceiling_mib_s": disk,
                "hash_ceilings_mib_s": [c["hash"] for c in rounds],
                "device_ceilings_mib_s": [c["device"] for c in rounds],
                "of_ceiling_runs": paired,
                "of_ceiling": of_ceiling,
                "download_ceilings_mib_s": [c["download"] for c in rounds],
                "of_lowest_with_download": with_download,
                "target_met": of_ceiling >= 0.90})
            print("%-6s %.1f MiB/s; of the lower ceiling of its round: "
                  "%s, median %.3f (target >= 0.90)"
                  % (name + suffix, figures["ours_mib_s"],
                     ", ".join("%.3f" % ratio for ratio in paired),
                     of_ceiling))
            print("%-6s (of the lowest of the three, the download "
                  "included: median %.3f)" % (name + suffix, with_download))
            results[name + suffix] = figures
        verify(device, image, size)
        if everything:
            results.update(compare_formats(
                agent, work, base_url, device, image, size, args.runs,
                results["raw"], compressed_size=args.compressed_size_mib
                and args.compressed_size_mib * MIB))
    finally:
        if server is not None:
            server.shutdown()
        if device is not None:
            detach(device)
        shutil.rmtree(work, ignore_errors=True)
    return results


def _decompress_to(device, url, *decompress):
    return lambda: pipeline(["curl", "-s", url], list(decompress),
                            ["dd", "of=%s" % device, "bs=4M",
                             "iflag=fullblock", "oflag=direct",
                             "status=none"])


def late_tables(agent, work, base_url, device, size, runs):
    """qcow2 with its L1 table after most of its data, streamed.

    ``qemu-img resize`` of a smaller image moves the L1 table after the
    data written so far (``kept``: the default ``[standbye]
    qcow2_stream_buffer`` less 1 MiB), which the agent must then keep in
    memory until the table arrives: the layout that costs the most memory
    and still streams. The rest of the guest is written after the resize.
    """
    kept = writer.QCOW2_STREAM_BUFFER - MIB
    path = os.path.join(work, "late.qcow2")
    # 16 KiB clusters: one L2 table maps 32 MiB, so growing the image
    # past ``kept`` needs a bigger L1 table, which qemu-img writes anew
    # after the data.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "cluster_size=16384", path, str(kept)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 %d"
                    % kept, path], check=True, capture_output=True)
    subprocess.run(["qemu-img", "resize", "-q", path, str(size)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 %d %d"
                    % (kept, (size - kept) // 2), path], check=True,
                   capture_output=True)
    with open(path, "rb") as stream:
        l1_offset = struct.unpack(">Q", stream.read(48)[40:48])[0]
    if l1_offset < kept:
        raise RuntimeError("qemu-img left the L1 table at byte %d, before "
                           "the data" % l1_offset)
    digest = digest_of(path)
    local = os.path.join(work, "fetched-late.qcow2")
    sources = []

    def ours():
        sources.append(agent.prepare({
            "id": str(uuid.uuid4()), "urls": [base_url + "late.qcow2"],
            "hashes": {"sha256": digest}}))

    def theirs():
        subprocess.run(["curl", "-s", "-o", local, base_url + "late.qcow2"],
                       check=True)
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                        "-t", "none", "-n", local, device], check=True)
        os.unlink(local)
    figures = compare("qcow2l", ours, theirs, runs, size, agent)
    figures["kept_mib"] = kept / MIB
    # A streamed write reports the bytes it read; a staged one (converted
    # by qemu-img from work_dir) does not.
    figures["staged"] = any("bytes_read" not in result for result in sources)
    print("qcow2l tables after %.0f MiB of data: %s" % (
        kept / MIB, "staged" if figures["staged"] else "streamed"))
    os.unlink(path)
    return figures


def compare_formats(agent, work, base_url, device, image, size, runs, raw,
                    compressed_size=None):
    results = {}
    qcow = os.path.join(work, "image.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image,
                    qcow], check=True)
    qcow_digest = digest_of(qcow)
    local = os.path.join(work, "fetched.qcow2")

    def curl_qemu_img():
        subprocess.run(["curl", "-s", "-o", local, base_url + "image.qcow2"],
                       check=True)
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                        "-t", "none", "-n", local, device], check=True)
        os.unlink(local)

    def ours_qcow2():
        result = agent.prepare({
            "id": str(uuid.uuid4()), "urls": [base_url + "image.qcow2"],
            "hashes": {"sha256": qcow_digest}})
        return result

    real_write_stream = writer.write_stream

    def staged_write_stream(*args, **kwargs):
        kwargs["qcow2_buffer"] = None
        return real_write_stream(*args, **kwargs)

    def ours_staged():
        with mock.patch.object(writer, "write_stream", staged_write_stream):
            ours_qcow2()

    streamed = compare("qcow2", ours_qcow2, curl_qemu_img, runs, size,
                       agent)
    streamed["of_raw"] = raw["ours_median_s"] / streamed["ours_median_s"]
    streamed["target_met"] = streamed["ratio"] >= 1.0 and \
        streamed["of_raw"] >= 0.8
    print("qcow2  streamed: %.3f of curl -o; qemu-img convert (target >= "
          "1.0), %.3f of raw (target >= 0.8)" % (streamed["ratio"],
                                                 streamed["of_raw"]))
    results["qcow2"] = streamed
    verify(device, image, size)
    results["qcow2-staged"] = compare("qcow2s", ours_staged, curl_qemu_img,
                                      runs, size, agent)
    verify(device, image, size)
    results["qcow2-late-tables"] = late_tables(agent, work, base_url, device,
                                               size, runs)
    size = compressed_size or size
    if size < os.path.getsize(image):
        # The compressed rows' own size: the head of the same image.
        head = os.path.join(work, "image-head.raw")
        copy_head(image, head, size)
        image = head
        print("compressed rows: the first %d MiB of the image" % (size // MIB))
    for name, tool, level in (("gzip", "gzip", "-1"), ("xz", "xz", "-0"),
                              ("zstd", "zstd", "-1")):
        packed = os.path.join(work, "image." + name)
        with open(packed, "wb") as output:
            subprocess.run([tool, "-c", "-q", level, "-T2", image]
                           if tool != "gzip" else
                           [tool, "-c", "-q", level, image],
                           stdout=output, check=True)
        packed_digest = digest_of(packed)
        results[name] = compare(
            name, lambda packed=packed, packed_digest=packed_digest:
            agent.prepare({"id": str(uuid.uuid4()),
                           "urls": [base_url + os.path.basename(packed)],
                           "hashes": {"sha256": packed_digest}}),
            _decompress_to(device, base_url + os.path.basename(packed),
                           tool, "-dc", "-q"),
            runs, size, agent)
        results[name]["size_mib"] = size // MIB
        verify(device, image, size)
        os.unlink(packed)
    return results


if __name__ == "__main__":
    main()
