"""Dismantling what a previous tenant stacked on the disks, before they are
erased: md arrays, LVM, dm-crypt, multipath maps, other device-mapper
devices and bcache.

Policy and action are apart, like :mod:`teeth_agent.hardware.safety`:

- :func:`plan` (the agent's, no manager overrides it) finds the stacks on
  the disks to erase from sysfs ``holders/``, and refuses a stack that is
  not wholly on those disks (it would break a device nobody asked to
  erase) or that is in use anywhere (a mounted file system or swap on any
  layer refuses the whole stack);
- :func:`dismantle` (the generic manager's ``dismantle_stack``; a vendor
  manager may override it) stops the layers top first and removes their
  on-disk labels, returning each step;
- :func:`remaining` re-reads sysfs afterwards: a layer still stacked on a
  disk fails it, whatever the tools' exit status said.
"""

import dataclasses
import os
import re
import time

from teeth_agent.hardware import base
from teeth_agent.hardware import safety
from teeth_agent.hardware import sysfs
from teeth_agent import processes

#: Layer kinds, as the result's ``teardown[].kind`` names them.
MD = "md"
LVM = "lvm"
CRYPT = "crypt"
MULTIPATH = "multipath"
DM = "dm"
BCACHE = "bcache"
#: A holder that is none of the above (DRBD, a vendor driver's device):
#: the generic manager does not dismantle it.
OTHER = "other"

#: How long a bcache device may take to go away after ``stop``.
BCACHE_STOP_TIMEOUT = 30.0


class TeardownError(base.HardwareManagerError):
    """A step of the teardown failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """One device stacked on the disks: its kernel name, kind, device-mapper
    name (None unless dm) and the kernel names directly below it."""

    name: str
    kind: str
    dm_name: str
    lower: tuple

    def as_dict(self):
        return {"name": self.name, "kind": self.kind,
                "dm_name": self.dm_name, "lower": list(self.lower)}


@dataclasses.dataclass(frozen=True)
class Stack:
    """Layers stacked on a set of whole disks.

    ``layers`` are in removal order (a layer before what it sits on);
    ``members`` are the ``(kernel name, kind)`` of the disks and
    partitions the bottom layers sit on, whose labels are wiped last.
    """

    disks: tuple
    layers: tuple
    members: tuple

    def as_dict(self, dev_root="/dev"):
        """The ``stack`` argument of ``dismantle_stack``."""
        return {"disks": [os.path.join(dev_root, d) for d in self.disks],
                "layers": [layer.as_dict() for layer in self.layers],
                "members": [{"path": os.path.join(dev_root, name),
                             "name": name, "kind": kind}
                            for name, kind in self.members]}


def _block(conf, *parts):
    return os.path.join(conf.hardware.sysfs_root, "class", "block", *parts)


def _is_partition(name, conf):
    return os.path.exists(_block(conf, name, "partition"))


def _whole_disk(name, conf):
    """The disk a partition belongs to (the name itself for a disk)."""
    if not _is_partition(name, conf):
        return name
    return os.path.basename(os.path.dirname(os.path.realpath(
        _block(conf, name))))


def _lower_map(conf):
    """``{holder: {devices it sits on}}`` from every ``holders/`` of sysfs
    (disks and partitions), so a fake sysfs without ``slaves/`` serves."""
    lower = {}
    for name in sysfs.listdir(_block(conf)):
        names = [name] + [entry for entry in sysfs.listdir(_block(conf, name))
                          if os.path.exists(_block(conf, name, entry,
                                                   "partition"))]
        for below in names:
            for holder in sysfs.listdir(_block(conf, below, "holders")):
                lower.setdefault(holder, set()).add(below)
    return lower


def layer_kind(name, conf):
    """The kind of the stacked device ``name`` (see the constants)."""
    if re.fullmatch(r"md\d+|md_\w+", name) or \
            os.path.isdir(_block(conf, name, "md")):
        return MD
    if re.fullmatch(r"bcache\d+", name):
        return BCACHE
    if not (re.fullmatch(r"dm-\d+", name) or
            os.path.isdir(_block(conf, name, "dm"))):
        return OTHER
    uuid = sysfs.read_text(_block(conf, name, "dm", "uuid")) or ""
    if uuid.startswith("CRYPT-"):
        return CRYPT
    if uuid.startswith("LVM-"):
        return LVM
    if uuid.startswith("mpath-"):
        return MULTIPATH
    return DM


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` found: the stacks to dismantle and
    ``{disk name: reason}`` for the disks whose stack is refused."""

    stacks: tuple
    refused: dict


