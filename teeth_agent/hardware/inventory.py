"""The chassis as the protocol describes it, built from the hardware managers.

Every function takes the :class:`~teeth_agent.hardware.Dispatcher` (and the
config where device filtering applies); nothing here touches the machine
directly. Shapes follow docs/protocol.md: a field that cannot be read is
``None``, never missing.
"""

import hashlib
import json
import logging
import socket
import uuid as uuid_mod

from teeth_agent import hardware
from teeth_agent.hardware import base
from teeth_agent.hardware import safety

LOG = logging.getLogger(__name__)

SYSTEM_FIELDS = ("vendor", "product", "serial", "uuid", "bios_version",
                 "bios_date")
BOOT_FIELDS = ("boot_mode", "secure_boot", "setup_mode", "lockdown")
CPU_FIELDS = ("count", "model", "arch", "sockets", "cores", "threads")
MEMORY_FIELDS = ("total_bytes", "dimms")
DISK_FIELDS = ("path", "name", "size_bytes", "model", "serial", "wwn",
               "vendor", "rotational", "logical_sector_size",
               "physical_sector_size", "removable", "read_only", "transport",
               "partitions", "holders", "mounted", "mountpoints",
               "is_agent_root", "by_path")
NIC_FIELDS = ("name", "mac", "speed_mbps", "link", "driver", "pci_address")

# DMI UUIDs that firmware writes when nobody set a real one; many chassis
# share them, so they cannot identify an agent.
_PLACEHOLDER_UUIDS = {
    uuid_mod.UUID(int=0),
    uuid_mod.UUID(int=(1 << 128) - 1),
    uuid_mod.UUID("03000200-0400-0500-0006-000700080009"),
}


def _ask(dispatcher, method, *args):
    """The first answer for ``method``, or None when no manager serves
    it. A manager that fails (``DispatchError``) is not hidden."""
    try:
        return dispatcher.dispatch(method, *args)
    except hardware.NoManagerError:
        LOG.debug("no hardware manager serves %s", method)
        return None


def _shape(record, fields):
    record = record or {}
    shaped = {field: record.get(field) for field in fields}
    # Extra keys a vendor manager adds are kept after the documented ones.
    shaped.update({k: v for k, v in record.items() if k not in shaped})
    return shaped


def boot_info(dispatcher):
    """``{"boot_mode", "secure_boot", "setup_mode", "lockdown"}``: how the
    ramdisk was booted (``get_boot_mode``)."""
    return _shape(_ask(dispatcher, "get_boot_mode"), BOOT_FIELDS)


def system_info(dispatcher):
    """``{"vendor", "product", "serial", "uuid", "bios_version",
    "bios_date", "boot_mode", "secure_boot", "setup_mode",
    "lockdown"}``."""
    system = _shape(_ask(dispatcher, "get_system_info"), SYSTEM_FIELDS)
    for key, value in boot_info(dispatcher).items():
        system.setdefault(key, value)
    return system


def network_interfaces(dispatcher):
    """Physical NICs sorted by name, each with every ``NIC_FIELDS`` key."""
    nics = _ask(dispatcher, "list_network_interfaces") or []
    return sorted((_shape(nic, NIC_FIELDS) for nic in nics),
                  key=lambda nic: nic["name"] or "")


def block_devices(dispatcher, conf):
    """The block devices ``[hardware] device_include/device_exclude`` let
    the agent see, sorted by path.

    Each is a ``BlockDevice`` plus ``eligible`` (bool) and
    ``ineligible_reason`` (None or a sentence fragment) from
    :func:`teeth_agent.hardware.safety.eligibility`.
    """
    devices = []
    for device in _ask(dispatcher, "list_block_devices") or []:
        device = _shape(device, DISK_FIELDS)
        if not safety.inclusion(device["path"], conf)[0]:
            continue
        eligible, reason = safety.eligibility(device, conf)
        device["eligible"] = eligible
        device["ineligible_reason"] = reason
        devices.append(device)
    return sorted(devices, key=lambda device: device["path"])


def firmware_versions(dispatcher):
    """``{component: version}`` merged from every manager; where two
    report the same component, the higher support level wins."""
    merged = {}
    for _, versions in reversed(dispatcher.dispatch_all(
            "get_firmware_versions")):
        merged.update(versions or {})
    return merged


