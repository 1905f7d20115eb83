"""Creating an EFI system partition on a disk whose image brought none.

The partition goes into the largest free, MiB-aligned range of a GPT table
(``sgdisk``), is formatted FAT32 on its own device node (``mkfs.vfat``),
and is then only written with mtools (:mod:`teeth_agent.images.uefi`). A
table without room, or an MBR table, is refused with
:class:`NoRoomForEsp` before anything changes: :func:`check_room` works
out the table as it will be (the backup GPT header moved to the end of the
disk, the config drive added at the end) from the table and the GPT header
alone, so ``run_image`` asks it before it writes anything.
"""

import logging
import os
import struct

from teeth_agent.disk import blockdev
from teeth_agent.disk import partitions
from teeth_agent import processes
from teeth_agent import units

LOG = logging.getLogger(__name__)

#: Size of an ESP the agent creates: room for shim, grub, the MOK manager
#: and a firmware update capsule or two; FAT32 needs at least 33 MiB.
ESP_SIZE = 128 * units.MIB
ESP_NAME = "EFI System"
_GPT_FIRST_USABLE = 34


#: Largest partition entry array believed (the UEFI minimum is 16 KiB;
#: tools write 128 entries of 128 bytes).
_MAX_ENTRY_ARRAY = 4 * units.MIB


class NoRoomForEsp(partitions.PartitionError):
    """The partition table has no room (or no kind) for a new ESP."""


