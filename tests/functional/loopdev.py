"""Loop devices for functional tests: created here, always detached.

Every device a functional test touches comes from :func:`loop_device` (or
:class:`LoopDevices`): a sparse file under a temporary directory attached
with ``losetup``. Tests never name any other block device.
"""

import contextlib
import os
import subprocess
import tempfile
import unittest


def require_root(testcase=None):
    """Skip (with the reason) unless running as root with losetup."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root for loop devices")
    if subprocess.run(["losetup", "--version"], capture_output=True,
                      check=False).returncode != 0:
        raise unittest.SkipTest("losetup is not installed")


def attach(path, direct_io=False, sector_size=None):
    argv = ["losetup", "--find", "--show"]
    if direct_io:
        argv.append("--direct-io=on")
    if sector_size:
        argv.append("--sector-size=%d" % sector_size)
    argv.append(path)
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    device = out.stdout.strip()
    if not device.startswith("/dev/loop"):
        raise RuntimeError("losetup returned %r" % device)
    return device


def detach(device):
    # Remove partitions first (partx), then the device; ignore "not found".
    subprocess.run(["partx", "-d", device], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", device], capture_output=True,
                   check=False)


class LoopDevices:
    """Creates loop devices backed by sparse files; ``cleanup()`` detaches
    every one of them and removes the files, even after a failure."""

    def __init__(self, directory=None):
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="teeth-loop-")
        self.devices = []

    def create(self, size_bytes, name=None, direct_io=False,
               sector_size=None, fill=None):
        """A new loop device of ``size_bytes``; ``fill`` may be b"random"
        to fill it with random data first."""
        name = name or "disk%d.img" % len(self.devices)
        path = os.path.join(self.directory, name)
        with open(path, "wb") as stream:
            stream.truncate(size_bytes)
            if fill == "random":
                remaining = size_bytes
                while remaining:
                    chunk = os.urandom(min(remaining, 4 * 1024 * 1024))
                    stream.seek(size_bytes - remaining)
                    stream.write(chunk)
                    remaining -= len(chunk)
        device = attach(path, direct_io=direct_io, sector_size=sector_size)
        self.devices.append((device, path))
        return device

    def backing_file(self, device):
        for dev, path in self.devices:
            if dev == device:
                return path
        raise KeyError(device)

    def cleanup(self):
        for device, _ in reversed(self.devices):
            subprocess.run(["umount", "-l", device], capture_output=True,
                           check=False)
            detach(device)
        self.devices = []
        if self._own_dir:
            subprocess.run(["rm", "-rf", self.directory], check=False)


@contextlib.contextmanager
def loop_devices(directory=None):
    devices = LoopDevices(directory)
    try:
        yield devices
    finally:
        devices.cleanup()