def collect_inventory(dispatcher, conf):
    """The inventory in docs/protocol.md's shape: ``system``, ``cpu``,
    ``memory``, ``disks`` (see :func:`block_devices`), ``nics``.

    Devices excluded by config do not appear at all. Raises
    :class:`~teeth_agent.hardware.DispatchError` when a manager fails.
    """
    cpu = _shape(_ask(dispatcher, "get_cpus"), CPU_FIELDS)
    # The flag list is long and no check uses it; it stays out of the
    # inventory sent on the wire.
    cpu.pop("flags", None)
    return {
        "system": system_info(dispatcher),
        "cpu": cpu,
        "memory": _shape(_ask(dispatcher, "get_memory"), MEMORY_FIELDS),
        "disks": block_devices(dispatcher, conf),
        "nics": network_interfaces(dispatcher),
    }


def hardware_summary(dispatcher):
    """The handshake's ``hardware``: the ``system`` part of the inventory
    plus ``macs`` (sorted, lower case)."""
    summary = system_info(dispatcher)
    summary["macs"] = sorted(nic["mac"] for nic in
                             network_interfaces(dispatcher) if nic["mac"])
    return summary


def _real_uuid(text):
    if not text:
        return None
    try:
        value = uuid_mod.UUID(text.strip())
    except ValueError:
        return None  # "Not Settable", "Not Present", ...
    if value in _PLACEHOLDER_UUIDS:
        return None
    return str(value)


def derive_agent_id(dispatcher):
    """A stable identity for this chassis.

    The DMI system UUID when it is real (placeholders such as all zeros,
    all F or "Not Settable" are ignored); else ``"mac-"`` and 16 hex digits
    of the SHA-256 of the sorted MAC addresses; else ``"host-"`` and 16 hex
    digits of the SHA-256 of the host name.
    """
    summary = hardware_summary(dispatcher)
    system_uuid = _real_uuid(summary.get("uuid"))
    if system_uuid:
        return system_uuid
    if summary["macs"]:
        digest = hashlib.sha256(",".join(summary["macs"]).encode())
        return "mac-" + digest.hexdigest()[:16]
    LOG.warning("no DMI UUID and no MAC address: agent id from host name")
    digest = hashlib.sha256(socket.gethostname().encode())
    return "host-" + digest.hexdigest()[:16]


def dispatch_table(dispatcher):
    """``{interface method: [manager names]}`` in dispatch order, for every
    interface method: the managers whose class implements it rather than
    declining by default (:func:`teeth_agent.hardware.implements`; an
    empty list when none does)."""
    return {method: dispatcher.implementers(method)
            for method in hardware.INTERFACE_METHODS}


def configured_hints(conf):
    """``[hardware] root_device_hints`` as a dict (empty when unset).

    Raises :class:`~teeth_agent.hardware.base.HardwareManagerError` when
    the option is not a JSON object.
    """
    text = conf.hardware.root_device_hints
    if not text or not text.strip():
        return {}
    try:
        hints = json.loads(text)
    except ValueError as exc:
        raise base.HardwareManagerError(
            "[hardware] root_device_hints is not valid JSON: %s" % exc)
    if not isinstance(hints, dict):
        raise base.HardwareManagerError(
            "[hardware] root_device_hints must be a JSON object")
    return hints


def choose_install_device(dispatcher, conf, hints=None):
    """The ``BlockDevice`` (with ``eligible``/``ineligible_reason``) the OS
    image goes to.

    ``hints`` from the command are merged over ``[hardware]
    root_device_hints`` (the command wins key by key) and passed to the
    managers' ``get_os_install_device``. The answer is re-checked against
    the safety rules whatever manager gave it.

    Raises :class:`~teeth_agent.hardware.base.HardwareManagerError` when
    no device fits, and
    :class:`~teeth_agent.hardware.safety.DeviceNotEligible` when a manager
    chose a device the agent must not write.
    """
    merged = configured_hints(conf)
    merged.update(hints or {})
    device = _shape(dispatcher.dispatch("get_os_install_device", merged),
                    DISK_FIELDS)
    eligible, reason = safety.eligibility(device, conf)
    if not eligible:
        raise safety.DeviceNotEligible(device["path"], reason)
    device["eligible"] = True
    device["ineligible_reason"] = None
    LOG.info("install device %s chosen with hints %s", device["path"],
             merged)
    return device