def read_gpt_header(path, sector_size):
    """``{"entries", "entry_size"}`` of the primary GPT header of ``path``
    (LBA 1), read without changing anything. Raises
    :class:`partitions.PartitionError` when it is not a sane header."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = os.pread(fd, 92, sector_size)
    finally:
        os.close(fd)
    if len(header) < 92 or header[:8] != b"EFI PART":
        raise partitions.PartitionError("%s has no readable primary GPT "
                                        "header" % path)
    entries, entry_size = struct.unpack_from("<II", header, 80)
    if not 1 <= entries or entry_size < 128 or entry_size % 8 or \
            entries * entry_size > _MAX_ENTRY_ARRAY:
        raise partitions.PartitionError(
            "the GPT header of %s claims %d partition entries of %d bytes"
            % (path, entries, entry_size))
    return {"entries": entries, "entry_size": entry_size}


def planned_table(path, table, reserve_bytes=0, freed=()):
    """The GPT ``table`` of ``path`` as it will be once the backup header
    is at the end of the disk (``sgdisk -e``), the partitions numbered in
    ``freed`` (old config drives) are gone and a partition of
    ``reserve_bytes`` (the config drive; 0 for none) is added at the end
    the way :func:`partitions.add_partition_at_end` adds it. Nothing is
    changed. Adds ``"entries"`` (the table's number of partition entries).
    Raises :class:`partitions.PartitionError` when the config drive itself
    would not fit."""
    sector = table["sector_size"]
    header = read_gpt_header(path, sector)
    total = blockdev.device_size(path) // sector
    array = -(-header["entries"] * header["entry_size"] // sector)
    # sgdisk -e: backup header in the last sector, its entry array just
    # before it, the last usable sector before that.
    last_usable = total - 2 - array
    kept = [dict(p) for p in table["partitions"]
            if p["number"] not in set(freed)]
    if reserve_bytes:
        align = max(units.MIB // sector, 1)
        sectors = -(-reserve_bytes // sector)
        sectors = -(-sectors // align) * align
        last_end = max((p["start"] + p["sectors"] - 1 for p in kept),
                       default=0)
        start = (last_usable + 1 - sectors) // align * align
        if start <= last_end:
            raise partitions.PartitionError(
                "no room for a %d MiB config drive partition after the last "
                "partition of %s" % (sectors * sector // units.MIB, path))
        number = max((p["number"] for p in kept if p["number"]),
                     default=0) + 1
        kept.append({"number": number, "start": start, "sectors": sectors,
                     "type": "", "name": "config-2", "uuid": None})
    return dict(table, last_lba=last_usable, partitions=kept,
                entries=header["entries"])


def check_room(path, table, reserve_bytes=0, freed=(), size=ESP_SIZE):
    """Raise :class:`NoRoomForEsp` when :func:`create_esp` could not add
    an ESP of ``size`` bytes to ``path`` (``table`` its table, read by the
    caller) once the config drive of ``reserve_bytes`` is added (see
    :func:`planned_table`); return the planned ``(number, first, last)``.
    Reads only: called before the disk is changed."""
    if table is None:
        raise NoRoomForEsp("%s has no partition table" % path)
    if table["type"] != partitions.GPT:
        # place_esp says why an MBR table gets no ESP.
        place_esp(table, size)
    planned = planned_table(path, table, reserve_bytes, freed)
    first, last = place_esp(planned, size)
    numbers = {p["number"] for p in planned["partitions"] if p["number"]}
    free = set(range(1, min(planned["entries"], 128) + 1)) - numbers
    if not free:
        raise NoRoomForEsp("the partition table of %s has no free entry for "
                           "an EFI system partition" % path)
    return min(free), first, last


def free_ranges(table):
    """The free ranges ``[(first, last)]`` (sectors, inclusive) of a GPT
    ``table`` between its first and last usable sector."""
    first_usable = _GPT_FIRST_USABLE
    last_usable = table.get("last_lba")
    if last_usable is None:
        return []
    used = sorted((p["start"], p["start"] + p["sectors"] - 1)
                  for p in table["partitions"])
    ranges = []
    cursor = first_usable
    for start, end in used:
        if start > cursor:
            ranges.append((cursor, start - 1))
        cursor = max(cursor, end + 1)
    if cursor <= last_usable:
        ranges.append((cursor, last_usable))
    return ranges


def place_esp(table, size=ESP_SIZE):
    """``(first, last)`` sectors of a new ESP of ``size`` bytes in
    ``table``, MiB-aligned, in the largest free range. Raises
    :class:`NoRoomForEsp`."""
    if table["type"] != partitions.GPT:
        raise NoRoomForEsp(
            "the image has a %s partition table; the agent creates an EFI "
            "system partition only in a GPT table" % table["type"])
    sector = table["sector_size"]
    align = max(units.MIB // sector, 1)
    sectors = -(-size // sector)
    best = None
    for first, last in free_ranges(table):
        start = -(-first // align) * align
        if start + sectors - 1 <= last:
            room = last - start + 1
            if best is None or room > best[0]:
                best = (room, start)
    if best is None:
        raise NoRoomForEsp(
            "the partition table has no free range of %d MiB for an EFI "
            "system partition; give the image one, or room for one"
            % (size // units.MIB))
    return best[1], best[1] + sectors - 1


def create_esp(path, node_of, size=ESP_SIZE):
    """Add an ESP to the GPT disk ``path`` and format it FAT32.

    ``node_of(n)`` gives partition ``n``'s device node. Returns the new
    partition's number. Raises :class:`NoRoomForEsp`,
    :class:`partitions.PartitionError` and ``processes.ProcessError``.
    """
    table = partitions.read_table(path)
    # Refused before anything changes.
    check_room(path, table, size=size)
    # The backup GPT header moves to the end of a disk larger than the
    # image, so the space after the image counts as free.
    processes.execute("sgdisk", "-e", path)
    table = partitions.read_table(path)
    first, last = place_esp(table, size)
    numbers = [p["number"] for p in table["partitions"] if p["number"]]
    free = set(range(1, 129)) - set(numbers)
    if not free:
        raise NoRoomForEsp("the partition table of %s has no free entry for "
                           "an EFI system partition" % path)
    number = min(free)
    processes.execute("sgdisk", "-n", "%d:%d:%d" % (number, first, last),
                      "-t", "%d:ef00" % number, "-c",
                      "%d:%s" % (number, ESP_NAME), path)
    partitions.tell_kernel(path)
    node = node_of(number)
    processes.execute("mkfs.vfat", "-F", "32", "-n", "EFI", node)
    LOG.info("created EFI system partition %d of %s (%d MiB)", number, path,
             size // units.MIB)
    return number
