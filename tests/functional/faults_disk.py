"""Disks that fail and fill up, and an image server that holds and lies.

Pieces for ``test_faults_disk.py``. Everything here is built on loop
devices the test creates (:mod:`tests.functional.loopdev`) and on
127.0.0.1; cleanup is registered on the test case as each piece is made,
so it runs in reverse order (inner devices before the file system holding
them) even when the test fails.

* :class:`SmallFilesystem`: a fresh ext4 on its own loop device, mounted
  under a temporary directory. It can be filled up by another writer
  (:meth:`SmallFilesystem.fill`), and it can hold the sparse backing
  files of further loop devices (:meth:`SmallFilesystem.create_device`).
  Such a device fails the way a disk does when the storage under it goes
  away: once :meth:`SmallFilesystem.shut_down` is called every write to it
  ends in ``EIO``; when the file system is too small for the device,
  writes past the free space end in ``ENOSPC`` (a thin-provisioned disk
  that ran out).
* :class:`HoldingImageServer`: serves in-memory images with ``Range``
  support, and on request holds a download at a byte offset until the test
  releases it, drops the connection at an offset and serves other content
  afterwards (the mirror changed between two attempts), or answers a
  resume with a ``Content-Range`` that starts elsewhere.

The kernel here has no device-mapper driver, so ``dmsetup`` (an ``error``
target) cannot make a device fail; shutting down the file system under a
loop device gives the same ``EIO`` on every write.
"""

import fcntl
import http.server
import os
import re
import struct
import subprocess
import tempfile
import threading
import time

from tests.functional import loopdev

MIB = 1024 * 1024

# EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); the flag NOLOGFLUSH drops the
# journal and dirty data at once, as a disk that vanished would.
_EXT4_IOC_SHUTDOWN = 0x8004587D
_EXT4_GOING_FLAGS_NOLOGFLUSH = 2

# Bounds only: how long a broken test takes to fail, never a measure.
HOLD_LIMIT = 120.0


def allocated_bytes(path):
    """Bytes the file system has allocated (or reserved) for ``path``."""
    return os.stat(path).st_blocks * 512


