"""Which block devices the agent may write to: rules no manager overrides.

Hardware managers describe devices; this module decides. The rules, in the
order they are applied by :func:`eligibility`:

1. ``[hardware] device_include`` / ``device_exclude`` glob patterns (matched
   with :func:`fnmatch.fnmatchcase` against the device path);
2. a read-only device is never written;
3. the device holding the agent's own root filesystem is never written;
4. a device that is mounted or used as swap (itself, one of its
   partitions, or anything stacked on it: dm, md, LVM, recursively) is never
   written;
5. a loop device backed by a block device is that device: it is written
   only when the backing device may be (rules 1-4, recursively), and a
   device that backs a loop device counts the loop's mounts as its own.

Rules 2-4 are intrinsic: no option and no command from the server turns them
off. :func:`ensure_writable` re-checks a device live, right before a write,
reading sysfs and mountinfo itself rather than trusting a manager's answer.
"""

import collections
import fnmatch
import logging
import os
import stat

from teeth_agent.hardware import sysfs

LOG = logging.getLogger(__name__)

SWAP_MOUNTPOINT = "[SWAP]"

#: One line of ``/proc/self/mountinfo``: ``devnum`` is ``"major:minor"``.
Mount = collections.namedtuple("Mount",
                               ["devnum", "mountpoint", "fstype", "source"])


#: Why a device is refused, as one word a program can act on
#: (:attr:`DeviceNotEligible.kind`, ``decom.disk_erase`` results).
EXCLUDED = "excluded"
READ_ONLY = "read_only"
AGENT_ROOT = "agent_root"
MOUNTED = "mounted"
HOLDER = "holder"
SWAP = "swap"
UNKNOWN = "unknown"
NOT_FOUND = "not_found"


class DeviceNotEligible(Exception):
    """The agent refuses to write to ``path``; ``reason`` says why.

    ``kind`` is one of the words above (:data:`MOUNTED`, ...).
    """

    def __init__(self, path, reason, kind=UNKNOWN):
        self.path = path
        self.reason = reason
        self.kind = kind
        super().__init__("refusing to write to %s: %s" % (path, reason))


def _unescape_mountinfo(field):
    # The kernel escapes space, tab, newline and backslash as \ooo octal.
    out = []
    index = 0
    while index < len(field):
        chunk = field[index:index + 4]
        if (len(chunk) == 4 and chunk[0] == "\\"
                and all(c in "01234567" for c in chunk[1:])):
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def read_mounts(conf):
    """Every mount of the agent's mount namespace, as :class:`Mount`.

    Reads ``<procfs_root>/self/mountinfo``; an unreadable file gives None
    (logged), never an empty list: not knowing the mounts must not look
    like "nothing is mounted".
    """
    path = os.path.join(conf.hardware.procfs_root, "self", "mountinfo")
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError as exc:
        LOG.warning("cannot read %s: %s", path, exc)
        return None
    mounts = []
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 3 or len(fields) < 5:
            continue
        mounts.append(Mount(devnum=fields[2],
                            mountpoint=_unescape_mountinfo(fields[4]),
                            fstype=fields[separator + 1],
                            source=_unescape_mountinfo(fields[separator + 2])))
    return mounts


def read_swaps(conf):
    """Paths listed as active swap in ``<procfs_root>/swaps``."""
    path = os.path.join(conf.hardware.procfs_root, "swaps")
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()[1:]
    except OSError as exc:
        LOG.debug("cannot read %s: %s", path, exc)
        return []
    return [_unescape_mountinfo(line.split()[0]) for line in lines
            if line.split()]


#: How many loop devices deep a backing chain is followed.
_MAX_LOOP_DEPTH = 8


class BackingUnknown(Exception):
    """What backs a loop device cannot be found out."""


