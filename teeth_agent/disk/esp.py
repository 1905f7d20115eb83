"""Creating an EFI system partition on a disk whose image brought none.

The partition goes into the largest free, MiB-aligned range of a GPT table
(``sgdisk``), is formatted FAT32 on its own device node (``mkfs.vfat``),
and is then only written with mtools (:mod:`teeth_agent.images.uefi`). A
table without room, or an MBR table, is refused with
:class:`NoRoomForEsp` before anything changes.
"""

import logging

from teeth_agent.disk import partitions
from teeth_agent import processes
from teeth_agent import units

LOG = logging.getLogger(__name__)

#: Size of an ESP the agent creates: room for shim, grub, the MOK manager
#: and a firmware update capsule or two; FAT32 needs at least 33 MiB.
ESP_SIZE = 128 * units.MIB
ESP_NAME = "EFI System"
_GPT_FIRST_USABLE = 34


class NoRoomForEsp(partitions.PartitionError):
    """The partition table has no room (or no kind) for a new ESP."""


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
    if table is None:
        raise NoRoomForEsp("%s has no partition table" % path)
    if table["type"] == partitions.GPT:
        # The backup GPT header moves to the end of a disk larger than
        # the image, so the space after the image counts as free.
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