def plan(names, conf):
    """The stacks on the disks ``names`` (kernel names), as a :class:`Plan`.

    A stack is the connected set of layers reachable from a disk through
    ``holders/`` and the devices they sit on. It is refused (each of its
    disks in ``refused``) when it also sits on a disk outside ``names``, or
    when any disk under it has a mount or swap anywhere above it.
    """
    names = list(dict.fromkeys(names))
    lower = _lower_map(conf)
    holders = {}
    for holder, below in lower.items():
        for device in below:
            holders.setdefault(device, set()).add(holder)
    # The volumes of a volume group are dismantled together (vgchange), so
    # they belong to one stack even on disks that share nothing else.
    groups = _group_map(conf)
    seen = set()
    stacks, refused = [], {}
    for start in names:
        if start in seen:
            continue
        nodes, pending = set(), [start]
        while pending:
            node = pending.pop()
            if node in nodes:
                continue
            nodes.add(node)
            # Partitions of disks and of layers (a partitioned md array).
            partitions = [entry for entry in sysfs.listdir(_block(conf, node))
                          if _is_partition(entry, conf)]
            pending.extend(partitions)
            for device in [node] + partitions:
                pending.extend(holders.get(device, ()))
            pending.extend(lower.get(node, ()))
            if node in lower:
                pending.extend(groups.get(_volume_group(node, conf), ()))
        layers = {node for node in nodes if node in lower}
        disks = sorted({_whole_disk(node, conf) for node in nodes
                        if _whole_disk(node, conf) not in lower})
        seen.update(disks)
        if not layers:
            continue
        reason = _refusal(disks, names, layers, conf)
        if not reason:
            try:
                stack = _stack(disks, layers, lower, conf)
            except _Cycle as exc:
                reason = str(exc)
        if reason:
            for disk in disks:
                if disk in names:
                    refused[disk] = reason
            continue
        stacks.append(stack)
    return Plan(tuple(stacks), refused)


class _Cycle(Exception):
    """The layers cannot be put in an order (a volume group stacked on
    itself through another layer)."""


def _volume_group(name, conf):
    """The volume group of the LVM layer ``name``, or None when ``name``
    is no LVM layer (or its device-mapper name says no group)."""
    if layer_kind(name, conf) != LVM:
        return None
    return lvm_volume_group(sysfs.read_text(_block(conf, name, "dm",
                                                   "name")))


def _group_map(conf):
    """``{volume group: [kernel names of its dm devices]}`` over sysfs."""
    groups = {}
    for name in sysfs.listdir(_block(conf)):
        if re.fullmatch(r"dm-\d+", name):
            group = _volume_group(name, conf)
            if group:
                groups.setdefault(group, []).append(name)
    return groups


def _refusal(disks, names, layers, conf):
    outside = [disk for disk in disks if disk not in names]
    if outside:
        return ("%s is stacked on it and also on %s, which is not being "
                "erased; the agent dismantles only stacks wholly on the "
                "disks it erases" % (", ".join(sorted(layers)),
                                     ", ".join(outside)))
    for disk in disks:
        usage = safety.device_usage(disk, conf)
        if usage["mountpoints"] is None:
            return ("the mount table cannot be read, so whether the stack "
                    "on it (%s) is in use is unknown" % ", ".join(
                        sorted(layers)))
        if usage["mountpoints"]:
            return ("the stack on it (%s) is in use: %s is mounted at %s"
                    % (", ".join(sorted(layers)), disk,
                       ", ".join(usage["mountpoints"])))
    return None


