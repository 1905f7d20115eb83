"""qcow2 images streamed onto a loop device (issue 17), proved with
``qemu-img compare``.

Every image is made by ``qemu-img`` (or written into by ``qemu-io``): every
cluster size from 512 bytes to 2 MiB, deflate and zstd compression,
extended L2 entries, every preallocation mode, images converted from a
sparse and from a full raw file, lazy refcounts, and guest writes in an
order unlike the file's. The device is filled with random bytes first, so
an unallocated range that was not zeroed fails the comparison. Devices are
loop devices on sparse files in a temporary directory, detached even on
failure.
"""

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import unittest

from teeth_agent.disk import writer
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from tests.functional import loopdev

MIB = 1024 * 1024
#: The guest's size: not a multiple of the largest cluster, so the last
#: cluster is partial.
SIZE = 6 * MIB + 64 * 1024


def _run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True)


class _OneShot(io.RawIOBase):
    """A source read once, in order, as a download is."""

    def __init__(self, path):
        self._stream = open(path, "rb")

    def readinto(self, buffer):
        return self._stream.readinto(buffer)

    def close(self):
        self._stream.close()
        super().close()


class Qcow2StreamTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        loopdev.require_root()
        for tool in ("qemu-img", "qemu-io"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is not installed" % tool)
        cls.work = tempfile.mkdtemp(prefix="teeth-qcow2-")
        cls.loops = loopdev.LoopDevices(os.path.join(cls.work))
        try:
            cls.device = cls.loops.create(SIZE, name="device.img",
                                          direct_io=True)
        except BaseException:
            cls.loops.cleanup()
            shutil.rmtree(cls.work, ignore_errors=True)
            raise
        cls.sparse = os.path.join(cls.work, "sparse.raw")
        with open(cls.sparse, "wb") as stream:
            stream.truncate(SIZE)
            for offset in range(0, SIZE, 900 * 1024):
                stream.seek(offset)
                stream.write(os.urandom(150 * 1024))
                stream.write(b"\0" * 70000 + b"teeth" * 9000)
        cls.full = os.path.join(cls.work, "full.raw")
        with open(cls.full, "wb") as stream:
            stream.write(os.urandom(SIZE))

    @classmethod
    def tearDownClass(cls):
        cls.loops.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def scramble(self):
        with open(self.device, "r+b") as stream:
            stream.write(os.urandom(SIZE))

    def convert(self, raw, *options, compress=False):
        image = os.path.join(self.work, "image.qcow2")
        argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
        if compress:
            argv.append("-c")
        if options:
            argv += ["-o", ",".join(options)]
        _run(*argv, raw, image)
        return image

    def stream(self, image, **kwargs):
        with open(image, "rb") as stream:
            digest = hashlib.sha512(stream.read()).hexdigest()
        source = _OneShot(image)
        try:
            return writer.write_stream(
                source, self.device, http_source.Hasher("sha512", digest),
                total=os.path.getsize(image), buffer_size=256 * 1024,
                buffer_count=4, **kwargs)
        finally:
            source.close()

    def assert_written(self, image, **kwargs):
        self.scramble()
        result = self.stream(image, **kwargs)
        self.assertEqual("qcow2", result["format"])
        self.assertEqual(SIZE, result["bytes_written"])
        compare = subprocess.run(
            ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", image,
             self.device], capture_output=True, text=True)
        self.assertEqual(0, compare.returncode,
                         compare.stdout + compare.stderr)

    def test_every_cluster_size_plain_and_deflated(self):
        for bits in range(9, 22):
            for compress in (False, True):
                with self.subTest(cluster=1 << bits, compress=compress):
                    self.assert_written(self.convert(
                        self.sparse, "cluster_size=%d" % (1 << bits),
                        compress=compress))

    def test_options(self):
        cases = [
            (self.sparse, ("compression_type=zstd",), True),
            (self.sparse, ("compression_type=zstd", "cluster_size=4096"),
             True),
            (self.sparse, ("compat=0.10",), True),
            (self.sparse, ("extended_l2=on", "cluster_size=16384"), False),
            (self.sparse, ("extended_l2=on",), True),
            (self.sparse, ("extended_l2=on", "cluster_size=2M"), False),
            (self.sparse, ("lazy_refcounts=on",), False),
            (self.sparse, ("refcount_bits=1",), False),
            (self.full, (), False),
            (self.full, ("cluster_size=512",), True),
        ]
        for mode in ("off", "metadata", "falloc", "full"):
            cases.append((self.sparse, ("preallocation=" + mode,), False))
            cases.append((self.full, ("preallocation=" + mode,), False))
        for raw, options, compress in cases:
            with self.subTest(raw=os.path.basename(raw), options=options,
                              compress=compress):
                self.assert_written(self.convert(raw, *options,
                                                 compress=compress))

    def written_by_qemu_io(self, options, commands, size=SIZE):
        image = os.path.join(self.work, "io.qcow2")
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options,
             image, str(size))
        for command in commands:
            _run("qemu-io", "-f", "qcow2", "-c", command, image)
        return image

    def test_subclusters_zero_clusters_and_guest_order(self):
        writes = ["write -P 0x11 5M 1M", "write -P 0x22 0 64k",
                  "write -z 5M 128k", "write -P 7 2M 100k",
                  "write -P 0x33 4k 8k", "write -z 2M 4k",
                  "write -c -P 9 3M 64k", "write -P 5 6M 1k"]
        for options in ("extended_l2=on,cluster_size=65536",
                        "extended_l2=on,cluster_size=32768,"
                        "compression_type=zstd",
                        "cluster_size=65536", "cluster_size=4096",
                        "cluster_size=65536,compat=0.10"):
            with self.subTest(options=options):
                self.assert_written(self.written_by_qemu_io(options, writes))

    def test_tables_after_their_data_are_kept_or_staged(self):
        # A resize moves the L1 table after the data it maps: the data is
        # kept in memory until it arrives, unless the buffer is too small.
        image = os.path.join(self.work, "resized.qcow2")
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
             "cluster_size=512", image, "1M")
        _run("qemu-io", "-f", "qcow2", "-c", "write -P 9 0 900k", image)
        _run("qemu-img", "resize", "-q", image, str(SIZE))
        _run("qemu-io", "-f", "qcow2", "-c", "write -P 8 5M 64k", image)
        self.assert_written(image)
        self.scramble()
        with open(self.device, "rb") as stream:
            before = stream.read()
        with self.assertRaises(writer.NeedsStaging) as caught:
            self.stream(image, qcow2_buffer=64 * 1024)
        self.assertIn("qcow2_stream_buffer", str(caught.exception))
        # Nothing could be placed before the L1 table: nothing was written.
        with open(self.device, "rb") as stream:
            self.assertEqual(before, stream.read())

    def test_a_checksum_mismatch_zeroes_what_was_written(self):
        image = self.convert(self.full)
        self.scramble()
        source = _OneShot(image)
        try:
            with self.assertRaises(errors.ChecksumMismatch) as caught:
                writer.write_stream(
                    source, self.device,
                    http_source.Hasher("sha256", "0" * 64),
                    total=os.path.getsize(image))
        finally:
            source.close()
        self.assertIn("was zeroed", " ".join(caught.exception.__notes__))
        with open(self.device, "rb") as stream:
            data = stream.read()
        self.assertEqual(bytes(len(data)), data)

    def test_a_virtual_size_beyond_the_device_writes_nothing(self):
        image = os.path.join(self.work, "big.qcow2")
        _run("qemu-img", "create", "-q", "-f", "qcow2", image,
             str(SIZE + MIB))
        self.scramble()
        with open(self.device, "rb") as stream:
            before = stream.read()
        with self.assertRaises(writer.ImageTooLarge):
            self.stream(image)
        with open(self.device, "rb") as stream:
            self.assertEqual(before, stream.read())


if __name__ == "__main__":
    unittest.main()