def loop_backing(name, conf):
    """The kernel name of the block device backing the loop device
    ``name``, or None when ``name`` is no loop device or is backed by a
    regular file.

    Reads ``<sysfs>/class/block/<name>/loop/backing_file`` and stats that
    file: a block device node is mapped to its kernel name through
    ``<sysfs>/dev/block/<major>:<minor>``. Raises :class:`BackingUnknown`
    when the loop device has a backing file that cannot be looked at.
    """
    block = os.path.join(conf.hardware.sysfs_root, "class", "block")
    loop_dir = os.path.join(block, name, "loop")
    if not os.path.exists(os.path.join(loop_dir, "backing_file")):
        # No loop device, or one with nothing attached.
        return None
    backing = sysfs.read_text(os.path.join(loop_dir, "backing_file"))
    if backing is None:
        raise BackingUnknown("its backing file cannot be read from sysfs")
    try:
        info = os.stat(backing)
    except OSError as exc:
        raise BackingUnknown("its backing file %s cannot be looked at: %s"
                             % (backing, exc.strerror or exc)) from None
    if not stat.S_ISBLK(info.st_mode):
        return None
    link = os.path.join(conf.hardware.sysfs_root, "dev", "block", "%d:%d" % (
        os.major(info.st_rdev), os.minor(info.st_rdev)))
    if not os.path.exists(link):
        raise BackingUnknown("its backing device %s is not in sysfs"
                             % backing)
    return os.path.basename(os.path.realpath(link))


def _loops_backed_by(names, conf):
    """Loop devices whose backing device is one of ``names``."""
    block = os.path.join(conf.hardware.sysfs_root, "class", "block")
    found = []
    for entry in sysfs.listdir(block):
        if not entry.startswith("loop"):
            continue
        try:
            backing = loop_backing(entry, conf)
        except BackingUnknown:
            continue
        if backing in names:
            found.append(entry)
    return found


def device_stack(name, conf):
    """The kernel names a write to ``name`` would affect.

    Returns ``{kernel name: "major:minor" or None}`` for the device, its
    partitions, and everything stacked on any of them (``holders/``, and
    loop devices backed by one of them, which sysfs does not list as
    holders), recursively; for a loop device, also the device backing it.
    """
    block = os.path.join(conf.hardware.sysfs_root, "class", "block")
    stack = {}
    pending = [name]
    while pending:
        current = pending.pop()
        if current in stack:
            continue
        directory = os.path.join(block, current)
        stack[current] = sysfs.read_text(os.path.join(directory, "dev"))
        for entry in sysfs.listdir(directory):
            if os.path.exists(os.path.join(directory, entry, "partition")):
                pending.append(entry)
        pending.extend(sysfs.listdir(os.path.join(directory, "holders")))
        try:
            backing = loop_backing(current, conf)
        except BackingUnknown:
            backing = None  # ensure_writable refuses such a loop itself
        if backing is not None:
            pending.append(backing)
        if not pending:
            pending.extend(entry for entry in _loops_backed_by(stack, conf)
                           if entry not in stack)
    return stack


def _source_aliases(names, conf):
    aliases = set()
    block = os.path.join(conf.hardware.sysfs_root, "class", "block")
    for name in names:
        for dev_dir in {"/dev", conf.hardware.dev_root}:
            aliases.add(os.path.join(dev_dir, name))
            mapped = sysfs.read_text(os.path.join(block, name, "dm", "name"))
            if mapped:
                aliases.add(os.path.join(dev_dir, "mapper", mapped))
    return aliases


def device_usage(name, conf):
    """How the device ``name`` (a kernel name such as ``sda``) is in use now.

    Returns ``{"mountpoints": sorted list, "is_agent_root": bool}``, read
    live from sysfs and procfs. A mount counts when its device number or its
    source matches the device, a partition, or a holder (recursively); a
    swap area is reported as the mount point ``"[SWAP]"``. When the mount
    table cannot be read both values are None (unknown, hence not safe).
    """
    mounts = read_mounts(conf)
    if mounts is None:
        return {"mountpoints": None, "is_agent_root": None}
    stack = device_stack(name, conf)
    devnums = {devnum for devnum in stack.values() if devnum}
    aliases = _source_aliases(stack, conf)
    mountpoints = set()
    is_agent_root = False
    for mount in mounts:
        if mount.devnum in devnums or mount.source in aliases:
            mountpoints.add(mount.mountpoint)
            if mount.mountpoint == "/":
                is_agent_root = True
    for swap in read_swaps(conf):
        if swap in aliases:
            mountpoints.add(SWAP_MOUNTPOINT)
    return {"mountpoints": sorted(mountpoints),
            "is_agent_root": is_agent_root}


