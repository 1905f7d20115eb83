#!/usr/bin/env python3
"""prepare_image against ``curl | dd`` on the same loop device.

Usage (as root)::

    python3 benchmarks/image_write.py [--size-mib 1024] [--runs 3] [--all]

A random raw image is served by a threaded HTTP server on 127.0.0.1 and
written to a loop device attached with ``losetup --direct-io=on``, in
alternating runs: the agent's ``standbye.prepare_image`` (download, sha256
verification and O_DIRECT write, the command's own code from end to end)
and ``curl -s URL | dd of=DEV bs=4M oflag=direct`` (no checksum at all).
It prints the median time of each, their spread, the ratio
``curl_time / our_time`` (target: at least 0.90) and a final JSON line.
``--all`` also compares a qcow2 image (against ``curl -o`` then
``qemu-img convert``) and a zstd image (against ``curl | zstd -dc | dd``).
"""

import argparse
import functools
import hashlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from oslo_config import cfg

from teeth_agent import conf as teeth_conf
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


def make_random_file(path, size):
    with open(path, "wb") as stream:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 16 * MIB))
            stream.write(chunk)
            remaining -= len(chunk)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(16 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def attach(path):
    out = subprocess.run(["losetup", "--find", "--show", "--direct-io=on",
                          path], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def detach(device):
    subprocess.run(["partx", "-d", device], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", device], capture_output=True,
                   check=False)


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

    def prepare(self, image):
        spec, bound = self.extension.commands()["standbye.prepare_image"]
        checked = ext_base.check_params(spec, {
            "task_id": uuid.uuid4().hex, "image": image,
            "root_device_hints": {"name": self.device}})
        checked = self.extension.validator(spec)(**checked)
        task_id = checked.pop("task_id")
        task, _ = self.registry.start(task_id, "prepare_image",
                                      lambda task: bound(task, **checked),
                                      True)
        while not task.terminal:
            time.sleep(0.01)
        if task.state != tasks.COMPLETE:
            raise RuntimeError("prepare_image failed: %s" % task.msg)


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


def compare(name, ours, theirs, runs, size):
    our_times, their_times = [], []
    for run in range(runs):
        # Alternate who goes first so neither always gets a warm start.
        order = [(our_times, ours), (their_times, theirs)]
        for times, func in (order if run % 2 == 0 else order[::-1]):
            times.append(timed(func))
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
    return {"ours_s": our_times, "theirs_s": their_times,
            "ours_median_s": our_median, "theirs_median_s": their_median,
            "ratio": ratio}


def verify(device, path, size):
    result = subprocess.run(["cmp", "-n", str(size), path, device],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("device content differs: %s" % result.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--all", action="store_true",
                        help="also compare qcow2 and zstd images")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the image and loop file go (not tmpfs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices)")
    size = args.size_mib * MIB
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
        results = {"size_mib": args.size_mib, "runs": args.runs}

        def raw_image():
            return {"id": str(uuid.uuid4()), "urls": [base_url + "image.raw"],
                    "hashes": {"sha256": digest}, "size": size}

        digest = sha256_of(image)
        results["raw"] = compare(
            "raw", lambda: agent.prepare(raw_image()),
            lambda: pipeline(["curl", "-s", base_url + "image.raw"],
                             ["dd", "of=%s" % device, "bs=4M",
                              "oflag=direct", "status=none"]),
            args.runs, size)
        agent.prepare(raw_image())
        verify(device, image, size)
        if args.all:
            results.update(compare_formats(agent, work, base_url, device,
                                           image, size, args.runs))
        print(json.dumps(results))
    finally:
        if server is not None:
            server.shutdown()
        if device is not None:
            detach(device)
        shutil.rmtree(work, ignore_errors=True)


def compare_formats(agent, work, base_url, device, image, size, runs):
    results = {}
    qcow = os.path.join(work, "image.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image,
                    qcow], check=True)
    qcow_digest = sha256_of(qcow)
    local = os.path.join(work, "fetched.qcow2")

    def curl_qemu_img():
        subprocess.run(["curl", "-s", "-o", local, base_url + "image.qcow2"],
                       check=True)
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                        "-t", "none", "-n", local, device], check=True)
        os.unlink(local)

    results["qcow2"] = compare(
        "qcow2", lambda: agent.prepare({
            "id": str(uuid.uuid4()), "urls": [base_url + "image.qcow2"],
            "hashes": {"sha256": qcow_digest}}),
        curl_qemu_img, runs, size)
    verify(device, image, size)
    zst = os.path.join(work, "image.zst")
    subprocess.run(["zstd", "-q", "-1", image, "-o", zst], check=True)
    zst_digest = sha256_of(zst)
    results["zstd"] = compare(
        "zstd", lambda: agent.prepare({
            "id": str(uuid.uuid4()), "urls": [base_url + "image.zst"],
            "hashes": {"sha256": zst_digest}}),
        lambda: pipeline(["curl", "-s", base_url + "image.zst"],
                         ["zstd", "-dc", "-q"],
                         ["dd", "of=%s" % device, "bs=4M", "oflag=direct",
                          "status=none"]),
        runs, size)
    verify(device, image, size)
    return results


if __name__ == "__main__":
    main()