def _stack(disks, layers, lower, conf):
    height = {}

    def owner(name):
        # A partition of a layer (md0p1) counts as that layer.
        return _whole_disk(name, conf)

    # The volumes of one volume group are one node: vgchange deactivates
    # them together, so every layer above any of them goes first and
    # every layer below any of them (the PVs' md, bcache...) after.
    groups = {name: ("lvm", _volume_group(name, conf))
              if _volume_group(name, conf) else ("layer", name)
              for name in layers}
    members = {}
    for name in layers:
        members.setdefault(groups[name], []).append(name)

    def level(group, visiting=()):
        if group in visiting:
            cycle = visiting[visiting.index(group):]
            raise _Cycle("the layers %s cannot be dismantled in any order "
                         "(volume group %s is stacked on itself through %s)"
                         % (", ".join(sorted(layers)), ", ".join(
                             g[1] for g in cycle if g[0] == "lvm"),
                            ", ".join(g[1] for g in cycle
                                      if g[0] != "lvm")))
        if group not in height:
            below = {groups[owner(device)] for name in members[group]
                     for device in lower[name] if owner(device) in lower}
            below.discard(group)
            height[group] = 1 + max([level(other, visiting + (group,))
                                     for other in below] or [0])
        return height[group]

    ordered = sorted(layers, key=lambda name: (-level(groups[name]),
                                               groups[name], name))
    built = tuple(Layer(name, layer_kind(name, conf),
                        sysfs.read_text(_block(conf, name, "dm", "name")),
                        tuple(sorted(lower[name]))) for name in ordered)
    members = []
    for layer in built:
        for below in layer.lower:
            if owner(below) not in lower and \
                    (below, layer.kind) not in members:
                members.append((below, layer.kind))
    return Stack(tuple(disks), built, tuple(members))


def remaining(disks, conf):
    """``{disk: [layers still stacked on it or its partitions]}`` for the
    disks (kernel names) that still have any, read live from sysfs."""
    left = {}
    for disk in disks:
        names = [disk] + [entry for entry in sysfs.listdir(_block(conf, disk))
                          if _is_partition(entry, conf)]
        found = sorted({holder for name in names
                        for holder in sysfs.listdir(_block(conf, name,
                                                           "holders"))})
        if found:
            left[disk] = found
    return left


def lvm_names(dm_name):
    """``(volume group, logical volume)`` from an LVM device-mapper name
    (``vg-lv``, a ``-`` inside a name doubled), or None. A hidden layer's
    name (``vg-pool-tpool``, ``vg-origin-real``, ``vg-snap-cow``) gives
    None: it is no volume of its own (see :func:`lvm_volume_group`)."""
    match = re.fullmatch(r"((?:[^-]|--)+)-((?:[^-]|--)+)", dm_name or "")
    if not match:
        return None
    return match.group(1).replace("--", "-"), match.group(2).replace("--", "-")


def lvm_volume_group(dm_name):
    """The volume group in an LVM device-mapper name, or None: what comes
    before the first single ``-`` (a ``-`` in a group's name is doubled),
    for volumes and for the hidden layers LVM builds under them
    (``vg-pool_tmeta``, ``vg-pool-tpool``, ``vg-lv_rimage_0``,
    ``vg-origin-real``, ``vg-snap-cow``, ...) alike."""
    match = re.match(r"((?:[^-]|--)+)-(?!-)", dm_name or "")
    if not match or match.end() == len(dm_name):
        return None
    return match.group(1).replace("--", "-")


def _run(steps, layer, kind, argv, covers=None):
    command = " ".join(argv)
    step = {"layer": layer, "kind": kind, "command": command}
    if covers is not None:
        step["layers"] = list(covers)
    try:
        processes.execute(*argv)
    except processes.ProcessError as exc:
        steps.append(dict(step, result="failed", error=str(exc)))
        raise TeardownError("tearing down %s failed: %s" % (layer, exc)) \
            from exc
    steps.append(dict(step, result="done"))


def _remove_multipath(steps, name, map_name):
    """``multipath -f MAP`` where multipath-tools are installed: it turns
    queueing off first (a map with ``queue_if_no_path`` and no path left
    would hang a bare remove) and keeps multipathd's view right. Without
    them (the agent's ramdisk; then no multipathd runs either), the same
    by hand: ``fail_if_no_path``, then ``dmsetup remove --retry``."""
    if processes.which("multipath"):
        _run(steps, name, MULTIPATH, ["multipath", "-f", map_name])
        return
    _run(steps, name, MULTIPATH, ["dmsetup", "message", map_name, "0",
                                  "fail_if_no_path"])
    _run(steps, name, MULTIPATH, ["dmsetup", "remove", "--retry", map_name])


