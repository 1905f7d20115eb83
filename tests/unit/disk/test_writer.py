"""teeth_agent.disk.writer: decoding and writing an image stream, and
the write path's limits (issue 11): decoder memory, the pinned
descriptor, zeroing what a failed write left.
"""

import gc
import gzip
import hashlib
import io
import lzma
import os
import shutil
import tempfile
from unittest import mock

from teeth_agent.disk import blockdev
from teeth_agent.disk import writer
from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.hardware import safety
from teeth_agent.images import formats
from teeth_agent.images import qcow2_stream
from teeth_agent import units
from tests import base
from tests.unit.images import samples

MIB = units.MIB


class _Collect:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data


class DecompressTest(base.TestCase):

    def decode(self, fmt, compressed, step=1000):
        target = _Collect()
        sink = writer._decoder(fmt, target, 4096)
        for offset in range(0, len(compressed), step):
            sink.write(compressed[offset:offset + step])
        sink.close()
        return bytes(target.data)

    def test_gzip_members_and_xz(self):
        data = os.urandom(50000) + bytes(100000)
        twice = gzip.compress(data) + gzip.compress(data)
        self.assertEqual(data + data, self.decode("gzip", twice))
        self.assertEqual(data, self.decode("xz", lzma.compress(data)))

    def test_truncated_or_corrupt(self):
        compressed = gzip.compress(os.urandom(50000))
        with self.assertRaises(writer.CorruptImage):
            self.decode("gzip", compressed[:len(compressed) // 2])
        with self.assertRaises(writer.CorruptImage):
            self.decode("xz", b"\xfd7zXZ\x00" + bytes(100))


class DeviceWriterTest(base.TestCase):
    """On a regular file; O_DIRECT needs a file system that has it."""

    def make_target(self, size):
        directory = tempfile.mkdtemp(dir="/var/tmp")
        self.addCleanup(__import__("shutil").rmtree, directory)
        path = os.path.join(directory, "device")
        with open(path, "wb") as stream:
            stream.truncate(size)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("no O_DIRECT on %s" % directory)
        return path

    def test_unaligned_tail_and_odd_chunks(self):
        path = self.make_target(MIB)
        data = os.urandom(300000 + 7)
        output = writer.DeviceWriter(path, buffer_size=65536)
        for offset in range(0, len(data), 9999):
            output.write(data[offset:offset + 9999])
        self.assertEqual(len(data), output.close())
        with open(path, "rb") as stream:
            self.assertEqual(data, stream.read(len(data)))
            self.assertEqual(bytes(MIB - len(data)), stream.read())

    def test_refuses_to_write_past_the_end(self):
        path = self.make_target(65536)
        output = writer.DeviceWriter(path, buffer_size=65536, start=4096,
                                     end=65536)
        with self.assertRaises(writer.ImageTooLarge):
            output.write(bytes(65536))
            output.close()
        output.abort()

    @mock.patch.object(writer, "wipe_signatures")
    def test_checksum_mismatch_wipes(self, wipe):
        path = self.make_target(MIB)
        hasher = http_source.Hasher("sha256", "0" * 64)
        with self.assertRaises(errors.ChecksumMismatch):
            writer.write_stream(io.BytesIO(os.urandom(5000)), path, hasher,
                                buffer_size=4096)
        wipe.assert_called_once_with(path)

    def test_write_stream_gzip(self):
        path = self.make_target(MIB)
        data = os.urandom(100000)
        compressed = gzip.compress(data)
        hasher = http_source.Hasher(
            "sha256", __import__("hashlib").sha256(compressed).hexdigest())
        result = writer.write_stream(io.BytesIO(compressed), path, hasher,
                                     buffer_size=8192)
        self.assertEqual("gzip", result["format"])
        self.assertEqual(len(data), result["bytes_written"])
        with open(path, "rb") as stream:
            self.assertEqual(data, stream.read(len(data)))

    def stream_once(self, path, content, **kwargs):
        """write_stream over a source that can be read only once, as a
        download is: the format must come from these very bytes."""
        reads = []

        class OneShot(io.BytesIO):
            def readinto(self, buffer):
                reads.append(self.tell())
                return super().readinto(buffer)
        hasher = http_source.Hasher(
            "sha256", __import__("hashlib").sha256(content).hexdigest())
        result = writer.write_stream(OneShot(content), path, hasher,
                                     buffer_size=8192, **kwargs)
        self.assertEqual(sorted(reads), reads, "the source was re-read")
        return result

    def test_format_comes_from_the_stream(self):
        path = self.make_target(MIB)
        data = os.urandom(50000)
        for fmt, content in (("xz", lzma.compress(data)),
                             ("gzip", gzip.compress(data)),
                             ("raw", data)):
            with self.subTest(fmt):
                result = self.stream_once(path, content)
                self.assertEqual(fmt, result["format"])
                self.assertEqual(len(content), result["bytes_read"])
                with open(path, "rb") as stream:
                    self.assertEqual(data, stream.read(len(data)))

    @mock.patch.object(writer, "wipe_signatures")
    def test_qcow2_needs_staging_and_writes_nothing(self, wipe):
        path = self.make_target(MIB)
        with open(path, "wb") as stream:
            stream.write(b"previous" * 1000)
        image = samples.qcow2_header() + os.urandom(0x40000)
        # Streaming turned off: staged, before anything is written.
        with self.assertRaises(writer.NeedsStaging) as caught:
            self.stream_once(path, image, qcow2_buffer=None)
        self.assertEqual("qcow2", caught.exception.format)
        # Streamed: refused before the first write when the L1 table lies
        # past the end, or the virtual size (10 MiB) does not fit.
        with self.assertRaises(qcow2_stream.MalformedImage):
            self.stream_once(path, image[:70000], total=70000)
        with self.assertRaises(writer.ImageTooLarge):
            self.stream_once(path, image)
        with self.assertRaises(formats.UnsupportedFormat):
            self.stream_once(path, b"KDMV" + os.urandom(20000))
        wipe.assert_not_called()
        with open(path, "rb") as stream:
            self.assertEqual(b"previous" * 1000, stream.read(8000))

    def test_qcow2_streams_to_guest_offsets(self):
        guest = [(samples.DATA, os.urandom(512)), (samples.ZERO, None),
                 (samples.COMPRESSED, b"q" * 512),
                 (samples.UNALLOCATED, None)] * 50
        objects = 1 + 4 + 100
        order = [0] + list(range(objects - 1, 0, -1))
        image, content = samples.build_qcow2(9, guest, order)
        path = self.make_target(MIB)
        with open(path, "wb") as stream:
            stream.write(b"\xee" * MIB)
        result = self.stream_once(path, image, total=len(image))
        self.assertEqual({"format": "qcow2", "bytes_read": len(image),
                          "bytes_written": len(content)}, result)
        with open(path, "rb") as stream:
            self.assertEqual(content, stream.read(len(content)))
            self.assertEqual(b"\xee" * (MIB - len(content)), stream.read())

    @mock.patch.object(writer, "wipe_signatures")
    def test_qcow2_beyond_the_buffer_is_undone_then_staged(self, wipe):
        guest = [(samples.DATA, os.urandom(512)) for _ in range(128)]
        # L1, the first L2 table and its data, then the second table's
        # data before the table itself.
        order = [0, 1] + list(range(3, 131)) + [2]
        image, content = samples.build_qcow2(9, guest, order)
        path = self.make_target(MIB)
        with open(path, "wb") as stream:
            stream.write(b"\xee" * MIB)
        with self.assertRaises(writer.NeedsStaging) as caught:
            self.stream_once(path, image, qcow2_buffer=16 * 1024)
        self.assertIn("was zeroed", " ".join(caught.exception.__notes__))
        wipe.assert_called_once_with(path)
        with open(path, "rb") as stream:
            self.assertEqual(bytes(64 * 512), stream.read(64 * 512))
        # With room for the second table's data it streams.
        self.stream_once(path, image, qcow2_buffer=64 * 1024)
        with open(path, "rb") as stream:
            self.assertEqual(content, stream.read(len(content)))

    @mock.patch.object(writer, "wipe_signatures")
    def test_a_failed_qcow2_attempt_lets_its_memory_go(self, wipe):
        # The staged fall-back needs the failed attempt's memory back. The
        # collector is off: only the sink's abort (the bytes the parser
        # kept) and release() (the pipeline's buffers, held by the
        # exception's frames) can give it back.
        guest = [(samples.DATA, os.urandom(512)) for _ in range(128)]
        order = [0, 1] + list(range(3, 131)) + [2]
        image, _ = samples.build_qcow2(9, guest, order)
        path = self.make_target(MIB)

        def alive(kind):
            return [thing for thing in gc.get_objects()
                    if isinstance(thing, kind)]
        gc.collect()
        self.assertEqual([], alive(download._Slot))
        gc.disable()
        self.addCleanup(gc.enable)
        try:
            self.stream_once(path, image, qcow2_buffer=16 * 1024)
        except writer.NeedsStaging as exc:
            staging = exc
        parsers = alive(qcow2_stream.Qcow2Stream)
        self.assertTrue(parsers)
        for parser in parsers:
            self.assertEqual(([], 0, []), (parser._kept, parser._kept_bytes,
                                           parser._heap))
        del parsers, parser
        self.assertTrue(alive(download._Slot))
        writer.release(staging)
        self.assertEqual([], alive(download._Slot))

    def test_aligned_buffers_are_written_without_a_copy(self):
        import mmap
        path = self.make_target(MIB)
        aligned = mmap.mmap(-1, 256 * 1024)
        aligned.write(os.urandom(256 * 1024))
        unaligned = bytearray(os.urandom(1 + 128 * 1024))
        output = writer.DeviceWriter(path, buffer_size=65536)
        try:
            output.write(aligned)
            # Straight to the device: nothing waits in the buffer.
            self.assertEqual((0, 256 * 1024), (output._fill, output.offset))
            # A source O_DIRECT refuses (unaligned memory) is copied.
            output.write(memoryview(unaligned)[1:])
            self.assertEqual(output.close(), 384 * 1024)
        finally:
            output.abort()
        with open(path, "rb") as stream:
            self.assertEqual(bytes(aligned) + bytes(unaligned[1:]),
                             stream.read(384 * 1024))

    def test_write_at_and_zero_any_alignment(self):
        path = self.make_target(MIB)
        with open(path, "wb") as stream:
            stream.write(b"\xee" * MIB)
        expected = bytearray(b"\xee" * MIB)
        output = writer.DeviceWriter(path, buffer_size=65536)
        try:
            for offset, data in ((8192, os.urandom(100000)),
                                 (512, os.urandom(700)),
                                 (300000, os.urandom(4096)),
                                 (304096, os.urandom(10))):
                output.write_at(offset, data)
                expected[offset:offset + len(data)] = data
            for start, end in ((1000, 3000), (400000, 900001)):
                output.zero(start, end)
                expected[start:end] = bytes(end - start)
            output.finish()
            with self.assertRaises(writer.ImageTooLarge):
                output.zero(0, MIB + 1)
        finally:
            output.abort()
        with open(path, "rb") as stream:
            self.assertEqual(bytes(expected), stream.read())

    @mock.patch.object(writer, "wipe_signatures")
    def test_raw_larger_than_the_device_writes_nothing(self, wipe):
        path = self.make_target(64 * 1024)
        content = os.urandom(100000)
        with self.assertRaises(writer.ImageTooLarge):
            self.stream_once(path, content, total=len(content))
        wipe.assert_not_called()

    def test_head_split_over_small_writes(self):
        target = _Collect()
        target.device_size = MIB
        data = os.urandom(3000)
        compressed = gzip.compress(data)
        sink = writer._FormatSink(target, None, 4096)
        for offset in range(0, len(compressed), 100):
            sink.write(compressed[offset:offset + 100])
        sink.close()
        self.assertEqual("gzip", sink.format)
        self.assertEqual(data, bytes(target.data))
        # VDI's magic sits at byte 64: a head cut before it still counts.
        sink = writer._FormatSink(_Collect(), None, 4096)
        sink.write(bytes(60))
        with self.assertRaises(formats.UnsupportedFormat):
            sink.write(b"\0\0\0\0\x7f\x10\xda\xbe" + bytes(5000))


#: ``echo hello | xz --lzma2=dict=1GiB``: 64 bytes whose block header
#: declares a 1 GiB dictionary (liblzma would need 1025 MiB to decode it).
XZ_1GIB_DICTIONARY = bytes.fromhex(
    "fd377a585a000004e6d6b44602002101240000005e1fc7f901000568656c6c6f0a00"
    "0000a56097f194f6fde000011e06c12fa41d1fb6f37d010000000004595a")


class DecoderMemoryLimitTest(base.TestCase):

    def test_xz_with_a_1gib_dictionary_is_refused_before_decoding(self):
        target = _Collect()
        sink = writer._InflateSink(formats.XZ, target, 4096)
        with self.assertRaises(writer.DecompressionLimitExceeded) as caught:
            sink.write(XZ_1GIB_DICTIONARY)
        self.assertIn("256 MiB", str(caught.exception))
        self.assertIn("decompression_memory_limit", str(caught.exception))
        self.assertEqual(b"", bytes(target.data))
        # It is a CorruptImage: prepare_image reports it like one.
        self.assertIsInstance(caught.exception, writer.CorruptImage)

    def test_xz_within_the_limit_decodes(self):
        target = _Collect()
        sink = writer._InflateSink(formats.XZ, target, 4096,
                                   memory_limit=2048 * MIB)
        sink.write(XZ_1GIB_DICTIONARY)
        sink.close()
        self.assertEqual(b"hello\n", bytes(target.data))

    def test_write_stream_passes_the_limit(self):
        hasher = http_source.Hasher(
            "sha256", hashlib.sha256(XZ_1GIB_DICTIONARY).hexdigest())
        with tempfile.NamedTemporaryFile() as target:
            target.truncate(MIB)
            with mock.patch("os.open", side_effect=_no_direct(os.open)):
                with self.assertRaises(writer.DecompressionLimitExceeded):
                    writer.write_stream(io.BytesIO(XZ_1GIB_DICTIONARY),
                                        target.name, hasher,
                                        buffer_size=4096,
                                        memory_limit=64 * MIB)

    def test_zstd_gets_the_limit(self):
        with mock.patch("teeth_agent.processes.open_pipe") as open_pipe, \
                mock.patch("fcntl.fcntl"):
            open_pipe.return_value.stdout.read1.return_value = b""
            sink = writer._ZstdSink(_Collect(), 4096, memory_limit=128 * MIB)
            sink._thread.join()
        self.assertIn("--memory=%d" % (128 * MIB), open_pipe.call_args[0])

    def test_zstd_memory_error_is_a_limit_error(self):
        sink = writer._ZstdSink.__new__(writer._ZstdSink)
        sink._memory_limit = 256 * MIB
        error = sink._error(mock.Mock(
            stderr="Window size larger than maximum : 1073741824 > "
                   "268435456"))
        self.assertIsInstance(error, writer.DecompressionLimitExceeded)
        # The argv (which names --memory) does not make every failure one.
        error = sink._error(mock.Mock(stderr="Unknown frame descriptor",
                                      __str__=lambda self: "--memory=1"))
        self.assertNotIsInstance(error, writer.DecompressionLimitExceeded)


def _no_direct(real_open):
    """``os.open`` without O_DIRECT, for file systems without it."""
    def fake(path, flags, *args):
        return real_open(path, flags & ~os.O_DIRECT, *args)
    return fake


class PinnedWriterTest(base.TestCase):
    """On regular files (``O_DIRECT`` dropped where the file system has
    none); the device cases are in tests/functional/test_standbye.py."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(dir="/var/tmp")
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "device")
        with open(self.path, "wb") as stream:
            stream.write(b"\xaa" * (4 * MIB))
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_DIRECT))
        except OSError:
            patcher = mock.patch("os.open", side_effect=_no_direct(os.open))
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_a_different_device_is_refused_before_writing(self):
        recheck = mock.Mock()
        with self.assertRaises(writer.DeviceChanged) as caught:
            writer.DeviceWriter(self.path, devnum="7:12", recheck=recheck)
        self.assertIn("not the 7:12 that was checked", str(caught.exception))
        self.assertIsInstance(caught.exception, safety.DeviceNotEligible)
        recheck.assert_not_called()

    def test_recheck_runs_with_the_descriptor_held_and_can_refuse(self):
        opened = []
        real_open = os.open

        def tracking(path, flags, *args):
            fd = real_open(path, flags & ~os.O_DIRECT, *args)
            opened.append((path, flags))
            return fd

        def recheck():
            self.assertEqual(1, len(opened))
            raise safety.DeviceNotEligible(self.path, "mounted at /mnt")
        with mock.patch("os.open", side_effect=tracking):
            with self.assertRaises(safety.DeviceNotEligible):
                writer.DeviceWriter(self.path, recheck=recheck)
        self.assertTrue(opened[0][1] & os.O_EXCL)

    @mock.patch.object(writer, "wipe_signatures")
    def test_checksum_mismatch_zeroes_every_byte_written(self, wipe):
        data = os.urandom(3 * MIB + 1234)
        hasher = http_source.Hasher("sha256", "0" * 64)
        with self.assertRaises(errors.ChecksumMismatch) as caught:
            writer.write_stream(io.BytesIO(data), self.path, hasher,
                                buffer_size=65536)
        message = writer.describe_failure(caught.exception)
        self.assertIn("checksum mismatch", message)
        self.assertIn("every byte written to %s (bytes 0-%d) was zeroed"
                      % (self.path, 3 * MIB + 4096), message)
        with open(self.path, "rb") as stream:
            content = stream.read()
        self.assertEqual(bytes(3 * MIB + 4096), content[:3 * MIB + 4096])
        # What lies beyond was never written and is left alone.
        self.assertEqual(b"\xaa" * (MIB - 4096), content[3 * MIB + 4096:])
        wipe.assert_called_once_with(self.path)

    @mock.patch.object(writer, "wipe_signatures")
    def test_a_failed_download_zeroes_too(self, wipe):
        data = os.urandom(MIB)

        class Failing(io.BytesIO):
            def readinto(self, buffer):
                if self.tell() >= len(data) // 2:
                    raise errors.RetryableDownloadError("connection lost")
                return super().readinto(buffer)
        with self.assertRaises(errors.DownloadError) as caught:
            writer.write_stream(Failing(data), self.path,
                                http_source.Hasher("sha256", "0" * 64),
                                buffer_size=65536)
        self.assertIn("was zeroed", writer.describe_failure(caught.exception))
        with open(self.path, "rb") as stream:
            content = stream.read()
        # Zeros where anything was written, the old bytes after that.
        written = content.rstrip(b"\xaa")
        self.assertGreater(len(written), 0)
        self.assertEqual(bytes(len(written)), written)

    def test_a_verified_write_is_kept(self):
        data = os.urandom(MIB + 5)
        hasher = http_source.Hasher("sha256", hashlib.sha256(data).hexdigest())
        result = writer.write_stream(io.BytesIO(data), self.path, hasher,
                                     buffer_size=65536)
        self.assertEqual(len(data), result["bytes_written"])
        with open(self.path, "rb") as stream:
            self.assertEqual(data, stream.read(len(data)))

    def test_zero_range_falls_back_to_writes_on_a_file(self):
        fd = os.open(self.path, os.O_WRONLY)
        try:
            self.assertEqual((0, 8192), blockdev.zero_range(
                fd, 100, 5000, block_size=4096))
            self.assertEqual((8192, 8704), blockdev.zero_range(
                fd, 8200, 8300))
        finally:
            os.close(fd)
        with open(self.path, "rb") as stream:
            self.assertEqual(bytes(8704) + b"\xaa", stream.read(8705))
