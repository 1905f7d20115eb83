"""UEFI firmware state and boot entries: reading them, parsing efibootmgr.

Two halves, both used by the generic manager and the ``standbye``/``decom``
command groups:

- the boot state of the running ramdisk, read below the sysfs root the
  hardware manager already uses (tests point it at a faked tree): UEFI when
  ``firmware/efi`` exists, Secure Boot and Setup Mode from their EFI
  variables (4 attribute bytes, then the value), the kernel's lockdown
  mode from ``kernel/security/lockdown``;
- boot entries: :func:`parse_efibootmgr` turns ``efibootmgr -v`` output of
  the versions in use (0.x, 14-17, 18) into plain dicts, and
  :func:`stale_entries` decides which entries earlier images left. The
  commands that change NVRAM (:func:`create_entry`, :func:`delete_entry`,
  :func:`set_boot_order`, :func:`set_boot_next`) are called by the generic
  manager only, so a vendor manager may replace each of them.

The parser never trusts what it reads: labels are cut and stripped of
control characters, at most :data:`MAX_ENTRIES` entries are read, and a
line it does not understand is skipped, never guessed at.
"""

import logging
import os
import re

from teeth_agent import processes

LOG = logging.getLogger(__name__)

#: The EFI global variable vendor GUID (UEFI spec, EFI_GLOBAL_VARIABLE).
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
UEFI = "uefi"
BIOS = "bios"
BOOT_MODES = (UEFI, BIOS)
LOCKDOWN_MODES = ("none", "integrity", "confidentiality")

#: Largest EFI variable file read for a boolean (attributes + value).
_MAX_VARIABLE = 64
#: Largest ``efibootmgr`` output parsed; NVRAM holds well under 1 MiB.
MAX_OUTPUT = 4 * 1024 * 1024
#: Most boot entries read from one listing.
MAX_ENTRIES = 512
#: Longest label kept (UEFI does not bound it; firmware menus show ~40).
MAX_LABEL = 128

# Device path nodes that say where an entry boots from. An entry whose
# path goes through a network or SAN node (PXE, HTTP boot, iSCSI, Fibre
# Channel, NVMe over Fabrics, InfiniBand, ...) boots something the
# firmware or the operator set up, even when a disk node (the LUN's
# partition) follows: it is never counted as a disk of this machine.
# efivar prints Fibre Channel Ex as "Fibre(" too, and a messaging node it
# does not know (NVMe over Fabrics among them) as "Msg(subtype,hex)": such
# an entry cannot be told from a SAN boot, so it is not touched either.
_NETWORK_NODES = ("MAC", "IPv4", "IPv6", "Uri", "Dns", "iSCSI", "Fibre",
                  "FibreEx", "NVMeoF", "Infiniband", "WiFi", "Wi-Fi",
                  "Bluetooth", "BluetoothLE", "Vlan", "Msg")
# A node name (any case) starts the path or follows "/" (efibootmgr >=
# 14), the ")" of the node before (0.x prints no separator) or a space.
_NETWORK = re.compile(r"(?:^|[/)\s])(?:%s)\("
                      % "|".join(re.escape(n) for n in _NETWORK_NODES),
                      re.IGNORECASE)
_FIRMWARE_NODES = ("FvVol(", "FvFile(", "Fv(", "VenHw(", "MemoryMapped(",
                   "BBS(")
_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})(\*|\s)\s?(.*)$")
# efibootmgr 0.x-17 separate the label from the device path with a tab;
# some builds print a space instead, so the device path is also found by
# its first node.
_PATH_START = re.compile(
    r"\s((?:HD|PciRoot|Pci|Acpi|ACPI|PcieRoot|FvVol|FvFile|Fv|VenHw|VenMsg|"
    r"VenMedia|MemoryMapped|BBS|USB|Sata|Scsi|NVMe|MAC|Uri|CDROM|File|"
    r"UsbClass|Ata|Floppy|Unknown|Msg)\(.*)$")
