"""teeth_agent.images.qcow2_stream: qcow2 parsed as it streams (issue 17).

Images come from :func:`tests.unit.images.samples.build_qcow2` (checked
against ``qemu-img`` by the functional tests' kin: it knows the guest disk
each image holds) with tables and data in any order, fed in chunks of any
size; hypothesis also mutates them. The functional tests
(``tests/functional/test_qcow2_stream.py``) use images qemu-img makes.
"""

import os
import struct
import zlib

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import zstandard

from teeth_agent.images import qcow2
from teeth_agent.images import qcow2_stream
from tests import base
from tests.unit.images import samples

_FAST = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


class _Disk:
    """An in-memory target that checks every write is inside the disk."""

    def __init__(self, size, fill=b"\xa5"):
        self.data = bytearray(fill * size)
        self.writes = 0

    def write_at(self, offset, data):
        assert 0 <= offset and offset + len(data) <= len(self.data), \
            (offset, len(data), len(self.data))
        self.data[offset:offset + len(data)] = data
        self.writes += 1

    def zero(self, start, end):
        assert 0 <= start < end <= len(self.data), (start, end)
        self.data[start:end] = bytes(end - start)


def _feed(image, size, chunk=None, limit=64 * 1024 * 1024, total=True):
    disk = _Disk(size)
    parser = qcow2_stream.Qcow2Stream(
        disk, limit, total=len(image) if total else None)
    chunk = chunk or len(image)
    for offset in range(0, len(image), chunk):
        parser.feed(image[offset:offset + chunk])
    parser.close()
    return disk


_KINDS = st.sampled_from([samples.DATA, samples.ZERO, samples.UNALLOCATED,
                          samples.COMPRESSED])


