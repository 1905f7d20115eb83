"""Erasing block devices: methods, capability probing, erase, verification.

The generic hardware manager delegates ``get_erase_capabilities`` and
``erase_block_device`` here (:func:`get_capabilities`, :func:`erase_device`).
The ``decom`` extension also uses the device-independent steps around an
erase: :func:`write_markers` before it, :func:`wipe_signatures` and
:func:`verify_erased` after it, so that what a (possibly vendor) manager
did is checked by reading the device back.

Method names are public: they appear in ``[decom] erase_methods``, in the
``method`` parameter of ``decom.disk_erase`` and in its result.

Device-level methods are decided from the state the device reports
(``nvme id-ctrl``, ``hdparm -I``, ``sg_opcodes``), never from a tool's exit
status alone: some drives (qemu's ATA disk among them) reject a security
command while ``hdparm`` exits 0.
"""

import logging
import re
import time

from teeth_agent.disk import blockdev
from teeth_agent.hardware import base
from teeth_agent.hardware.erase import ata
from teeth_agent.hardware.erase import catalogue
from teeth_agent.hardware.erase import identity
from teeth_agent.hardware.erase import nvme
from teeth_agent.hardware.erase import overwrite as erase_overwrite
from teeth_agent.hardware.erase import polling
from teeth_agent.hardware.erase import scsi
from teeth_agent import processes

# Re-exported so that callers keep using ``erase.<name>``.
ATA_PASSWORD_BYTES = ata.ATA_PASSWORD_BYTES
AtaPasswordStore = ata.AtaPasswordStore
AtaState = ata.AtaState
parse_hdparm_identify = ata.parse_hdparm_identify
parse_hdparm_sanitize_status = ata.parse_hdparm_sanitize_status
Capabilities = catalogue.Capabilities
CATEGORIES = catalogue.CATEGORIES
category_rank = catalogue.category_rank
CLEAR = catalogue.CLEAR
DEFAULT_METHOD_ORDER = catalogue.DEFAULT_METHOD_ORDER
EraseError = catalogue.EraseError
EraseMethod = catalogue.EraseMethod
KNOWN_METHODS = catalogue.KNOWN_METHODS
METHODS = catalogue.METHODS
MIB = catalogue.MIB
PURGE = catalogue.PURGE
strongest_first = catalogue.strongest_first
agent_version = identity.agent_version
device_identity = identity.device_identity
tool_of = identity.tool_of
tool_version = identity.tool_version
NamespaceResetError = nvme.NamespaceResetError
nvme_controller_of = nvme.controller_of
nvme_controller_namespaces = nvme.controller_namespaces
parse_nvme_id_ctrl = nvme.parse_nvme_id_ctrl
parse_nvme_sanitize_log = nvme.parse_nvme_sanitize_log
_marker_offsets = erase_overwrite._marker_offsets
overwrite = erase_overwrite.overwrite
verify_erased = erase_overwrite.verify_erased
wipe_signatures = erase_overwrite.wipe_signatures
write_markers = erase_overwrite.write_markers
_poll = polling._poll
STALL_TIMEOUT = polling.STALL_TIMEOUT
parse_sg_opcodes = scsi.parse_sg_opcodes
parse_sg_requests = scsi.parse_sg_requests

LOG = logging.getLogger(__name__)


def device_family(device):
    """The family of erase methods ``device`` may support.

    ``"nvme"``, ``"sd"`` (ATA or SCSI, told apart by probing) or None for
    devices only the agent's overwrite can erase (loop, virtio, md).
    """
    name = catalogue._device_name(device)
    if re.fullmatch(r"nvme\d+n\d+", name):
        return "nvme"
    if re.fullmatch(r"(sd|hd)[a-z]+", name):
        return "sd"
    return None


def get_capabilities(manager, device):
    """Return the :class:`Capabilities` of ``device`` (a ``BlockDevice``).

    ``overwrite`` is supported by every writable device. Tools that are
    missing or fail make their methods unsupported, with the reason.
    """
    supported = set()
    unsupported = {}
    family = device_family(device)
    path = device["path"]
    probes = {"nvme": nvme._probe_nvme, "sd": ata._probe_sd}
    if family in probes:
        try:
            found, reasons = probes[family](manager, device)
        except processes.ToolNotFound as exc:
            found, reasons = set(), {None: str(exc)}
        except (processes.ProcessError, ValueError) as exc:
            found, reasons = set(), {None: "probing failed: %s" % exc}
        supported |= found
        unsupported.update(reasons)
    if device.get("read_only"):
        unsupported["overwrite"] = "the device is read-only"
    else:
        supported.add("overwrite")
    generic_reason = unsupported.pop(None, None)
    for name, method in catalogue.METHODS.items():
        if name in supported or name in unsupported:
            continue
        if generic_reason:
            unsupported[name] = generic_reason
        elif method.family == "nvme":
            unsupported[name] = "%s is not an NVMe namespace" % path
        elif method.family == "ata":
            unsupported[name] = "%s is not an ATA device" % path
        elif method.family == "scsi":
            unsupported[name] = "%s is not a SCSI device" % path
    capabilities = catalogue.Capabilities(
        [name for name in catalogue.METHODS if name in supported],
        {name: reason for name, reason in unsupported.items()
         if name not in supported})
    LOG.info("erase capabilities of %s: %s", path,
             ", ".join(capabilities) or "none")
    return capabilities


def erase_device(manager, device, method, progress):
    """Erase ``device`` with ``method``.

    Returns ``{"method", "nist_category", "bytes", "details", "tool",
    "tool_version"}`` (the tool that erased and the version it reports,
    None when unknown).

    ``progress(done, total)`` is called as bytes are erased (device-level
    methods report the device's own progress scaled to its size). Raises
    :class:`base.IncompatibleHardwareMethodError` for a method name this
    module does not know and :class:`EraseError` when the erase fails.
    """
    info = catalogue.METHODS.get(method)
    if info is None:
        raise base.IncompatibleHardwareMethodError(
            "unknown erase method %s" % method)
    path = device["path"]
    started = time.monotonic()
    LOG.info("erasing %s with %s", path, method)
    try:
        if info.family == "overwrite":
            size = erase_overwrite.overwrite(
                path, progress, block_size=polling._conf_value(
                    manager, "erase_block_size",
                    erase_overwrite._DEFAULT_BLOCK_SIZE))
            details = {}
        else:
            size = device.get("size_bytes") or blockdev.device_size(path)
            runner = {"nvme": nvme._erase_nvme, "ata": ata._erase_ata,
                      "scsi": scsi._erase_scsi}[info.family]
            details = runner(manager, device, method, size, progress) or {}
            progress(size, size)
    except (processes.ProcessError, OSError, ValueError) as exc:
        raise catalogue.EraseError(
            "%s failed on %s: %s" % (method, path, exc)) from exc
    LOG.info("erased %s with %s in %.1fs", path, method,
             time.monotonic() - started)
    tool = identity.tool_of(method)
    return {"method": method, "nist_category": info.nist_category,
            "bytes": size, "details": details, "tool": tool,
            "tool_version": identity.tool_version(tool)}