def inclusion(path, conf):
    """``(True, None)`` when ``[hardware] device_include/device_exclude``
    let the agent see ``path``, else ``(False, reason)``."""
    include = [p for p in conf.hardware.device_include if p]
    exclude = [p for p in conf.hardware.device_exclude if p]
    if include and not any(fnmatch.fnmatchcase(path, p) for p in include):
        return False, "not matched by [hardware] device_include"
    for pattern in exclude:
        if fnmatch.fnmatchcase(path, pattern):
            return False, ("matched by [hardware] device_exclude pattern %s"
                           % pattern)
    return True, None


def refusal(device, conf):
    """Why the agent may not write to ``device``: ``(kind, reason)``, or
    None when it may (see :func:`eligibility`)."""
    included, reason = inclusion(device["path"], conf)
    if not included:
        return EXCLUDED, reason
    read_only = device.get("read_only")
    if read_only is None:
        return UNKNOWN, "whether it is read-only is unknown"
    if read_only:
        return READ_ONLY, "read-only"
    is_agent_root = device.get("is_agent_root")
    if is_agent_root is None:
        return UNKNOWN, "whether it holds the agent's root is unknown"
    if is_agent_root:
        return AGENT_ROOT, "holds the agent's root filesystem"
    mounted = device.get("mounted")
    if mounted is None:
        return UNKNOWN, "whether it is mounted is unknown"
    if mounted or device.get("mountpoints"):
        points = device.get("mountpoints") or []
        if points == [SWAP_MOUNTPOINT]:
            return SWAP, "in use as swap"
        return MOUNTED, "mounted at %s" % (", ".join(points) or "an unknown "
                                           "mount point")
    return None


def eligibility(device, conf):
    """Whether the agent may write to ``device`` (a ``BlockDevice`` dict).

    Returns ``(True, None)`` or ``(False, reason)``, reason being one
    human-readable sentence fragment. A flag the manager could not read
    (``None``) counts against the device: the agent writes only where it
    knows it is safe.
    """
    refused = refusal(device, conf)
    if refused is None:
        return True, None
    return False, refused[1]


def _stacked_on(name, conf):
    """The names of the devices stacked on ``name`` or its partitions."""
    directory = os.path.join(conf.hardware.sysfs_root, "class", "block",
                             name)
    own = {name} | {entry for entry in sysfs.listdir(directory)
                    if os.path.exists(os.path.join(directory, entry,
                                                   "partition"))}
    return sorted(set(device_stack(name, conf)) - own)


def _same_device(device, path, conf):
    if device.get("path") == path:
        return True
    name = os.path.basename(path)
    dev_dirs = {"/dev", conf.hardware.dev_root}
    return (os.path.dirname(path) in dev_dirs or "/" not in path) and \
        device.get("name") == name


def ensure_writable(path, conf, dispatcher):
    """Re-check ``path`` live and return its ``BlockDevice`` dict.

    Asks the managers for a fresh device list, then overlays what this
    module reads itself from sysfs and mountinfo (read-only flag, mounts,
    agent root), so a stale or careless manager cannot make a busy device
    look free. The returned dict has ``eligible`` True,
    ``ineligible_reason`` None and ``devnum``, the ``"major:minor"`` that
    was examined (sysfs' ``dev``; None when unreadable), which a writer
    compares with what it opens.

    Raises :class:`DeviceNotEligible` when the device is unknown or fails
    any rule of :func:`eligibility`, or is a loop device backed by a device
    that does (rule 5) or by something that cannot be looked at.
    """
    devices = dispatcher.dispatch("list_block_devices")
    matches = [d for d in devices if _same_device(d, path, conf)]
    if not matches:
        raise DeviceNotEligible(path, "not a block device of this machine",
                                NOT_FOUND)
    return check_live(matches[0], conf, path, devices)