# HD(part,GPT,guid,start,size), HD(part,MBR,0xsig,start,size), and the
# 0.x form HD(part,start,size,guid).
_HD = re.compile(
    r"HD\((?P<part>[0-9a-fA-Fx]+),(?:(?P<kind>GPT|MBR|SIG[^,]*),"
    r"(?P<sig>[^,)]+),[^,)]+,[^,)]+|[^,)]+,[^,)]+,(?P<oldguid>[^,)]+))\)")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                   r"[0-9a-f]{12}$")
# The loader after the disk node: File(\EFI\x\y.efi) (<= 17) or
# /\EFI\x\y.efi (18).
_FILE = re.compile(r"(?:File\(([^)]*)\)|/(\\[^/]*?)(?=$|/|\{|\s|N\.\.))")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EfiError(Exception):
    """The firmware's boot entries cannot be read or changed."""


class NotUefi(EfiError):
    """The ramdisk was not booted in UEFI mode: there is no NVRAM to use."""


# -- the boot state -----------------------------------------------------------

def read_efi_bool(sysfs_root, name, guid=EFI_GLOBAL_GUID):
    """The boolean EFI variable ``name``: True, False or None (absent or
    unreadable). The file holds 4 attribute bytes, then the value."""
    path = os.path.join(sysfs_root, "firmware", "efi", "efivars",
                        "%s-%s" % (name, guid))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        LOG.debug("cannot read EFI variable %s: %s", name, exc)
        return None
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(_MAX_VARIABLE)
    if len(data) != 5 or data[4] not in (0, 1):
        LOG.debug("EFI variable %s holds %d bytes, not a boolean", name,
                  len(data))
        return None
    return data[4] == 1


def parse_lockdown(text):
    """The active mode in ``kernel/security/lockdown`` text (``none
    [integrity] confidentiality``), or None."""
    if not text:
        return None
    match = re.search(r"\[(\w+)\]", text)
    if match and match.group(1) in LOCKDOWN_MODES:
        return match.group(1)
    return None


def read_lockdown(sysfs_root):
    path = os.path.join(sysfs_root, "kernel", "security", "lockdown")
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return parse_lockdown(stream.read(256))
    except OSError as exc:
        LOG.debug("cannot read %s: %s", path, exc)
        return None


def boot_state(sysfs_root):
    """``{"boot_mode" ("uefi"|"bios"), "secure_boot", "setup_mode"
    (bool or None), "lockdown" ("none"|"integrity"|"confidentiality" or
    None)}`` of the running system."""
    uefi = os.path.isdir(os.path.join(sysfs_root, "firmware", "efi"))
    return {"boot_mode": UEFI if uefi else BIOS,
            "secure_boot": read_efi_bool(sysfs_root, "SecureBoot")
            if uefi else False,
            "setup_mode": read_efi_bool(sysfs_root, "SetupMode")
            if uefi else None,
            "lockdown": read_lockdown(sysfs_root)}


def signed_load_required(state):
    """Whether a kexec must use ``kexec_file_load`` (``kexec -s``): the
    kernel is locked down or Secure Boot is on (either refuses the
    unchecked ``kexec_load``)."""
    return bool(state.get("secure_boot")) or \
        state.get("lockdown") not in (None, "none")


# -- efibootmgr output --------------------------------------------------------

def clean_label(text, limit=MAX_LABEL):
    """``text`` without control characters, whitespace folded, cut to
    ``limit`` characters."""
    return " ".join(_CONTROL.sub(" ", text or "").split())[:limit]


def _entry_kind(path, hd):
    # Only the nodes before the disk node count: a loader's file name
    # ("File(\\EFI\\x\\MAC(.efi)") cannot make a disk entry a network one.
    if _NETWORK.search(path if hd is None else path[:hd.start()]):
        return "network"
    if hd is not None:
        return "disk"
    if any(path.startswith(node) or "/" + node in path
           for node in _FIRMWARE_NODES):
        return "firmware"
    return "other"