def _write_sysfs(steps, layer, path):
    command = "echo 1 > %s" % path
    try:
        with open(path, "w", encoding="ascii") as stream:
            stream.write("1\n")
    except OSError as exc:
        steps.append({"layer": layer, "kind": BCACHE, "command": command,
                      "result": "failed", "error": str(exc)})
        raise TeardownError("tearing down %s failed: cannot write %s: %s"
                            % (layer, path, exc.strerror or exc)) from exc
    steps.append({"layer": layer, "kind": BCACHE, "command": command,
                  "result": "done"})


def dismantle(manager, stack, sleep=time.sleep, clock=time.monotonic):
    """Stop the layers of ``stack`` (a :meth:`Stack.as_dict`) top first,
    then wipe the labels of its members; return the steps
    (``{"layer", "kind", "command", "result", "error"?}``).

    Raises :class:`TeardownError` at the first failed step (the steps so
    far are in its ``steps``).
    """
    conf = manager.conf
    steps = []
    groups = {}
    for layer in stack["layers"]:
        group = lvm_volume_group(layer["dm_name"]) \
            if layer["kind"] == LVM else None
        if group:
            groups.setdefault(group, []).append(layer["name"])
    deactivated = set()
    try:
        for layer in stack["layers"]:
            name, kind, dm_name = layer["name"], layer["kind"], \
                layer["dm_name"]
            group = lvm_volume_group(dm_name) if kind == LVM else None
            if kind == MD:
                _run(steps, name, kind, ["mdadm", "--stop", "/dev/%s" % name])
            elif kind == CRYPT:
                _run(steps, name, kind, ["cryptsetup", "close", dm_name])
            elif group:
                # Once per volume group, for its volumes and the hidden
                # layers under them (thin pool _tmeta/_tdata/-tpool, raid
                # _rimage_N/_rmeta_N, snapshot -real/-cow, cache pools),
                # which lvchange or dmsetup could not take down one by one.
                if group not in deactivated:
                    deactivated.add(group)
                    _run(steps, group, kind,
                         ["vgchange", "--activate", "n", group],
                         covers=groups[group])
            elif kind == MULTIPATH:
                _remove_multipath(steps, name, dm_name or name)
            elif kind == BCACHE:
                _stop_bcache(steps, conf, layer, sleep, clock)
            elif kind == OTHER:
                # dmsetup would only fail on it, saying less.
                raise TeardownError(
                    "%s is not an md, device-mapper or bcache device; the "
                    "generic manager cannot dismantle it (stop it first)"
                    % name)
            else:
                _run(steps, name, kind, ["dmsetup", "remove",
                                         dm_name or name])
        for member in stack["members"]:
            if member["kind"] == MD:
                _run(steps, member["name"], MD,
                     ["mdadm", "--zero-superblock", member["path"]])
            elif member["kind"] in (LVM, CRYPT, BCACHE):
                # The PV label, the LUKS header (without it the data is
                # unreadable), the bcache superblock.
                _run(steps, member["name"], member["kind"],
                     ["wipefs", "--all", "--force", member["path"]])
    except TeardownError as exc:
        exc.steps = steps
        raise
    return steps


def _stop_bcache(steps, conf, layer, sleep, clock):
    name = layer["name"]
    for below in layer["lower"]:
        unregister = _block(conf, below, "bcache", "set", "unregister")
        if os.path.exists(unregister):
            _write_sysfs(steps, name, unregister)
    _write_sysfs(steps, name, _block(conf, name, "bcache", "stop"))
    deadline = clock() + BCACHE_STOP_TIMEOUT
    while os.path.exists(_block(conf, name)):
        if clock() > deadline:
            steps[-1]["result"] = "failed"
            raise TeardownError("%s did not stop within %d s"
                                % (name, BCACHE_STOP_TIMEOUT))
        sleep(0.2)
