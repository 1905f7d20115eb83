"""UEFI boot entries and boot state, acted on through the dispatcher.

The policy half of :mod:`teeth_agent.hardware.efi`, shared by the
``standbye`` and ``decom`` command groups: which partitions belong to this
machine, which entries are stale, in what order the new one goes. The
managers only act (``list_boot_entries``, ``create_boot_entry``,
``delete_boot_entry``, ``set_boot_order``); a vendor manager overriding
them keeps this policy.
"""

import logging

from teeth_agent.disk import partitions
from teeth_agent import hardware
from teeth_agent.hardware import efi
from teeth_agent.hardware import safety
from teeth_agent import processes

LOG = logging.getLogger(__name__)


def current_state(dispatcher):
    """The running boot state (``get_boot_mode``); BIOS with nothing
    known when no manager serves it."""
    try:
        state = dispatcher.dispatch("get_boot_mode")
    except hardware.NoManagerError:
        state = None
    state = dict(state or {})
    state.setdefault("boot_mode", efi.BIOS)
    for key in ("secure_boot", "setup_mode", "lockdown"):
        state.setdefault(key, None)
    return state


def disk_ids(path):
    """The identifiers boot entries may name ``path`` by: its GPT
    partition UUIDs (lower case), or for an MBR table its disk identifier
    (:func:`teeth_agent.hardware.efi.mbr_key`, the signature at byte 440
    that ``HD(n,MBR,0x...)`` nodes carry). Empty when it has no table,
    None when the table cannot be read."""
    try:
        table = partitions.read_table(path)
    except (partitions.PartitionError, processes.ProcessError,
            OSError) as exc:
        LOG.warning("cannot read the partition table of %s: %s", path, exc)
        return None
    if table is None:
        return set()
    ids = {p["uuid"].lower() for p in table["partitions"] if p.get("uuid")}
    if table["type"] == partitions.MBR:
        key = efi.mbr_key(table.get("id"))
        if key is None:
            # An MBR entry may boot this disk: without its identifier it
            # cannot be told which.
            LOG.warning("cannot read the MBR disk identifier of %s", path)
            return None
        ids.add(key)
    return ids


def machine_ids(dispatcher, conf):
    """``(writable, known, protected)``: the disk identifiers
    (:func:`disk_ids`) of the disks the agent may write, of every disk it
    sees, and of the disks it must not write. ``known`` is None when a
    disk's table could not be read (then no entry counts as dangling: it
    may boot that disk). An identifier in ``protected`` is never removed
    even when a writable disk has it too (a cloned image, MBR signatures
    left at 0): the entry may boot the protected disk."""
    writable, known, protected = set(), set(), set()
    try:
        devices = dispatcher.dispatch("list_block_devices") or []
    except hardware.NoManagerError:
        devices = []
    for device in devices:
        ids = disk_ids(device["path"])
        if ids is None:
            known = None
            continue
        if known is not None:
            known |= ids
        if safety.inclusion(device["path"], conf)[0] and \
                safety.eligibility(device, conf)[0]:
            writable |= ids
        else:
            protected |= ids
    return writable, known, protected


def set_up_entry(dispatcher, conf, path, partition, loader, label):
    """Remove stale disk entries, create one for ``loader`` on
    ``partition`` of ``path``, and put it first in BootOrder.

    Returns ``{"entry" (None when the manager only simulated it),
    "label", "loader", "removed" (list of {"entry", "label",
    "partition_uuid", "mbr_signature"}), "boot_order"}``. Raises
    :class:`hardware.HardwareManagerError`.
    """
    writable, known, protected = machine_ids(dispatcher, conf)
    writable = (writable | (disk_ids(path) or set())) - protected
    config = dispatcher.call("list_boot_entries")
    removed = []
    for entry in efi.stale_entries(config, writable, known):
        if efi.entry_key(entry) in protected:
            continue
        LOG.info("removing boot entry %s (%s) left for a disk of this "
                 "machine", entry["entry"], entry["label"])
        dispatcher.call("delete_boot_entry", entry["entry"])
        removed.append(_removed(entry))
    number = dispatcher.call("create_boot_entry", path, partition, loader,
                             label)
    if number is None:
        # Simulated ([power] simulate): nothing was created.
        return {"entry": None, "label": label, "loader": loader,
                "removed": removed, "boot_order": config["boot_order"]}
    current = dispatcher.call("list_boot_entries")
    order = efi.order_first(current["boot_order"], number)
    dispatcher.call("set_boot_order", order)
    LOG.info("boot entry %s (%s) boots %s from partition %d of %s first",
             number, label, loader, partition, path)
    return {"entry": number, "label": label, "loader": loader,
            "removed": removed, "boot_order": order}


def _removed(entry):
    return {"entry": entry["entry"], "label": entry["label"],
            "partition_uuid": entry["partition_uuid"],
            "mbr_signature": entry.get("mbr_signature")}


def remove_entries_for(dispatcher, ids):
    """Delete the disk boot entries booting one of ``ids`` (see
    :func:`disk_ids`); returns the removed ``[{"entry", "label",
    "partition_uuid", "mbr_signature"}]``."""
    config = dispatcher.call("list_boot_entries")
    removed = []
    for entry in efi.entries_for(config, ids):
        dispatcher.call("delete_boot_entry", entry["entry"])
        removed.append(_removed(entry))
    return removed


def before_erase(dispatcher, paths):
    """``{path: disk identifiers}`` (:func:`disk_ids`: GPT partition
    UUIDs, the MBR disk identifier) of the disks about to be erased, read
    while their tables still exist (unreadable ones are left out); empty
    outside UEFI, where there are no boot entries to clean."""
    found = {}
    if current_state(dispatcher)["boot_mode"] != efi.UEFI:
        return found
    for path in paths:
        ids = disk_ids(path)
        if ids:
            found[path] = ids
    return found


def _survivor_ids(dispatcher, erased):
    """The identifiers of the disks the managers report that are not in
    ``erased`` (unreadable ones add nothing)."""
    try:
        devices = dispatcher.dispatch("list_block_devices") or []
    except hardware.HardwareManagerError as exc:
        LOG.warning("cannot list the disks that were not erased: %s", exc)
        return set()
    found = set()
    for device in devices:
        if device["path"] not in erased:
            found |= disk_ids(device["path"]) or set()
    return found


def after_erase(dispatcher, ids_by_disk, erased):
    """Remove the boot entries booting the disks in ``erased`` (paths),
    with their identifiers from :func:`before_erase`, except identifiers
    a disk that was not erased has too.

    Returns ``(removed, error)``: the removed entries, and None or the
    sentence saying why entries could not be removed. Outside UEFI
    ``ids_by_disk`` is empty and the firmware is not asked anything.
    """
    ids = set()
    for path in erased:
        ids |= ids_by_disk.get(path, set())
    if not ids:
        return [], None
    # An identifier a disk that was not erased shares (a cloned image,
    # MBR signatures left at 0) may be that disk's entry: it stays.
    ids -= _survivor_ids(dispatcher, erased)
    if not ids:
        return [], None
    try:
        removed = remove_entries_for(dispatcher, ids)
    except hardware.HardwareManagerError as exc:
        LOG.error("cannot remove the boot entries of the erased disks: %s",
                  exc)
        return [], "the boot entries of the erased disks could not be " \
            "removed: %s" % exc
    for entry in removed:
        LOG.info("removed boot entry %s (%s) of an erased disk",
                 entry["entry"], entry["label"])
    return removed, None
