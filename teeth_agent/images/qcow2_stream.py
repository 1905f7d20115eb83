"""qcow2 images parsed as they stream, each cluster placed as it arrives.

:class:`Qcow2Stream` takes the image's bytes in file order (``feed``) and
tells a ``target`` where the guest's bytes go: ``target.write_at(offset,
data)`` for data (at guest offsets, in any order) and ``target.zero(start,
end)`` for the ranges the image leaves unallocated or marks as zeroes
(collected and given at :meth:`Qcow2Stream.close`, merged where adjacent).
It does no I/O of its own; the device writer is the target in the agent,
a ``bytearray`` in the tests.

The header is checked by :func:`teeth_agent.images.qcow2.check_header`
(no backing file, no external data file, no encryption, no unknown
incompatible feature) and by :func:`parse_header` (cluster size, L1 table
size and place, compression type, extended L2) before anything reaches
the target; ``check(header)``, given by the caller, refuses a virtual size
the device cannot hold. Then the active L1 table, the L2 tables it names
and the data clusters they name are each awaited at their file offset.
Refcounts and snapshots are ignored: only what the active L1 table maps
is the guest's disk. Standard, zero, compressed (deflate or zstd) and
extended-L2 (subcluster) entries are understood; a reserved or misaligned
offset, a table in the header cluster, or a compressed cluster that does
not inflate to a whole cluster raises :class:`MalformedImage`.

Bytes can arrive before the table that places them. They are kept until
every table is known, up to ``buffer_limit`` bytes (each awaited range also
counts :data:`WANT_COST` bytes); a layout that needs more, or that names
bytes that went by as something else, raises :class:`NotStreamable` and
the caller falls back to staging the file. The parser itself never reads
outside the stream: a crafted image can at worst describe a wrong disk
within its virtual size, which the caller bounds by the device's size.
"""

import bisect
import collections
import heapq
import io
import struct
import zlib

import zstandard

from teeth_agent.images import qcow2
from teeth_agent import units

#: Bytes each awaited range (a data run, a table, a compressed cluster)
#: or kept piece counts against the buffer bound: what its bookkeeping
#: costs in memory, at most (measured: 284 bytes for a run, 759 for a
#: compressed cluster).
WANT_COST = 768
#: Contiguous kept bytes are gathered in pieces of at most this size (or
#: one segment as it came, when larger): one ``bytearray`` grown by every
#: segment would be reallocated, and copied, all along, and the copies
#: left behind cost half as much again as what was kept.
KEPT_PIECE = units.MIB
#: The largest L1 table accepted, in bytes (qemu's own limit).
MAX_L1_BYTES = 32 * units.MIB
#: Compressed clusters whose bytes stay at hand for a later cluster that
#: shares their last sector.
RECENT_COMPRESSED = 16
#: Zero ranges collected before they are given to the target early.
MAX_PENDING_ZEROS = 4096
#: The largest zstd window a compressed cluster may declare (a cluster is
#: at most 2 MiB; this bounds the decoder's memory).
MAX_ZSTD_WINDOW = 8 * units.MIB

_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
_V3 = struct.Struct(">QQQII")
_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62
_ZERO_FLAG = 1
_EXTENDED_L2 = 1 << 4
_COMPRESSION_FEATURE = 1 << 3
_ZLIB = 0
_ZSTD = 1
_ALL_SUBCLUSTERS = 0xFFFFFFFF


class MalformedImage(qcow2.UnsafeImage):
    """The qcow2 image's structure is invalid (the image's fault)."""


class NotStreamable(Exception):
    """The image is valid but its layout cannot be written as it streams
    within the buffer allowed; it must be staged first."""


