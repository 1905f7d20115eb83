"""Who erased what: a device's identity and the tool (and its version)
behind each erase method, for the erase evidence record.

Identity comes from the ``BlockDevice`` the managers listed (serial, model,
WWN, size, sector size) and sysfs (firmware revision: ``firmware_rev`` of an
NVMe controller; for a libata disk the 8 characters of the ATA IDENTIFY data
the kernel keeps in ``ata_device/devX.Y/id``, since ``rev`` holds only 4 of
them; ``rev`` of a SCSI device). Tool versions are asked
of the tools themselves (``nvme version``, ``hdparm -V``,
``sg_sanitize --version``); a tool that cannot say is ``None``, never a
guess.
"""

import glob
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


#: The words of an ATA IDENTIFY DEVICE string (ACS-4 7.13.6): serial
#: number 10-19, firmware revision 23-26.
ATA_SERIAL_WORDS = (10, 20)
ATA_FIRMWARE_WORDS = (23, 27)
ATA_IDENTIFY_WORDS = 256


def parse_ata_identify(text):
    """The 256 words of an ATA IDENTIFY DEVICE block as libata prints it
    in sysfs ``ata_device/devX.Y/id`` (four hex digits a word, eight words
    a line), or None when ``text`` is not that."""
    fields = (text or "").split()
    if len(fields) != ATA_IDENTIFY_WORDS or not all(
            re.fullmatch(r"[0-9a-fA-F]{4}", field) for field in fields):
        return None
    return [int(field, 16) for field in fields]


def ata_string(words, span):
    """The ATA string in ``words[span[0]:span[1]]`` (two characters a
    word, the first in the high byte), stripped; None when empty or not
    printable ASCII."""
    raw = bytes(byte for word in words[span[0]:span[1]]
                for byte in (word >> 8, word & 0xFF))
    if any(byte < 0x20 or byte > 0x7E for byte in raw):
        return None
    return raw.decode("ascii").strip() or None


def _ata_identify(parent, serial):
    """The IDENTIFY words of the libata device behind ``parent`` (the
    block device's sysfs ``device``), or None.

    The ATA port is the ``ataN`` directory above the SCSI device; its
    ``link*/dev*/ata_device/dev*/id`` hold the IDENTIFY data of the
    devices on it. One of several (a port multiplier, a PATA slave) is
    chosen by the serial number in it; without a serial to compare, only
    a port with a single device gives an answer.
    """
    real = os.path.realpath(parent)
    parts = real.split(os.sep)
    ports = [index for index, part in enumerate(parts)
             if re.fullmatch(r"ata\d+", part)]
    if not ports:
        return None
    port = os.sep.join(parts[:ports[-1] + 1])
    found = []
    for path in sorted(glob.glob(os.path.join(
            glob.escape(port), "link*", "dev*", "ata_device", "dev*", "id"))):
        try:
            with open(path, encoding="ascii", errors="replace") as stream:
                words = parse_ata_identify(stream.read(8192))
        except OSError:
            continue
        if words is not None:
            found.append(words)
    if _serial_key(serial):
        # udev writes the serial's inner spaces as "_".
        wanted = _serial_key(serial)
        found = [words for words in found
                 if _serial_key(ata_string(words, ATA_SERIAL_WORDS))
                 == wanted]
    return found[0] if len(found) == 1 else None


def _serial_key(serial):
    return re.sub(r"[\s_]+", "", serial or "")


def firmware_revision(manager, device):
    """The firmware revision sysfs reports for ``device``, or None.

    An ATA disk on libata gets the full revision from its IDENTIFY data
    (``rev``, the SCSI INQUIRY revision libata makes up, holds only its
    last 4 characters); anything else, and an ATA disk whose IDENTIFY data
    sysfs does not show (behind a SAS HBA), gets ``firmware_rev`` or
    ``rev``.
    """
    sysfs = polling._conf_value(manager, "sysfs_root", "/sys",
                                group="hardware")
    name = catalogue._device_name(device)
    parent = os.path.join(sysfs, "class", "block", name, "device")
    words = _ata_identify(parent, device.get("serial"))
    if words is not None:
        revision = ata_string(words, ATA_FIRMWARE_WORDS)
        if revision:
            return revision
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