def check_live(device, conf, path=None, devices=None, _depth=0):
    """Check one ``BlockDevice`` a manager just listed, live; return it.

    The part of :func:`ensure_writable` after the device was found (the
    sysfs and mountinfo overlay, then the rules), for a caller that already
    holds a fresh device list. ``path`` names the device in errors (default:
    its reported path). A loop device backed by a block device is checked
    as that device too (rule 5): found in ``devices`` (the managers' list)
    when given, else described from sysfs alone. Raises
    :class:`DeviceNotEligible`.
    """
    path = path or device["path"]
    device = dict(device)
    name = device.get("name") or os.path.basename(device["path"])
    usage = device_usage(name, conf)
    if usage["mountpoints"] is None:
        raise DeviceNotEligible(path, "the mount table cannot be read, so "
                                "whether it is in use is unknown", UNKNOWN)
    mountpoints = set(device.get("mountpoints") or []) | set(
        usage["mountpoints"])
    device["mountpoints"] = sorted(mountpoints)
    if device.get("mounted") is not None or mountpoints:
        device["mounted"] = bool(device.get("mounted") or mountpoints)
    if usage["is_agent_root"]:
        device["is_agent_root"] = True
    live_ro = sysfs.read_text(os.path.join(
        conf.hardware.sysfs_root, "class", "block", name, "ro"))
    if live_ro == "1":
        device["read_only"] = True
    refused = refusal(device, conf)
    if refused is None:
        refused = _backing_refusal(name, conf, devices, _depth)
    if refused is not None:
        kind, reason = refused
        stacked = _stacked_on(name, conf)
        if kind in (MOUNTED, SWAP) and stacked:
            # Something built on the device (dm, md, LVM) is in use: an
            # operator must stop that first, not just unmount a partition.
            kind = HOLDER
        LOG.warning("refusing to write to %s: %s", path, reason)
        raise DeviceNotEligible(path, reason, kind)
    device["devnum"] = sysfs.read_text(os.path.join(
        conf.hardware.sysfs_root, "class", "block", name, "dev"))
    device["eligible"] = True
    device["ineligible_reason"] = None
    return device


def _backing_refusal(name, conf, devices, depth):
    """Why the loop device ``name`` may not be written because of what
    backs it (rule 5): ``(kind, reason)``, or None."""
    try:
        backing = loop_backing(name, conf)
    except BackingUnknown as exc:
        return UNKNOWN, "a loop device whose backing is unknown: %s" % exc
    if backing is None:
        return None
    if depth >= _MAX_LOOP_DEPTH:
        return UNKNOWN, ("a chain of more than %d loop devices"
                         % _MAX_LOOP_DEPTH)
    backing_path = os.path.join(conf.hardware.dev_root, backing)
    if devices is None:
        # No managers' list: the live overlay of check_live decides.
        ro = sysfs.read_text(os.path.join(conf.hardware.sysfs_root, "class",
                                          "block", backing, "ro"))
        device = {"path": backing_path, "name": backing,
                  "read_only": None if ro is None else ro == "1",
                  "is_agent_root": False, "mounted": False}
    else:
        matches = [d for d in devices
                   if _same_device(d, backing_path, conf)]
        if not matches:
            return NOT_FOUND, ("a loop device backed by %s, which is not a "
                               "block device of this machine" % backing_path)
        device = matches[0]
    try:
        check_live(device, conf, backing_path, devices, depth + 1)
    except DeviceNotEligible as exc:
        return exc.kind, ("a loop device backed by %s, which may not be "
                          "written: %s" % (backing_path, exc.reason))
    return None