def _parse_path(path):
    hd = _HD.search(path)
    partition_uuid = mbr_signature = partition = None
    if hd is not None:
        try:
            partition = int(hd.group("part"), 0)
        except ValueError:
            partition = None
        kind = hd.group("kind")
        if kind == "GPT" or hd.group("oldguid"):
            guid = (hd.group("sig") if kind else hd.group("oldguid")).lower()
            partition_uuid = guid if _GUID.match(guid) else None
        elif kind == "MBR":
            mbr_signature = hd.group("sig").lower()
    loader = None
    if hd is not None:
        found = _FILE.search(path, hd.end())
        if found:
            loader = clean_label(found.group(1) or found.group(2), 512)
    return {"kind": _entry_kind(path, hd), "partition": partition,
            "partition_uuid": partition_uuid, "mbr_signature": mbr_signature,
            "loader": loader or None}


def _split_label(rest):
    if "\t" in rest:
        label, _, path = rest.partition("\t")
        return label, path.strip()
    match = _PATH_START.search(rest)
    if match:
        return rest[:match.start()], match.group(1).strip()
    return rest, ""


def parse_efibootmgr(text):
    """The boot configuration in ``efibootmgr -v`` output.

    Returns ``{"boot_current", "boot_next", "timeout" (int or None),
    "boot_order" (list of 4-digit upper-case hex), "entries": [{"entry",
    "label", "active", "device_path", "kind" ("disk"|"network"|"firmware"|
    "other"), "partition", "partition_uuid" (lower case or None),
    "mbr_signature", "loader"}]}``. Lines it does not know (``dp:`` and
    ``data:`` of version 18, warnings) are skipped.
    """
    config = {"boot_current": None, "boot_next": None, "timeout": None,
              "boot_order": [], "entries": []}
    for line in (text or "")[:MAX_OUTPUT].splitlines():
        key, sep, value = line.partition(":")
        value = value.strip()
        if sep and key == "BootCurrent":
            config["boot_current"] = _number(value)
        elif sep and key == "BootNext":
            config["boot_next"] = _number(value)
        elif sep and key == "Timeout":
            match = re.match(r"^(\d+)", value)
            config["timeout"] = int(match.group(1)) if match else None
        elif sep and key == "BootOrder":
            order = [_number(part) for part in value.split(",")]
            config["boot_order"] = [n for n in order if n][:MAX_ENTRIES]
        else:
            match = _ENTRY.match(line)
            if match is None or len(config["entries"]) >= MAX_ENTRIES:
                continue
            label, path = _split_label(match.group(3))
            entry = {"entry": match.group(1).upper(),
                     "label": clean_label(label),
                     "active": match.group(2) == "*",
                     "device_path": clean_label(path, 4096)}
            entry.update(_parse_path(path))
            config["entries"].append(entry)
    return config


def _number(text):
    text = text.strip()
    return text.upper() if re.match(r"^[0-9A-Fa-f]{4}$", text) else None


def mbr_key(signature):
    """The disk identifier of an MBR disk as the boot entry policy
    compares it: ``"mbr:"`` and 8 lower-case hex digits, from ``0x1abcd``
    (efibootmgr prints no leading zeros), ``0x0001ABCD`` (sfdisk) or an
    int; None for anything else."""
    if isinstance(signature, int) and not isinstance(signature, bool):
        value = signature
    elif isinstance(signature, str) and \
            re.match(r"^(0x)?[0-9a-fA-F]{1,8}$", signature.strip()):
        value = int(signature.strip(), 16)
    else:
        return None
    if not 0 <= value <= 0xFFFFFFFF:
        return None
    return "mbr:%08x" % value


