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


def partition_uuids(path):
    """The GPT partition UUIDs of ``path`` (lower case); empty when it
    has no table or it cannot be read."""
    try:
        table = partitions.read_table(path)
    except (partitions.PartitionError, OSError) as exc:
        LOG.warning("cannot read the partition table of %s: %s", path, exc)
        return set()
    if table is None:
        return set()
    return {p["uuid"].lower() for p in table["partitions"] if p.get("uuid")}


def machine_uuids(dispatcher, conf):
    """``(writable, known)``: the partition UUIDs of the disks the agent
    may write, and of every disk it sees."""
    writable, known = set(), set()
    try:
        devices = dispatcher.dispatch("list_block_devices") or []
    except hardware.NoManagerError:
        devices = []
    for device in devices:
        uuids = partition_uuids(device["path"])
        known |= uuids
        if safety.inclusion(device["path"], conf)[0] and \
                safety.eligibility(device, conf)[0]:
            writable |= uuids
    return writable, known


def set_up_entry(dispatcher, conf, path, partition, loader, label):
    """Remove stale disk entries, create one for ``loader`` on
    ``partition`` of ``path``, and put it first in BootOrder.

    Returns ``{"entry", "label", "loader", "removed" (list of {"entry",
    "label"}), "boot_order"}``. Raises
    :class:`hardware.HardwareManagerError`.
    """
    writable, known = machine_uuids(dispatcher, conf)
    writable |= partition_uuids(path)
    config = dispatcher.call("list_boot_entries")
    removed = []
    for entry in efi.stale_entries(config, writable, known):
        LOG.info("removing boot entry %s (%s) left for a disk of this "
                 "machine", entry["entry"], entry["label"])
        dispatcher.call("delete_boot_entry", entry["entry"])
        removed.append({"entry": entry["entry"], "label": entry["label"],
                        "partition_uuid": entry["partition_uuid"]})
    number = dispatcher.call("create_boot_entry", path, partition, loader,
                             label)
    current = dispatcher.call("list_boot_entries")
    order = efi.order_first(current["boot_order"], number)
    dispatcher.call("set_boot_order", order)
    LOG.info("boot entry %s (%s) boots %s from partition %d of %s first",
             number, label, loader, partition, path)
    return {"entry": number, "label": label, "loader": loader,
            "removed": removed, "boot_order": order}


def remove_entries_for(dispatcher, uuids):
    """Delete the disk boot entries booting one of ``uuids``; returns the
    removed ``[{"entry", "label", "partition_uuid"}]``."""
    config = dispatcher.call("list_boot_entries")
    removed = []
    for entry in efi.entries_for(config, uuids):
        dispatcher.call("delete_boot_entry", entry["entry"])
        removed.append({"entry": entry["entry"], "label": entry["label"],
                        "partition_uuid": entry["partition_uuid"]})
    return removed
