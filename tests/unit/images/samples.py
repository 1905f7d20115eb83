"""Sample image data shared by the image tests."""

import struct

from teeth_agent import units

MIB = units.MIB


def qcow2_header(version=3, backing=0, crypt=0, incompatible=0,
                 extensions=b""):
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing,
                         0, 16, 10 * MIB, crypt, 1, 0x30000, 0x10000, 1, 0,
                         0)
    if version == 3:
        header += struct.pack(">QQQII", incompatible, 0, 0, 4, 112)
        header += bytes(112 - len(header))
    return header + extensions + bytes(8) + bytes(4096)


DATA = "data"
ZERO = "zero"
UNALLOCATED = "unallocated"
COMPRESSED = "compressed"


def build_qcow2(cluster_bits, guest, order=None, version=3):
    """A qcow2 v2/v3 image (bytes) and the guest disk it holds (bytes).

    ``guest`` lists one ``(kind, content)`` per guest cluster: DATA
    (content: the cluster's bytes), ZERO (the zero flag, version 3),
    UNALLOCATED or COMPRESSED (raw deflate, as qemu writes it). ``order``
    (a permutation of range(number of objects)) puts the L1 table, the L2
    tables and the data in the file in that order after the header; by
    default tables come first, then data in guest order.
    """
    import zlib

    cluster = 1 << cluster_bits
    per_l2 = cluster // 8
    tables = -(-len(guest) // per_l2) or 1
    l1_clusters = -(-tables * 8 // cluster)
    objects = [("l1", None)] + [("l2", index) for index in range(tables)]
    blobs = {}
    for index, (kind, content) in enumerate(guest):
        if kind == DATA:
            objects.append(("data", index))
            blobs[index] = content
        elif kind == COMPRESSED:
            packer = zlib.compressobj(9, zlib.DEFLATED, -12)
            blobs[index] = packer.compress(content) + packer.flush()
            objects.append(("data", index))
    if order is not None:
        objects = [objects[i] for i in order]
    offsets = {}
    position = cluster
    for name in objects:
        offsets[name] = position
        size = l1_clusters if name[0] == "l1" else 1
        position += size * cluster
    # Refcounts (16 bits, all 1) at the end, so qemu-img opens it too.
    used = position // cluster
    blocks = table_clusters = 1
    while (used + blocks + table_clusters) > blocks * cluster // 2 or \
            blocks * 8 > table_clusters * cluster:
        blocks += 1
        table_clusters = -(-blocks * 8 // cluster)
    table_offset = position
    image = bytearray(position + (table_clusters + blocks) * cluster)
    for block in range(blocks):
        block_offset = table_offset + (table_clusters + block) * cluster
        struct.pack_into(">Q", image, table_offset + 8 * block, block_offset)
    total_clusters = len(image) // cluster
    first_block = table_offset + table_clusters * cluster
    for index in range(total_clusters):
        struct.pack_into(">H", image, first_block + 2 * index, 1)
    struct.pack_into(">4sIQIIQIIQQIIQ", image, 0, b"QFI\xfb", version, 0, 0,
                     cluster_bits, len(guest) * cluster, 0, tables,
                     offsets[("l1", None)], table_offset, table_clusters, 0,
                     0)
    if version == 3:
        struct.pack_into(">QQQII", image, 72, 0, 0, 0, 4, 104)
    for table in range(tables):
        struct.pack_into(">Q", image, offsets[("l1", None)] + 8 * table,
                         offsets[("l2", table)] | 1 << 63)
    content = bytearray()
    for index, (kind, data) in enumerate(guest):
        where = offsets[("l2", index // per_l2)] + 8 * (index % per_l2)
        if kind == DATA:
            entry = offsets[("data", index)] | 1 << 63
            start = offsets[("data", index)]
            image[start:start + cluster] = data
        elif kind == COMPRESSED:
            start = offsets[("data", index)]
            blob = blobs[index]
            image[start:start + len(blob)] = blob
            bits = 62 - (cluster_bits - 8)
            sectors = -(-len(blob) // 512) - 1
            entry = 1 << 62 | sectors << bits | start
        elif kind == ZERO:
            entry = 1
        else:
            entry = 0
        struct.pack_into(">Q", image, where, entry)
        content += data if kind in (DATA, COMPRESSED) else bytes(cluster)
    return bytes(image), bytes(content)