class Header:
    """What :func:`parse_header` found (read-only by convention)."""

    __slots__ = ("version", "virtual_size", "cluster_bits", "cluster_size",
                 "l1_offset", "l1_size", "extended_l2", "compression")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)

    @property
    def l2_span(self):
        """Guest bytes one L2 table maps."""
        entry = 16 if self.extended_l2 else 8
        return self.cluster_size * (self.cluster_size // entry)


def header_bytes_needed(head):
    """How many leading bytes :func:`parse_header` needs (the first
    cluster), or None while fewer than the fixed header arrived."""
    if len(head) < _HEADER.size:
        return None
    cluster_bits = struct.unpack_from(">I", head, 20)[0]
    if not 9 <= cluster_bits <= 21:
        raise MalformedImage("invalid cluster size 2^%d" % cluster_bits)
    return 1 << cluster_bits


def parse_header(data, total=None):
    """Check and parse the qcow2 header in ``data`` (the first cluster, or
    the whole file when shorter); ``total`` is the file's size when
    known. Raises :class:`teeth_agent.images.qcow2.UnsafeImage` or
    :class:`MalformedImage`."""
    qcow2.check_header(data)
    (_, version, _, _, cluster_bits, virtual_size, _, l1_size, l1_offset,
     _, _, _, _) = _HEADER.unpack_from(data)
    cluster_size = 1 << cluster_bits
    incompatible = 0
    compression = _ZLIB
    if version == 3:
        incompatible, _, _, refcount_order, header_length = \
            _V3.unpack_from(data, _HEADER.size)
        if refcount_order > 6:
            raise MalformedImage("invalid refcount order %d"
                                 % refcount_order)
        if header_length > 104:
            if len(data) < 105:
                raise MalformedImage("truncated qcow2 header")
            compression = data[104]
        if compression not in (_ZLIB, _ZSTD):
            raise MalformedImage("unknown compression type %d"
                                 % compression)
        if (compression != _ZLIB) != bool(incompatible
                                          & _COMPRESSION_FEATURE):
            raise MalformedImage("the compression type and the compression "
                                 "feature bit disagree")
    extended = bool(incompatible & _EXTENDED_L2)
    if extended and cluster_bits < 14:
        raise MalformedImage("extended L2 entries need clusters of at "
                             "least 16 KiB")
    header = Header(version=version, virtual_size=virtual_size,
                    cluster_bits=cluster_bits, cluster_size=cluster_size,
                    l1_offset=l1_offset, l1_size=l1_size,
                    extended_l2=extended, compression=compression)
    if virtual_size >= 1 << 63:
        raise MalformedImage("invalid virtual size %d" % virtual_size)
    needed = -(-virtual_size // header.l2_span)
    if l1_size < needed:
        raise MalformedImage("the L1 table (%d entries) cannot map the "
                             "virtual size (%d needed)" % (l1_size, needed))
    if l1_size * 8 > MAX_L1_BYTES:
        raise MalformedImage("the L1 table (%d entries) is larger than %d "
                             "bytes" % (l1_size, MAX_L1_BYTES))
    if l1_size and (l1_offset % cluster_size or l1_offset < cluster_size):
        raise MalformedImage("invalid L1 table offset %#x" % l1_offset)
    if l1_size and total is not None and l1_offset + 8 * l1_size > total:
        raise MalformedImage("the L1 table lies past the end of the image")
    return header


class _Want:
    """File bytes ``[start, end)`` awaited; ``receive`` gets them in
    order, ``finish`` runs once all arrived."""

    __slots__ = ("start", "end", "filled")

    def __init__(self, start, end):
        self.start = start
        self.end = end
        self.filled = start

    def receive(self, view):
        self.filled += len(view)


class _Run(_Want):
    """Data clusters contiguous in the file and on the guest's disk."""

    __slots__ = ("guest", "target")

    def __init__(self, start, end, guest, target):
        super().__init__(start, end)
        self.guest = guest
        self.target = target

    def receive(self, view):
        self.target.write_at(self.guest + self.filled - self.start, view)
        self.filled += len(view)

    def finish(self, stream):
        pass


class _Collect(_Want):
    """Bytes gathered whole before they mean anything."""

    __slots__ = ("data", "done")

    def __init__(self, start, end, done):
        super().__init__(start, end)
        self.data = bytearray()
        self.done = done

    def receive(self, view):
        self.data += view
        self.filled += len(view)

    def finish(self, stream):
        stream._collecting -= self.end - self.start
        self.done(bytes(self.data))


class Qcow2Stream:
    """The parser; see the module documentation.

    ``target`` has ``write_at(offset, data)`` and ``zero(start, end)``;
    ``buffer_limit`` bounds what is kept for later; ``total`` is the
    file's size when known; ``check(header)`` may refuse the header (it
    runs before anything reaches the target). ``data`` given to
    ``write_at`` is only valid during the call.
    """

    def __init__(self, target, buffer_limit, total=None, check=None):
        self.target = target
        self.header = None
        self._limit = buffer_limit
        self._total = total
        self._check = check
        self._head = bytearray()
        self._pos = 0
        self._heap = []
        self._seq = 0
        self._active = []
        self._kept_starts = []
        self._kept = []
        self._kept_bytes = 0
        self._collecting = 0
        self._tables_pending = 0
        self._zeros = []
        self._closed = False
        self._discarded = False
        # The last compressed clusters' bytes: the sector a compressed
        # cluster ends in may hold the start of one whose table comes
        # later.
        self._recent = collections.deque(maxlen=RECENT_COMPRESSED)

    # -- feeding --------------------------------------------------------------

    def feed(self, data):
        """Take the next bytes of the file (any length)."""
        self._refuse_discarded()
        view = memoryview(data).cast("B")
        if self.header is None:
            self._head += view
            needed = header_bytes_needed(self._head)
            if needed is None or len(self._head) < needed:
                return
            self._start(needed)
            head, self._head = self._head, None
            with memoryview(head) as rest:
                self._process(rest[needed:])
            return
        self._process(view)

    def _start(self, size):
        self.header = header = parse_header(bytes(self._head[:size]),
                                            self._total)
        if self._check is not None:
            self._check(header)
        self._pos = size
        self._cluster = header.cluster_size
        self._subcluster = header.cluster_size // 32
        # Only the entries that map the virtual size matter.
        entries = -(-header.virtual_size // header.l2_span)
        if entries:
            self._tables_pending = 1
            self._want(_Collect(header.l1_offset,
                                header.l1_offset + 8 * entries,
                                self._l1_arrived))
        else:
            self._add_zero(0, header.virtual_size)

    def _process(self, view):
        base = self._pos
        end = base + len(view)
        pos = base
        while pos < end:
            heap, active = self._heap, self._active
            while heap and heap[0][0] <= pos:
                active.append(heapq.heappop(heap)[2])
            stop = end
            if heap and heap[0][0] < stop:
                stop = heap[0][0]
            for want in active:
                if want.end < stop:
                    stop = want.end
            segment = view[pos - base:stop - base]
            if active:
                finished = []
                for want in active:
                    want.receive(segment)
                    if want.filled == want.end:
                        finished.append(want)
                if finished:
                    self._active = [want for want in active
                                    if want.filled != want.end]
                    self._pos = stop
                    for want in finished:
                        want.finish(self)
            elif self._tables_pending:
                self._keep(pos, segment)
            pos = stop
            self._pos = stop

    def _keep(self, start, segment):
        kept = self._kept
        self._kept_bytes += len(segment)
        if kept and self._kept_starts[-1] + len(kept[-1]) == start and \
                len(kept[-1]) + len(segment) <= KEPT_PIECE:
            kept[-1] += segment
        else:
            # A separate piece also costs its bookkeeping.
            self._kept_bytes += WANT_COST
            self._kept_starts.append(start)
            kept.append(bytearray(segment))
        self._charge()

    def _charge(self):
        cost = self._kept_bytes + self._collecting + \
            WANT_COST * len(self._heap)
        if cost > self._limit:
            raise NotStreamable(
                "the qcow2 image places its clusters after more than %d "
                "bytes of the stream that must be kept ([standbye] "
                "qcow2_stream_buffer)" % self._limit)

    def _want(self, want):
        """Await ``want``: in the stream ahead, or from what was kept."""
        if self._total is not None and want.start >= self._total:
            raise MalformedImage("the image refers to byte %d, past its end "
                                 "(%d bytes)" % (want.start, self._total))
        if isinstance(want, _Collect):
            # What it gathers is held until it is whole.
            self._collecting += want.end - want.start
            self._charge()
        if want.start >= self._pos:
            self._seq += 1
            heapq.heappush(self._heap, (want.start, self._seq, want))
            if len(self._heap) % 64 == 0:
                self._charge()
            return
        self._from_kept(want)

    def _lookup(self, offset):
        """``(start, data)`` of kept bytes holding ``offset``, or None."""
        for start, data in self._recent:
            if start <= offset < start + len(data):
                return start, data
        index = bisect.bisect_right(self._kept_starts, offset) - 1
        if index >= 0:
            start, data = self._kept_starts[index], self._kept[index]
            if offset < start + len(data):
                return start, data
        return None

    def _from_kept(self, want):
        upto = min(want.end, self._pos)
        while want.filled < upto:
            found = self._lookup(want.filled)
            if found is None:
                raise NotStreamable(
                    "the qcow2 image places bytes %d-%d after they went by "
                    "as something else or unkept" % (want.start, want.end))
            start, data = found
            with memoryview(data) as view:
                want.receive(view[want.filled - start:
                                  min(upto - start, len(data))])
        if want.filled == want.end:
            want.finish(self)
        else:
            self._active.append(want)

    # -- tables ---------------------------------------------------------------

    def _l1_arrived(self, data):
        header = self.header
        span = header.l2_span
        l2_size = self._cluster
        for index, (entry,) in enumerate(struct.iter_unpack(">Q", data)):
            guest = index * span
            if guest >= header.virtual_size:
                break
            offset = entry & _OFFSET_MASK
            if offset % self._cluster:
                raise MalformedImage("L1 entry %d names an unaligned L2 "
                                     "table (%#x)" % (index, offset))
            if not offset:
                self._add_zero(guest, guest + span)
                continue
            if offset < self._cluster:
                raise MalformedImage("L1 entry %d names the header as an L2 "
                                     "table" % index)
            self._tables_pending += 1
            self._want(_Collect(offset, offset + l2_size,
                                self._l2_handler(guest)))
        self._table_done()

    def _table_done(self):
        self._tables_pending -= 1
        if not self._tables_pending:
            # Every table is known: nothing kept can be placed any more.
            self._kept_starts, self._kept, self._kept_bytes = [], [], 0

    def _l2_handler(self, guest):
        def arrived(data):
            if self.header.extended_l2:
                self._extended_l2(guest, data)
            else:
                self._standard_l2(guest, data)
            self._table_done()
        return arrived

    def _standard_l2(self, base, data):
        cluster = self._cluster
        size = self.header.virtual_size
        v3 = self.header.version == 3
        run = None
        guest = base
        for (entry,) in struct.iter_unpack(">Q", data):
            if guest >= size:
                break
            length = min(cluster, size - guest)
            if entry & _COMPRESSED:
                run = self._flush_run(run)
                self._compressed(entry, guest, length)
            else:
                offset = entry & _OFFSET_MASK
                if offset % cluster:
                    raise MalformedImage("an L2 entry names an unaligned "
                                         "cluster (%#x)" % offset)
                if (entry & _ZERO_FLAG and not v3):
                    raise MalformedImage("a version 2 image uses the zero "
                                         "flag")
                if not offset or entry & _ZERO_FLAG:
                    run = self._flush_run(run)
                    self._add_zero(guest, guest + length)
                else:
                    run = self._extend_run(run, offset, guest, length)
            guest += cluster
        self._flush_run(run)

    def _extended_l2(self, base, data):
        cluster = self._cluster
        size = self.header.virtual_size
        run = None
        guest = base
        for entry, bitmap in struct.iter_unpack(">QQ", data):
            if guest >= size:
                break
            length = min(cluster, size - guest)
            allocated = bitmap & _ALL_SUBCLUSTERS
            zeroes = bitmap >> 32
            if entry & _COMPRESSED:
                run = self._flush_run(run)
                self._compressed(entry, guest, length)
                guest += cluster
                continue
            offset = entry & _OFFSET_MASK
            if offset % cluster or entry & _ZERO_FLAG:
                raise MalformedImage("an extended L2 entry is invalid "
                                     "(%#x)" % entry)
            if allocated & zeroes or (allocated and not offset):
                raise MalformedImage("an extended L2 entry's subcluster "
                                     "bitmap is invalid (%#x)" % bitmap)
            if allocated == _ALL_SUBCLUSTERS:
                run = self._extend_run(run, offset, guest, length)
            else:
                run = self._flush_run(run)
                if allocated:
                    self._want(_Collect(offset, offset + length,
                                        self._subclusters(guest,
                                                          allocated)))
                else:
                    self._add_zero(guest, guest + length)
            guest += cluster
        self._flush_run(run)

    def _subclusters(self, guest, allocated):
        def arrived(data):
            data = bytearray(data)
            step = self._subcluster
            for index in range(32):
                if not allocated >> index & 1:
                    start = index * step
                    if start >= len(data):
                        break
                    end = min(start + step, len(data))
                    data[start:end] = bytes(end - start)
            self.target.write_at(guest, data)
        return arrived

    def _extend_run(self, run, offset, guest, length):
        if run is not None and run[1] == offset and run[3] == guest:
            run[1] += length
            run[3] += length
            return run
        self._flush_run(run)
        return [offset, offset + length, guest, guest + length]

    def _flush_run(self, run):
        if run is not None:
            self._want(_Run(run[0], run[1], run[2], self.target))
        return None

    def _compressed(self, entry, guest, length):
        bits = 62 - (self.header.cluster_bits - 8)
        offset = entry & ((1 << bits) - 1)
        sectors = (entry >> bits) & ((1 << (self.header.cluster_bits - 8))
                                     - 1)
        end = offset + (sectors + 1) * 512 - offset % 512
        if offset < self._cluster:
            raise MalformedImage("a compressed cluster lies in the header")
        self._want(_Collect(offset, end,
                            self._inflater(offset, guest, length)))

    def _inflater(self, offset, guest, length):
        def arrived(data):
            self._recent.append((offset, data))
            self.target.write_at(guest, self._inflate(data)[:length])
        return arrived

    def _inflate(self, data):
        cluster = self._cluster
        if self.header.compression == _ZLIB:
            try:
                out = zlib.decompressobj(-12).decompress(data, cluster)
            except zlib.error as exc:
                raise MalformedImage("a compressed cluster does not "
                                     "inflate: %s" % exc) from None
        else:
            try:
                reader = zstandard.ZstdDecompressor(
                    max_window_size=MAX_ZSTD_WINDOW).stream_reader(
                        io.BytesIO(data), read_across_frames=False)
                out = bytearray()
                while len(out) < cluster:
                    chunk = reader.read(cluster - len(out))
                    if not chunk:
                        break
                    out += chunk
            except zstandard.ZstdError as exc:
                raise MalformedImage("a zstd-compressed cluster does not "
                                     "decompress: %s" % exc) from None
        if len(out) != cluster:
            raise MalformedImage("a compressed cluster holds %d bytes, not "
                                 "a cluster (%d)" % (len(out), cluster))
        return out

    # -- zeros and the end ---------------------------------------------------

    def _add_zero(self, start, end):
        end = min(end, self.header.virtual_size)
        if start >= end:
            return
        zeros = self._zeros
        if zeros and zeros[-1][1] == start:
            zeros[-1][1] = end
            return
        if len(zeros) >= MAX_PENDING_ZEROS:
            self._flush_zeros()
        zeros.append([start, end])

    def _flush_zeros(self):
        zeros, self._zeros = self._zeros, []
        for start, end in zeros:
            self.target.zero(start, end)

    def _refuse_discarded(self):
        if self._discarded:
            raise ValueError("this qcow2 stream was discarded")

    def discard(self):
        """Drop every byte kept and every range awaited, now: the stream is
        abandoned (a failed write, a layout that must be staged). The
        parser's objects refer to each other, so without this what they
        hold would wait for the garbage collector. Nothing more may be fed.
        """
        self._kept.clear()
        self._kept_starts.clear()
        self._heap.clear()
        self._active.clear()
        self._recent.clear()
        self._zeros.clear()
        self._head = None
        self._kept_bytes = self._collecting = 0
        self._discarded = True

    def close(self):
        """End of the file: complete what the end pads (qemu reads past
        the end of a file as zeros), zero the unallocated ranges.

        Raises :class:`MalformedImage` for an image that ends inside its
        header or names a table or cluster that starts past its end.
        Returns the virtual size.
        """
        self._refuse_discarded()
        if self._closed:
            return self.header.virtual_size
        if self.header is None:
            if self._head is None or len(self._head) < _HEADER.size:
                raise MalformedImage("the image ends inside its header")
            self._total = len(self._head)
            self._start(len(self._head))
        end = self._pos
        while self._heap or self._active:
            wants = self._active + [item[2] for item in self._heap]
            self._active, self._heap = [], []
            for want in sorted(wants, key=lambda want: want.start):
                if want.start >= end:
                    raise MalformedImage(
                        "the image refers to byte %d, past its end (%d "
                        "bytes)" % (want.start, end))
                while want.filled < want.end:
                    want.receive(bytes(min(want.end - want.filled,
                                           units.MIB)))
                want.finish(self)
        self._flush_zeros()
        self._closed = True
        return self.header.virtual_size