def wait_for(predicate, timeout, what):
    """Poll ``predicate()`` until it is true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("%s did not happen within %ss"
                                 % (what, timeout))
        time.sleep(0.02)


class SmallFilesystem:
    """An ext4 file system of ``size`` bytes on a loop device, mounted.

    ``path`` is the mount point. Cleanup (registered on ``testcase``)
    detaches the devices made by :meth:`create_device`, unmounts and
    detaches the file system's own device.
    """

    def __init__(self, testcase, size, name="fs"):
        self._outer = loopdev.LoopDevices()
        testcase.addCleanup(self._outer.cleanup)
        self.device = self._outer.create(size, name="%s.img" % name)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", self.device],
                       check=True, capture_output=True)
        self.path = tempfile.mkdtemp(prefix="teeth-%s-" % name)
        testcase.addCleanup(self._remove_mount_point)
        subprocess.run(["mount", self.device, self.path], check=True,
                       capture_output=True)
        testcase.addCleanup(self._unmount)
        self._inner = loopdev.LoopDevices(directory=self.path)
        testcase.addCleanup(self._inner.cleanup)

    def _remove_mount_point(self):
        try:
            os.rmdir(self.path)
        except OSError:
            # Still mounted (a lazy unmount not finished): the directory
            # is left in /tmp rather than emptied through the mount.
            pass

    def _unmount(self):
        if subprocess.run(["umount", self.path], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", self.path], capture_output=True,
                           check=False)

    def free(self):
        """Bytes an unprivileged writer may still allocate."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def entries(self):
        """Names in the mount point, ``lost+found`` left out."""
        return sorted(name for name in os.listdir(self.path)
                      if name != "lost+found")

    def create_device(self, size, name="disk.img"):
        """A loop device whose sparse backing file lives in this file
        system; returns ``(device, backing file)``."""
        device = self._inner.create(size, name=name)
        return device, self._inner.backing_file(device)

    def fill(self, name="filler"):
        """Take every free block, as another writer would; returns the
        filler's path (delete it to give the space back)."""
        path = os.path.join(self.path, name)
        chunk = bytes(MIB)
        with open(path, "wb", buffering=0) as stream:
            while True:
                try:
                    stream.write(chunk)
                except OSError:
                    break
            # The last blocks, smaller than a chunk.
            while True:
                try:
                    stream.write(chunk[:4096])
                except OSError:
                    break
            os.fsync(stream.fileno())
        return path

    def shut_down(self):
        """Make every later write under the mount point fail with EIO."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, _EXT4_IOC_SHUTDOWN,
                        struct.pack("I", _EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        return

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.images.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = len(data)
        start, end = 0, size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)",
                             self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            claimed = start
            if self.path in server.misplaced_ranges and start:
                # A broken cache or proxy: it says (and sends) another
                # part of the file than the one asked for.
                start = claimed = 0
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d"
                             % (claimed, end, size))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._send(data, start, end + 1)

    def _send(self, data, offset, end):
        server = self.server
        view = memoryview(data)
        while offset < end:
            stop = min(end, offset + MIB)
            hold = server.holds.get(self.path)
            if hold is not None and offset <= hold[0] < stop:
                stop = hold[0]
            drop = server.drops.get(self.path)
            if drop is not None and offset <= drop < stop:
                stop = drop
            try:
                self.wfile.write(view[offset:stop])
                self.wfile.flush()
            except OSError:
                return
            offset = stop
            if hold is not None and offset == hold[0]:
                server.holds.pop(self.path, None)
                hold[1].set()
                hold[2].wait(HOLD_LIMIT)
            if drop is not None and offset == drop:
                server.drops.pop(self.path, None)
                replacement = server.after_drop.pop(self.path, None)
                if replacement is not None:
                    server.images[self.path] = replacement
                self.close_connection = True
                return


class HoldingImageServer(http.server.ThreadingHTTPServer):
    """Serves ``images`` (URL path -> bytes) on 127.0.0.1.

    Use as a context manager. Knobs, each acting once:

    * :meth:`hold`: the body of a download stops after a byte offset until
      :meth:`release` (the bytes before it are sent and flushed);
    * :meth:`drop`: the connection closes after a byte offset; with
      ``then_serve``, later requests get that content instead;
    * ``misplaced_ranges``: paths whose resume requests (``Range:
      bytes=N-``, N > 0) are answered 206 from byte 0, with a
      ``Content-Range`` that says so.

    ``requests`` lists ``(path, Range header)`` in arrival order.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = {}
        self.holds = {}
        self.drops = {}
        self.after_drop = {}
        self.misplaced_ranges = set()
        self.requests = []
        self._thread = threading.Thread(target=self.serve_forever,
                                        daemon=True)

    def add(self, url_path, data):
        """Serve ``data`` at ``url_path``; returns its URL."""
        self.images[url_path] = data
        return "http://127.0.0.1:%d%s" % (self.server_address[1], url_path)

    def hold(self, url_path, offset):
        """Hold the next download of ``url_path`` that reaches ``offset``;
        returns ``(reached, release)`` events."""
        reached, release = threading.Event(), threading.Event()
        self.holds[url_path] = (offset, reached, release)
        return reached, release

    def drop(self, url_path, offset, then_serve=None):
        self.drops[url_path] = offset
        if then_serve is not None:
            self.after_drop[url_path] = then_serve

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        for _, _, release in list(self.holds.values()):
            release.set()
        self.shutdown()
        self.server_close()


def gpt_image(directory, size, name="image.raw"):
    """Random bytes of ``size`` with a GPT (one partition) over them.

    Returns the image's bytes; ``blkid -p`` finds a partition table in
    it, so a device it was written to shows whether it was wiped.
    """
    path = os.path.join(directory, name)
    with open(path, "wb") as stream:
        stream.write(os.urandom(size))
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:0", "-c", "1:root", path],
                   check=True, capture_output=True)
    with open(path, "rb") as stream:
        return stream.read()


def signatures(device):
    """What ``wipefs`` and ``blkid -p`` find on ``device`` (read-only)."""
    listed = subprocess.run(["wipefs", "--noheadings", "--output",
                             "TYPE,OFFSET", device], capture_output=True,
                            text=True, check=True)
    probed = subprocess.run(["blkid", "-p", device], capture_output=True,
                            text=True, check=False)
    return {"wipefs": listed.stdout.split(),
            "blkid": probed.stdout.strip() if probed.returncode == 0 else ""}


def open_files_under(pid, directory):
    """Paths under ``directory`` that process ``pid`` has open."""
    found = []
    fd_dir = "/proc/%d/fd" % pid
    prefix = os.path.join(os.path.realpath(directory), "")
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue  # closed meanwhile
        if target.startswith(prefix):
            found.append(target)
    return found
