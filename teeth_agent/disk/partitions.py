"""Partition tables: reading them, adding the config-drive partition and
telling the kernel.

Tables are read and changed in user space (``sfdisk --json``, ``sgdisk``,
``sfdisk --append``), never by asking the kernel to re-read the disk: some
kernels parse no partition tables at all, and ``partprobe`` or ``blockdev
--rereadpt`` drop their partitions. After a change the kernel learns the
partitions through ``partx`` (BLKPG), which works whether or not it parses
tables itself and whether or not udev runs.
"""

import json
import logging
import os
import re
import time

from teeth_agent.disk import blockdev
from teeth_agent import processes
from teeth_agent import units

LOG = logging.getLogger(__name__)

GPT = "gpt"
MBR = "dos"
_MIB = units.MIB
_GPT_BASIC_DATA = "0700"
_MBR_LINUX = "83"
_MBR_EXTENDED = ("5", "f", "85")


class PartitionError(Exception):
    """The partition table cannot be read or changed as needed."""


def _number(device, node):
    suffix = node[len(device):] if node.startswith(device) else node
    match = re.search(r"(\d+)$", suffix)
    return int(match.group(1)) if match else None


def read_table(path):
    """The partition table of ``path``, or None when it has none.

    Returns ``{"type": "gpt"|"dos", "id" (the disk GUID of GPT, the
    32-bit disk identifier of MBR as ``0x`` and 8 hex digits; None when
    sfdisk gives none), "sector_size", "last_lba" (GPT), "partitions":
    [{"number", "start", "sectors", "type", "name", "uuid"}]}``, start
    and sectors in logical sectors.
    """
    returncode, out, err = processes.run("sfdisk", "--json", path)
    if returncode != 0:
        if "does not contain a recognized partition table" in err:
            return None
        raise PartitionError("cannot read the partition table of %s: %s"
                             % (path, err.strip()))
    try:
        table = json.loads(out)["partitiontable"]
    except (ValueError, KeyError, TypeError):
        raise PartitionError("sfdisk gave no table for %s" % path) from None
    partitions = []
    for entry in table.get("partitions", []):
        partitions.append({
            "number": _number(path, entry.get("node", "")),
            "start": int(entry["start"]),
            "sectors": int(entry["size"]),
            "type": str(entry.get("type", "")).lower(),
            "name": entry.get("name"),
            "uuid": entry.get("uuid"),
        })
    sector_size = table.get("sectorsize")
    if not sector_size:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sector_size = blockdev.logical_block_size(fd, default=4096)
        finally:
            os.close(fd)
    disk_id = table.get("id")
    return {"type": table.get("label"),
            "id": disk_id if isinstance(disk_id, str) else None,
            "sector_size": int(sector_size),
            "last_lba": table.get("lastlba"), "partitions": partitions}


def tell_kernel(path):
    """Make the kernel's view of ``path``'s partitions match its table."""
    # -u updates the partitions the kernel already has (it may have
    # parsed the old table itself), -a adds those it lacks.
    processes.run("partx", "-u", path)
    processes.run("partx", "-a", path)


def partition_node(path, number, sysfs_root="/sys", dev_root="/dev",
                   timeout=10.0, sleep=time.sleep):
    """The device node of partition ``number`` of the disk ``path``.

    Found through sysfs (no udev needed); waits up to ``timeout`` seconds
    for the kernel and devtmpfs to create it. Raises
    :class:`PartitionError`.
    """
    disk = os.path.basename(os.path.realpath(path))
    directory = os.path.join(sysfs_root, "class", "block", disk)
    deadline = time.monotonic() + timeout
    while True:
        try:
            children = os.listdir(directory)
        except OSError:
            children = []
        for child in children:
            try:
                with open(os.path.join(directory, child, "partition")) as f:
                    found = int(f.read().strip())
            except (OSError, ValueError):
                continue
            node = os.path.join(dev_root, child)
            if found == number and os.path.exists(node):
                return node
        if time.monotonic() >= deadline:
            raise PartitionError("the kernel shows no partition %d of %s"
                                 % (number, path))
        sleep(0.1)


def _align_down(value, alignment):
    return value // alignment * alignment


def add_partition_at_end(path, size_bytes, name="config-2"):
    """Add a partition of at least ``size_bytes`` at the end of ``path``.

    GPT (``sgdisk``; the backup header is first moved to the end of the
    disk, since the image was probably smaller than the disk) or MBR
    (``sfdisk --append``; within the first 2^32 sectors). The partition is
    MiB-aligned and its size a whole number of MiB. Returns ``{"number",
    "offset", "size"}`` in bytes, after telling the kernel. Raises
    :class:`PartitionError` when the disk has no table, no free slot or no
    room after its last partition.
    """
    table = read_table(path)
    if table is None:
        raise PartitionError("%s has no partition table to add the config "
                             "drive partition to" % path)
    sector = table["sector_size"]
    align = max(_MIB // sector, 1)
    sectors = -(-size_bytes // sector)
    sectors = -(-sectors // align) * align
    numbers = [p["number"] for p in table["partitions"] if p["number"]]
    last_end = max((p["start"] + p["sectors"] - 1
                    for p in table["partitions"]), default=0)
    if table["type"] == GPT:
        processes.execute("sgdisk", "-e", path)
        table = read_table(path)
        start = _align_down(table["last_lba"] + 1 - sectors, align)
        if start <= last_end:
            raise PartitionError("no room for a %d MiB partition after the "
                                 "last partition of %s"
                                 % (sectors * sector // _MIB, path))
        number = max(numbers, default=0) + 1
        processes.execute(
            "sgdisk", "-n", "%d:%d:%d" % (number, start, start + sectors - 1),
            "-t", "%d:%s" % (number, _GPT_BASIC_DATA),
            "-c", "%d:%s" % (number, name), path)
    elif table["type"] == MBR:
        primaries = [n for n in numbers if n <= 4]
        if len(primaries) >= 4:
            raise PartitionError("the MBR of %s has no free primary slot"
                                 % path)
        total = blockdev.device_size(path) // sector
        limit = min(total, 2 ** 32)
        start = _align_down(limit - sectors, align)
        if start <= last_end:
            raise PartitionError("no room for a %d MiB partition after the "
                                 "last partition of %s"
                                 % (sectors * sector // _MIB, path))
        number = min(set(range(1, 5)) - set(primaries))
        processes.execute(
            "sfdisk", "--append", "--no-reread", "--no-tell-kernel",
            "--wipe", "never", "--wipe-partitions", "never", path,
            input_data="start=%d, size=%d, type=%s\n"
            % (start, sectors, _MBR_LINUX))
        table = read_table(path)
        matches = [p["number"] for p in table["partitions"]
                   if p["start"] == start]
        number = matches[0] if matches else number
    else:
        raise PartitionError("unsupported partition table %s on %s"
                             % (table["type"], path))
    tell_kernel(path)
    LOG.info("added partition %d of %d MiB at the end of %s", number,
             sectors * sector // _MIB, path)
    return {"number": number, "offset": start * sector,
            "size": sectors * sector}


def delete_partition(path, number):
    """Remove partition ``number`` from the table of ``path`` and from the
    kernel's view of it."""
    table = read_table(path)
    if table is None:
        raise PartitionError("%s has no partition table" % path)
    if table["type"] == GPT:
        processes.execute("sgdisk", "-d", str(number), path)
    else:
        processes.execute("sfdisk", "--delete", "--no-reread",
                          "--no-tell-kernel", path, str(number))
    processes.run("partx", "-d", "--nr", str(number), path)
    LOG.info("removed partition %d of %s", number, path)