def disk_id(value):
    """``value`` (a GPT partition UUID or an :func:`mbr_key`) as the
    policy compares it, or None."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    if value.startswith("mbr:"):
        return mbr_key(value[4:])
    return value if _GUID.match(value) else None


def entry_key(entry):
    """What a disk entry boots, as compared with the disks' identifiers:
    its GPT partition UUID, or the :func:`mbr_key` of the MBR disk
    identifier (an MBR partition is found by the disk's signature and
    the partition's number). None for network, firmware and other
    entries, and for a disk node the parser could not read."""
    if entry.get("kind") != "disk":
        return None
    if entry.get("partition_uuid"):
        return disk_id(entry["partition_uuid"])
    if entry.get("mbr_signature"):
        return mbr_key(entry["mbr_signature"])
    return None


def _ids(values):
    return {key for key in (disk_id(value) for value in values or ())
            if key}


def stale_entries(config, writable_ids, known_ids, keep=()):
    """The disk entries of ``config`` that an earlier image or tenant
    left: those booting a disk the agent may write (``writable_ids``),
    and those booting a disk no disk of this machine matches
    (``known_ids``: the identifiers of every disk the agent sees,
    writable or not; None when a disk could not be read, and then no
    entry counts as dangling). Identifiers are GPT partition UUIDs and,
    for MBR disks, the :func:`mbr_key` of the disk identifier. Entries
    numbered in ``keep``, network (whatever disk node follows: an iSCSI
    or other SAN boot), firmware (setup, shell, boot manager) and other
    entries are never listed, nor an entry for a disk the agent must not
    write."""
    writable = _ids(writable_ids)
    known = None if known_ids is None else _ids(known_ids) | writable
    stale = []
    for entry in config["entries"]:
        key = entry_key(entry)
        if key is None or entry["entry"] in keep:
            continue
        if key in writable or (known is not None and key not in known):
            stale.append(entry)
    return stale


def entries_for(config, ids):
    """The disk entries of ``config`` booting one of ``ids`` (GPT
    partition UUIDs and :func:`mbr_key` identifiers)."""
    wanted = _ids(ids)
    return [entry for entry in config["entries"]
            if entry_key(entry) in wanted and entry_key(entry) is not None]


def order_first(order, first):
    """``order`` with ``first`` at its head, each entry once."""
    result = [first]
    for number in order:
        if number not in result:
            result.append(number)
    return result


# -- efibootmgr commands (used by the generic manager) ------------------------

def _efibootmgr(*args):
    try:
        out, _ = processes.execute("efibootmgr", *args, timeout=120,
                                   log_level=logging.INFO)
    except processes.ToolNotFound:
        raise
    except processes.ProcessError as exc:
        # The ProcessError names the command and its stderr already.
        raise EfiError("the firmware's boot entries could not be read or "
                       "changed: %s" % exc) from exc
    return out


def read_entries(sysfs_root):
    """The parsed ``efibootmgr -v`` listing; raises :class:`NotUefi`
    outside UEFI and :class:`EfiError` when efibootmgr fails."""
    if not os.path.isdir(os.path.join(sysfs_root, "firmware", "efi")):
        raise NotUefi("the agent was not booted in UEFI mode, so it cannot "
                      "read or change UEFI boot entries")
    return parse_efibootmgr(_efibootmgr("-v"))


def create_entry(sysfs_root, disk, partition, loader, label):
    """Create a boot entry for ``loader`` on partition ``partition`` of
    ``disk``; returns its number. efibootmgr puts a new entry first in
    BootOrder; the caller sets the order it wants anyway."""
    before = {e["entry"] for e in read_entries(sysfs_root)["entries"]}
    _efibootmgr("-q", "-c", "-d", disk, "-p", str(partition), "-L", label,
                "-l", loader)
    after = read_entries(sysfs_root)
    new = [e for e in after["entries"] if e["entry"] not in before]
    if len(new) != 1:
        raise EfiError("efibootmgr created %d boot entries for %s, not one"
                       % (len(new), loader))
    return new[0]["entry"]


def delete_entry(entry):
    _efibootmgr("-q", "-b", entry, "-B")


def set_boot_order(order):
    _efibootmgr("-q", "-o", ",".join(order))


def set_boot_next(entry):
    _efibootmgr("-q", "-n", entry)