@st.composite
def _images(draw, version=None):
    bits = draw(st.sampled_from([9, 10, 12]))
    version = version or draw(st.sampled_from([2, 3]))
    cluster = 1 << bits
    kinds = draw(st.lists(_KINDS, min_size=1, max_size=150))
    guest = []
    for index, kind in enumerate(kinds):
        if kind == samples.ZERO and version == 2:
            kind = samples.UNALLOCATED
        if kind == samples.DATA:
            guest.append((kind, os.urandom(cluster)))
        elif kind == samples.COMPRESSED:
            guest.append((kind, bytes([index % 251]) * cluster))
        else:
            guest.append((kind, None))
    tables = -(-len(guest) // (cluster // 8))
    objects = 1 + tables + sum(kind in (samples.DATA, samples.COMPRESSED)
                               for kind, _ in guest)
    order = draw(st.one_of(st.none(), st.permutations(range(objects))))
    return samples.build_qcow2(bits, guest, order, version)


class StreamTest(base.TestCase):

    @_FAST
    @given(_images(), st.integers(min_value=1, max_value=70000))
    def test_any_layout_in_any_chunks_gives_the_guest_disk(self, built,
                                                           chunk):
        image, content = built
        disk = _feed(image, len(content), chunk)
        self.assertEqual(content, bytes(disk.data))

    @_FAST
    @given(_images(), st.integers(min_value=0, max_value=200000))
    def test_a_small_buffer_falls_back_or_is_exact(self, built, limit):
        image, content = built
        try:
            disk = _feed(image, len(content), 4096, limit=limit)
        except qcow2_stream.NotStreamable as exc:
            self.assertIn("qcow2_stream_buffer", str(exc))
        else:
            self.assertEqual(content, bytes(disk.data))

    def test_discard_drops_what_was_kept_and_ends_the_stream(self):
        guest = [(samples.DATA, os.urandom(512)) for _ in range(128)]
        # The second table's data comes before the table: it is kept.
        order = [0, 1] + list(range(3, 131)) + [2]
        image, _ = samples.build_qcow2(9, guest, order)
        parser = qcow2_stream.Qcow2Stream(_Disk(128 * 512), 1 << 20,
                                          total=len(image))
        parser.feed(image[:64 * 1024])
        self.assertGreater(parser._kept_bytes, 0)
        parser.discard()
        self.assertEqual(([], 0), (parser._kept, parser._kept_bytes))
        with self.assertRaises(ValueError):
            parser.feed(image[64 * 1024:])
        with self.assertRaises(ValueError):
            parser.close()

    def test_kept_bytes_are_gathered_in_bounded_pieces(self):
        # One bytearray grown by every segment is reallocated all along;
        # the copies it leaves in the heap cost half again what is kept.
        guest = [(samples.DATA, os.urandom(512)) for _ in range(4096)]
        objects = 1 + 4096 // 64 + 4096
        # The L1 table last: every table and cluster before it is kept.
        image, content = samples.build_qcow2(
            9, guest, list(range(1, objects)) + [0])
        disk = _Disk(len(content))
        parser = qcow2_stream.Qcow2Stream(disk, 8 << 20, total=len(image))
        end = struct.unpack(">Q", image[40:48])[0]  # the L1 table's offset
        for offset in range(0, end, 64 * 1024):
            parser.feed(image[offset:min(offset + 64 * 1024, end)])
        sizes = [len(piece) for piece in parser._kept]
        self.assertGreater(sum(sizes), 2 * qcow2_stream.KEPT_PIECE)
        self.assertLessEqual(max(sizes), qcow2_stream.KEPT_PIECE)
        self.assertLess(len(sizes), 4 + sum(sizes) // qcow2_stream.KEPT_PIECE)
        parser.feed(image[end:])
        parser.close()
        self.assertEqual(content, bytes(disk.data))

    def test_tables_first_needs_no_buffer(self):
        guest = [(samples.DATA, os.urandom(512)) for _ in range(300)]
        image, content = samples.build_qcow2(9, guest)
        # Only what lies between the tables (the rest of the L1 table's
        # cluster here) is ever kept.
        disk = _feed(image, len(content), 1000, limit=16 * 1024)
        self.assertEqual(content, bytes(disk.data))

    def test_unknown_size_and_a_short_last_cluster(self):
        guest = [(samples.DATA, os.urandom(4096)) for _ in range(5)]
        image, content = samples.build_qcow2(12, guest)
        image = bytearray(image)
        # A virtual size that ends inside the last cluster.
        struct.pack_into(">Q", image, 24, len(content) - 1000)
        disk = _feed(bytes(image), len(content) - 1000, 777, total=False)
        self.assertEqual(content[:-1000], bytes(disk.data))

    def test_overlapping_compressed_clusters_count_against_the_buffer(self):
        # Every guest cluster names the same, largest compressed range: what
        # each one gathers counts, so memory stays within the bound.
        guest = [(samples.COMPRESSED, b"c" * 4096)] * 64
        image, content = samples.build_qcow2(12, guest)
        image = bytearray(image)
        l1 = struct.unpack_from(">Q", image, 40)[0]
        l2 = struct.unpack_from(">Q", image, l1)[0] & \
            qcow2_stream._OFFSET_MASK
        first = struct.unpack_from(">Q", image, l2)[0] | 15 << (62 - 4)
        for index in range(64):
            struct.pack_into(">Q", image, l2 + 8 * index, first)
        with self.assertRaises(qcow2_stream.NotStreamable):
            _feed(bytes(image), len(content), 4096, limit=128 * 1024)

    def test_zstd_clusters(self):
        cluster = 4096
        guest = [(samples.DATA, os.urandom(cluster))] * 3
        image, content = samples.build_qcow2(12, guest)
        image = bytearray(image)
        # Turn guest cluster 1 into a zstd-compressed one in its slot.
        l2 = struct.unpack_from(">Q", image, struct.unpack_from(
            ">Q", image, 40)[0])[0] & qcow2_stream._OFFSET_MASK
        slot = struct.unpack_from(">Q", image, l2 + 8)[0] & \
            qcow2_stream._OFFSET_MASK
        blob = zstandard.ZstdCompressor().compress(b"z" * cluster)
        image[slot:slot + len(blob)] = blob
        sectors = -(-len(blob) // 512) - 1
        struct.pack_into(">Q", image, l2 + 8,
                         1 << 62 | sectors << (62 - 4) | slot)
        struct.pack_into(">Q", image, 72, 1 << 3)
        struct.pack_into(">I", image, 100, 112)
        image[104] = 1
        disk = _feed(bytes(image), len(content), 1000)
        self.assertEqual(content[:cluster] + b"z" * cluster
                         + content[2 * cluster:], bytes(disk.data))


class MalformedTest(base.TestCase):
    """Each structural error is refused, and the header's before any
    write reaches the target."""

    def image(self, kinds=(samples.DATA,) * 4, bits=12, version=3):
        cluster = 1 << bits
        guest = [(kind, os.urandom(cluster) if kind == samples.DATA
                  else b"c" * cluster if kind == samples.COMPRESSED
                  else None) for kind in kinds]
        image, content = samples.build_qcow2(bits, guest, version=version)
        return bytearray(image), content

    def refused(self, image, size, error=qcow2_stream.MalformedImage,
                total=True):
        disk = _Disk(size)
        with self.assertRaises(error) as caught:
            parser = qcow2_stream.Qcow2Stream(
                disk, 1 << 30, total=len(image) if total else None)
            parser.feed(bytes(image))
            parser.close()
        return disk, caught.exception

    def l2_offset(self, image):
        l1 = struct.unpack_from(">Q", image, 40)[0]
        return struct.unpack_from(">Q", image, l1)[0] & \
            qcow2_stream._OFFSET_MASK

    def test_header_errors_write_nothing(self):
        image, content = self.image()
        cases = {
            "cluster bits": (20, ">I", 30),
            "L1 too small": (36, ">I", 0),
            "L1 unaligned": (40, ">Q", 4096 + 8),
            "L1 in the header": (40, ">Q", 0),
            "L1 too large": (36, ">I", (32 << 20) // 8 + 1),
            "L1 past the end": (40, ">Q", 1 << 40),
            "refcount order": (96, ">I", 7),
        }
        for name, (offset, fmt, value) in cases.items():
            with self.subTest(name):
                broken = bytearray(image)
                struct.pack_into(fmt, broken, offset, value)
                disk, _ = self.refused(broken, len(content))
                self.assertEqual(0, disk.writes)
                self.assertEqual(b"\xa5" * len(content), bytes(disk.data))
        for name, (offset, fmt, value) in {
                "backing file": (8, ">Q", 512),
                "encrypted": (32, ">I", 1),
                "unknown feature": (72, ">Q", 1 << 40),
                "external data file": (72, ">Q", 1 << 2)}.items():
            with self.subTest(name):
                broken = bytearray(image)
                struct.pack_into(fmt, broken, offset, value)
                self.refused(broken, len(content), qcow2.UnsafeImage)

    def test_compression_and_extended_l2_header_rules(self):
        image, content = self.image()
        struct.pack_into(">I", image, 100, 112)
        for feature, kind in ((0, 1), (1 << 3, 0), (1 << 3, 2)):
            broken = bytearray(image)
            struct.pack_into(">Q", broken, 72, feature)
            broken[104] = kind
            with self.subTest(feature=feature, kind=kind):
                self.refused(broken, len(content))
        small, content = self.image(bits=12)
        struct.pack_into(">Q", small, 72, 1 << 4)
        self.refused(small, len(content))

    def test_entries(self):
        image, content = self.image()
        l2 = self.l2_offset(image)
        data = struct.unpack_from(">Q", image, l2)[0]
        for name, entry in {"unaligned": data + 512,
                            "past the end": 1 << 50,
                            "compressed in the header": 1 << 62 | 100,
                            "compressed garbage": 1 << 62 | 7 << 58 |
                            (data & qcow2_stream._OFFSET_MASK)}.items():
            with self.subTest(name):
                broken = bytearray(image)
                struct.pack_into(">Q", broken, l2, entry)
                self.refused(broken, len(content))
        v2, content = self.image(version=2)
        struct.pack_into(">Q", v2, self.l2_offset(v2), 1)
        self.refused(v2, len(content))

    def test_a_cluster_that_inflates_to_less_than_a_cluster(self):
        image, content = self.image((samples.COMPRESSED,) * 2)
        l2 = self.l2_offset(image)
        entry = struct.unpack_from(">Q", image, l2)[0]
        slot = entry & ((1 << (62 - 4)) - 1)
        packer = zlib.compressobj(9, zlib.DEFLATED, -12)
        blob = packer.compress(b"short") + packer.flush()
        image[slot:slot + 512] = blob + bytes(512 - len(blob))
        _, exc = self.refused(image, len(content))
        self.assertIn("not a cluster", str(exc))

    def test_past_the_end_found_at_close_and_truncation(self):
        image, content = self.image()
        l2 = self.l2_offset(image)
        struct.pack_into(">Q", image, l2, 1 << 50)
        _, exc = self.refused(image, len(content), total=False)
        self.assertIn("past its end", str(exc))
        self.refused(image[:50], len(content), total=False)

    def test_extended_l2_bitmaps(self):
        cluster = 1 << 14
        image, content = self.image(bits=14)
        struct.pack_into(">Q", image, 72, 1 << 4)
        l2 = self.l2_offset(image)
        data = struct.unpack_from(">Q", image, l2)[0]
        half = bytearray(image)
        # Subclusters 0 and 2 allocated, 1 reads as zeros, the rest
        # unallocated: the guest sees the host bytes only where allocated.
        struct.pack_into(">QQ", half, l2, data, 1 << 33 | 0b101)
        struct.pack_into(">QQ", half, l2 + 16, 0, 0)
        struct.pack_into(">QQ", half, l2 + 32, 0, 0xFFFFFFFF << 32)
        host = data & qcow2_stream._OFFSET_MASK
        disk = _feed(bytes(half), 4 * cluster, 3000)
        sub = cluster // 32
        expected = bytearray(cluster)
        expected[:sub] = half[host:host + sub]
        expected[2 * sub:3 * sub] = half[host + 2 * sub:host + 3 * sub]
        self.assertEqual(bytes(expected), bytes(disk.data[:cluster]))
        self.assertEqual(bytes(3 * cluster), bytes(disk.data[cluster:]))
        for bitmap, entry in ((1 | 1 << 32, data), (1, 0), (0, data | 1)):
            broken = bytearray(image)
            struct.pack_into(">QQ", broken, l2, entry, bitmap)
            with self.subTest(bitmap=bitmap, entry=entry):
                self.refused(broken, 4 * cluster)


class MutationTest(base.TestCase):
    """Whatever bytes an image holds, the parser raises one of its own
    errors or writes only inside the virtual size."""

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_images(version=3), st.lists(
        st.tuples(st.integers(min_value=0, max_value=1 << 20),
                  st.binary(min_size=1, max_size=8)), min_size=1,
        max_size=6))
    def test_mutated_images(self, built, patches):
        image, content = built
        image = bytearray(image)
        for offset, data in patches:
            offset %= len(image)
            image[offset:offset + len(data)] = data
        disk = _Disk(len(content))

        def check(header):
            # What the agent's writer checks: the device holds the image.
            if header.virtual_size > len(content):
                raise _TooLarge()
        try:
            parser = qcow2_stream.Qcow2Stream(disk, 1 << 20, check=check)
            for offset in range(0, len(image), 5000):
                parser.feed(image[offset:offset + 5000])
            parser.close()
        except (qcow2.UnsafeImage, qcow2_stream.NotStreamable, _TooLarge):
            pass


class _TooLarge(Exception):
    pass
