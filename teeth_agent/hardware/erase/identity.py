"""Who erased what: a device's identity and the tool (and its version)
behind each erase method, for the erase evidence record.

Identity comes from the ``BlockDevice`` the managers listed (serial, model,
WWN, size, sector size) and sysfs (firmware revision: ``firmware_rev`` of an
NVMe controller, ``rev`` of a SCSI or ATA device). Tool versions are asked
of the tools themselves (``nvme version``, ``hdparm -V``,
``sg_sanitize --version``); a tool that cannot say is ``None``, never a
guess.
"""

import os
import re

from teeth_agent.hardware.erase import catalogue
from teeth_agent.hardware.erase import polling
from teeth_agent import processes


#: The tool of each method family, as the evidence names it. sg3_utils
#: prints no package version, only each program's own, so SCSI names the
#: program that erases.
TOOLS = {"nvme": "nvme-cli", "ata": "hdparm", "scsi": "sg3_utils sg_sanitize",
         "overwrite": "teeth-agent"}

_VERSION_COMMANDS = {"nvme-cli": ("nvme", "version"),
                     "hdparm": ("hdparm", "-V"),
                     "sg3_utils sg_sanitize": ("sg_sanitize", "--version")}

#: The identity fields of an evidence record, from a ``BlockDevice``.
IDENTITY_FIELDS = ("serial", "model", "wwn", "size_bytes",
                   "logical_sector_size")


def agent_version():
    """The installed teeth-agent version, or ``"unknown"``."""
    try:
        from importlib import metadata
        return metadata.version("teeth-agent")
    except Exception:
        # Running from a source tree that was never installed.
        return "unknown"


def parse_tool_version(tool, text):
    """The version in the output of a tool's version command, or None.

    ``nvme version 2.3 (git 2.3)`` gives ``2.3``, ``hdparm v9.65`` gives
    ``9.65``, ``sg_sanitize: version: 1.15 20201223`` gives ``1.15
    20201223``.
    """
    if tool == "nvme-cli":
        match = re.search(r"^nvme version\s+v?(\d[\w.+\-]*)", text, re.M)
    elif tool == "hdparm":
        match = re.search(r"hdparm\s+v?(\d[\w.+\-]*)", text)
    else:
        match = re.search(r"version:?\s+(\d[\w.]*(?:\s+\d{8})?)", text)
    return match.group(1) if match else None


def tool_version(tool):
    """The version ``tool`` (a value of :data:`TOOLS`) reports, the agent's
    own for ``teeth-agent``, None when it cannot be found out."""
    if tool == "teeth-agent":
        return agent_version()
    argv = _VERSION_COMMANDS.get(tool)
    if argv is None:
        return None
    try:
        _, out, err = processes.run(*argv, timeout=30)
    except processes.ProcessError:
        return None
    return parse_tool_version(tool, (out or "") + "\n" + (err or ""))


def tool_of(method):
    """The tool that runs ``method`` (a known method name), or None."""
    info = catalogue.METHODS.get(method)
    return TOOLS.get(info.family) if info else None


def firmware_revision(manager, device):
    """The firmware revision sysfs reports for ``device``, or None."""
    sysfs = polling._conf_value(manager, "sysfs_root", "/sys",
                                group="hardware")
    name = catalogue._device_name(device)
    parent = os.path.join(sysfs, "class", "block", name, "device")
    for attribute in ("firmware_rev", "rev"):
        try:
            with open(os.path.join(parent, attribute), encoding="utf-8",
                      errors="replace") as stream:
                value = stream.read(256).strip()
        except OSError:
            continue
        if value:
            return value
    return None


def device_identity(manager, device):
    """``{serial, model, wwn, firmware, size_bytes, logical_sector_size}``
    of ``device`` (a ``BlockDevice``); unknown values are None."""
    found = {field: device.get(field) for field in IDENTITY_FIELDS}
    found["firmware"] = firmware_revision(manager, device)
    return found
