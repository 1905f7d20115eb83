"""Slow a process's writes to chosen loop devices, to make a task long.

A disk task on a small loop device ends in a fraction of a second; a test
that must act while it runs slows it down instead of making the device
(and the test) big. :class:`WriteThrottle` makes a blkio cgroup (cgroup v1)
that limits writes to the given devices, moves a process into it (its
threads and children follow), and can lift the limit at once so the task
then finishes quickly. Only the devices named are limited; on cleanup the
process is moved back and the cgroup removed.
"""

import os
import unittest

BLKIO_ROOT = "/sys/fs/cgroup/blkio"


def available():
    return os.path.exists(os.path.join(BLKIO_ROOT,
                                       "blkio.throttle.write_bps_device"))


def device_number(path):
    st = os.stat(path)
    return "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))


class WriteThrottle:
    def __init__(self, testcase, devices, bytes_per_second):
        if not available():
            raise unittest.SkipTest("no cgroup v1 blkio throttling here")
        self.devices = [device_number(device) for device in devices]
        self.path = os.path.join(BLKIO_ROOT, "teeth-test-%d-%d"
                                 % (os.getpid(), id(self)))
        os.mkdir(self.path)
        self.pids = []
        testcase.addCleanup(self.close)
        self.limit(bytes_per_second)

    def _write(self, name, text):
        with open(os.path.join(self.path, name), "w") as stream:
            stream.write(text)

    def limit(self, bytes_per_second):
        """Set the write limit of every device; 0 lifts it."""
        for number in self.devices:
            self._write("blkio.throttle.write_bps_device",
                        "%s %d" % (number, bytes_per_second))

    def add(self, pid):
        self._write("cgroup.procs", str(pid))
        self.pids.append(pid)

    def close(self):
        self.limit(0)
        for pid in self.pids:
            try:
                with open(os.path.join(BLKIO_ROOT, "cgroup.procs"),
                          "w") as stream:
                    stream.write(str(pid))
            except OSError:
                pass  # the process is gone, which empties the group too
        try:
            os.rmdir(self.path)
        except OSError:
            pass
