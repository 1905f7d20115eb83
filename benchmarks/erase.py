"""Benchmark: the agent's overwrite erase against dd on one loop device.

Run as root::

    python3 benchmarks/erase.py [--size-mib N] [--runs N] [--block-mib N]

It creates a sparse file, attaches it with ``losetup --direct-io=on``, then
alternates runs of :func:`teeth_agent.hardware.erase.overwrite` and ``dd
if=/dev/zero of=DEV bs=4M oflag=direct`` on the same device, and prints the
median time of each, their spread and the ratio dd_time / our_time (the
target is at least 0.95). The last line is one JSON object. The device is
detached and the file removed in every case.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from benchmarks import benchstats  # noqa: E402
from teeth_agent.hardware import erase  # noqa: E402

MIB = 1024 * 1024


def attach(path):
    out = subprocess.run(["losetup", "--find", "--show", "--direct-io=on",
                          path], capture_output=True, text=True, check=True)
    device = out.stdout.strip()
    if not device.startswith("/dev/loop"):
        raise RuntimeError("losetup returned %r" % device)
    return device


def time_ours(device, block_size):
    started = time.perf_counter()
    erase.overwrite(device, lambda done, total: None, block_size=block_size)
    return time.perf_counter() - started


def time_dd(device, size):
    started = time.perf_counter()
    # count bounds dd to the device: without it dd ends with "No space
    # left on device" and a failure status.
    subprocess.run(["dd", "if=/dev/zero", "of=%s" % device, "bs=4M",
                    "oflag=direct", "iflag=count_bytes", "count=%d" % size,
                    "status=none"], check=True)
    # Our path ends with fsync; make dd's run end the same way.
    fd = os.open(device, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="size of the loop device in MiB")
    parser.add_argument("--runs", type=int, default=5,
                        help="runs of each contender, alternating")
    parser.add_argument("--block-mib", type=int, default=8,
                        help="write size of the agent's overwrite in MiB")
    parser.add_argument("--directory", default=None,
                        help="where the sparse backing file is created")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root for loop devices")
    directory = tempfile.mkdtemp(prefix="teeth-erase-bench-",
                                 dir=args.directory)
    path = os.path.join(directory, "disk.img")
    device = None
    ours, dds = [], []
    try:
        size = args.size_mib * MIB
        with open(path, "wb") as stream:
            stream.truncate(size)
        device = attach(path)
        # One unmeasured pass of each allocates the sparse file's blocks so
        # that no contender pays for the allocation alone.
        time_dd(device, size)
        time_ours(device, args.block_mib * MIB)
        for run in range(args.runs):
            pair = [("ours", lambda: time_ours(device, args.block_mib * MIB)),
                    ("dd", lambda: time_dd(device, size))]
            if run % 2:
                pair.reverse()
            for name, contender in pair:
                seconds = contender()
                (ours if name == "ours" else dds).append(seconds)
                print("run %d %-4s %.3fs" % (run + 1, name, seconds))
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        subprocess.run(["rm", "-rf", directory], check=False)
    ours_median = statistics.median(ours)
    dd_median = statistics.median(dds)
    ratio = dd_median / ours_median
    print("ours: median %.3fs spread %.1f%%; dd: median %.3fs spread %.1f%%; "
          "ratio dd/ours %.3f (target >= 0.95)"
          % (ours_median, 100 * benchstats.spread(ours), dd_median,
             100 * benchstats.spread(dds), ratio))
    print(json.dumps({"size_mib": args.size_mib, "runs": args.runs,
                      "block_mib": args.block_mib,
                      "ours_median_s": round(ours_median, 4),
                      "dd_median_s": round(dd_median, 4),
                      "ours_spread": round(benchstats.spread(ours), 4),
                      "dd_spread": round(benchstats.spread(dds), 4),
                      "ratio": round(ratio, 4),
                      "target_met": ratio >= 0.95}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
