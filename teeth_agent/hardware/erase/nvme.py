"""NVMe erase: sanitize and format through nvme-cli, and the parsers of
its output."""

import json
import os
import re
import time

from teeth_agent.hardware.erase import catalogue
from teeth_agent.hardware.erase import polling
from teeth_agent.hardware import safety
from teeth_agent.hardware import sysfs as sysfs_files
from teeth_agent import processes


_NVME_SANACT = {"nvme_sanitize_block": 2, "nvme_sanitize_overwrite": 3,
                "nvme_sanitize_crypto": 4}


def _nvme_json(*argv):
    out, _ = processes.execute("nvme", *argv, "--output-format=json")
    return json.loads(out)


def _nvme_namespace_count(manager, device):
    """Namespaces of the controller that owns ``device`` (from sysfs)."""
    name = catalogue._device_name(device)
    controller = re.match(r"(nvme\d+)n\d+", name).group(1)
    sysfs = polling._conf_value(
        manager, "sysfs_root", "/sys", group="hardware")
    directory = os.path.join(sysfs, "class", "nvme", controller)
    try:
        entries = os.listdir(directory)
    except OSError:
        return 1
    pattern = re.compile(r"nvme\d+c?\d*n\d+")
    return max(1, len({re.sub(r"c\d+", "", e) for e in entries
                       if pattern.fullmatch(e)}))


def parse_nvme_id_ctrl(data):
    """``(sanicap, fna, oacs)`` from ``nvme id-ctrl -o json`` output."""
    def field(name):
        value = data.get(name, 0)
        return int(value, 0) if isinstance(value, str) else int(value or 0)
    return field("sanicap"), field("fna"), field("oacs")


def _probe_nvme(manager, device):
    path = device["path"]
    sanicap, fna, oacs = parse_nvme_id_ctrl(_nvme_json("id-ctrl", path))
    supported, reasons = set(), {}
    namespaces = _nvme_namespace_count(manager, device)
    shared = None
    if namespaces > 1:
        shared = ("the controller has %d namespaces and this method would "
                  "erase all of them" % namespaces)
    for method, bit in (("nvme_sanitize_crypto", 0x1),
                        ("nvme_sanitize_block", 0x2),
                        ("nvme_sanitize_overwrite", 0x4)):
        if not sanicap & bit:
            reasons[method] = ("the controller does not support this "
                               "sanitize action (sanicap=0x%x)" % sanicap)
        elif shared:
            reasons[method] = shared
        else:
            supported.add(method)
    if not oacs & 0x2:
        for method in ("nvme_format_crypto", "nvme_format_user"):
            reasons[method] = ("the controller does not support Format NVM "
                               "(oacs=0x%x)" % oacs)
        return supported, reasons
    if shared and fna & 0x3:
        for method in ("nvme_format_crypto", "nvme_format_user"):
            reasons[method] = shared
        return supported, reasons
    supported.add("nvme_format_user")
    if fna & 0x4:
        supported.add("nvme_format_crypto")
    else:
        reasons["nvme_format_crypto"] = (
            "the controller does not support cryptographic erase in "
            "Format NVM (fna=0x%x)" % fna)
    return supported, reasons


def parse_nvme_sanitize_log(data):
    """``(status, progress fraction)`` from ``nvme sanitize-log -o json``.

    Status is the SSTAT code: 0 never sanitized, 1 completed, 2 in
    progress, 3 failed, 4 completed without deallocation. nvme-cli has
    printed the log flat, under the device name, and with ``sstat`` as a
    number or as an object with a ``status`` text such as ``"(1) ..."``.
    """
    log = data
    if "sprog" not in log:
        nested = [value for value in data.values()
                  if isinstance(value, dict) and "sprog" in value]
        if not nested:
            raise ValueError("no sanitize log in %r" % (data,))
        log = nested[0]
    sstat = log.get("sstat", 0)
    if isinstance(sstat, dict):
        status = sstat.get("status", 0)
        if isinstance(status, str):
            match = re.search(r"\d+", status)
            status = int(match.group(0)) if match else 0
    else:
        status = int(sstat, 0) if isinstance(sstat, str) else int(sstat)
    status &= 0x7
    return status, int(log.get("sprog", 0)) / 65536.0


def _erase_nvme(manager, device, method, size, progress, sleep=time.sleep):
    path = device["path"]
    if method in _NVME_SANACT:
        argv = ["sanitize", path, "--sanact=%d" % _NVME_SANACT[method]]
        if method == "nvme_sanitize_overwrite":
            argv += ["--owpass=1", "--ovrpat=0"]
        processes.execute("nvme", *argv)
        return polling._poll(
            lambda: _nvme_sanitize_state(path), path, method, size,
            progress, polling._poll_interval(manager), sleep)
    ses = 2 if method == "nvme_format_crypto" else 1
    namespace = _nvme_json("id-ns", path)
    lbaf = int(namespace.get("flbas", 0)) & 0xF
    processes.execute("nvme", "format", path, "--ses=%d" % ses,
                      "--lbaf=%d" % lbaf, "--force",
                      "--timeout=%d" % (polling._LONG_COMMAND_TIMEOUT * 1000),
                      timeout=polling._LONG_COMMAND_TIMEOUT)
    return {"ses": ses, "lbaf": lbaf}


def _nvme_sanitize_state(path):
    status, fraction = parse_nvme_sanitize_log(
        _nvme_json("sanitize-log", path))
    if status in (1, 4):
        return "done", 1.0
    if status == 2:
        return "running", fraction
    if status == 3:
        return "failed", "the controller reports the sanitize failed"
    return "waiting", 0.0


# -- namespace reset ---------------------------------------------------------

#: The NSID that addresses every namespace of a controller (NVMe base
#: specification: a Namespace Management delete with it deletes them all).
ALL_NAMESPACES = 0xFFFFFFFF

#: How long the kernel may take to show the new namespace after a rescan.
NAMESPACE_APPEAR_TIMEOUT = 30.0


class NamespaceResetError(catalogue.EraseError):
    """Resetting a drive's namespaces failed; the message says at which
    step (the steps done so far are in ``steps``)."""

    def __init__(self, msg, steps):
        super().__init__(msg)
        self.steps = steps


def controller_of(device):
    """The controller name of an NVMe namespace device (``nvme0`` for
    ``nvme0n1``), or None."""
    match = re.fullmatch(r"(nvme\d+)n\d+", catalogue._device_name(device))
    return match.group(1) if match else None


def controller_namespaces(sysfs, controller):
    """The namespace block devices (kernel names) of ``controller``, from
    sysfs (mounted at ``sysfs``), sorted."""
    try:
        entries = os.listdir(os.path.join(sysfs, "class", "nvme",
                                          controller))
    except OSError:
        return []
    return sorted({re.sub(r"c\d+n", "n", entry) for entry in entries
                   if re.fullmatch(r"nvme\d+(c\d+)?n\d+", entry)})


def _lba_bytes(namespace):
    """The data size of the namespace's current LBA format."""
    index = int(namespace.get("flbas", 0)) & 0xF
    formats = namespace.get("lbafs") or []
    if index >= len(formats):
        raise ValueError("the namespace reports no LBA format %d" % index)
    return 1 << int(formats[index].get("ds", 9)), index


def namespaces_busy(conf, controller):
    """Why the namespaces of ``controller`` (a ``reset_namespaces``
    argument) may not be deleted now, or None.

    Read live from sysfs and mountinfo (:func:`safety.check_live`, the
    rules every write obeys), at the last moment before ``delete-ns``: the
    controller must show exactly the namespaces it was given, and none may
    be mounted, swap, the agent's root, read-only or have anything stacked
    on it.
    """
    dev_root = conf.hardware.dev_root
    sysfs = conf.hardware.sysfs_root
    names = controller_namespaces(sysfs, controller["name"])
    expected = sorted(catalogue._device_name({"path": path})
                      for path in controller["namespaces"])
    if names != expected:
        return ("the controller shows namespaces %s, not the %s it was "
                "asked to reset" % (", ".join(names) or "none",
                                    ", ".join(expected) or "none"))
    problems = []
    for name in names:
        block = os.path.join(sysfs, "class", "block", name)
        ro = sysfs_files.read_text(os.path.join(block, "ro"))
        device = {"path": os.path.join(dev_root, name), "name": name,
                  "read_only": None if ro is None else ro == "1",
                  "is_agent_root": False, "mounted": False}
        try:
            safety.check_live(device, conf)
        except safety.DeviceNotEligible as exc:
            problems.append("%s: %s" % (name, exc.reason))
            continue
        holders = sysfs_files.listdir(os.path.join(block, "holders"))
        if holders:
            problems.append("%s: %s is stacked on it"
                            % (name, ", ".join(holders)))
    return "; ".join(problems) or None


def reset_namespaces(manager, controller, sleep=time.sleep,
                     clock=time.monotonic):
    """Delete every namespace of ``controller`` and create one that covers
    the drive, in the LBA format the first namespace had.

    ``controller`` is ``{"path": "/dev/nvme0", "name": "nvme0",
    "namespaces": [paths]}``. Returns ``{"steps": [{"command", "result"}],
    "namespace": kernel name of the new namespace, "size_bytes"}``. Raises
    :class:`NamespaceResetError` (also when the controller cannot manage
    namespaces, before anything is deleted).
    """
    steps = []
    path = controller["path"]

    def run(*argv):
        command = "nvme " + " ".join(argv)
        try:
            out, _ = processes.execute("nvme", *argv)
        except processes.ProcessError as exc:
            steps.append({"command": command, "result": "failed",
                          "error": str(exc)})
            raise NamespaceResetError("namespace reset of %s failed: %s"
                                      % (path, exc), steps) from exc
        steps.append({"command": command, "result": "done"})
        return out

    try:
        ctrl = _nvme_json("id-ctrl", path)
        first = _nvme_json("id-ns", controller["namespaces"][0])
        lba, flbas = _lba_bytes(first)
    except (processes.ProcessError, ValueError, IndexError) as exc:
        raise NamespaceResetError("namespace reset of %s is impossible: %s"
                                  % (path, exc), steps) from exc
    oacs = parse_nvme_id_ctrl(ctrl)[2]
    capacity = int(ctrl.get("tnvmcap") or 0)
    if not oacs & 0x8:
        raise NamespaceResetError(
            "namespace reset of %s is impossible: the controller does not "
            "support namespace management (oacs=0x%x)" % (path, oacs), steps)
    if capacity < lba:
        raise NamespaceResetError(
            "namespace reset of %s is impossible: the controller reports no "
            "total capacity (tnvmcap)" % path, steps)
    blocks = capacity // lba
    busy = namespaces_busy(manager.conf, controller)
    if busy:
        raise NamespaceResetError("namespace reset of %s refused, nothing "
                                  "was deleted: %s" % (path, busy), steps)
    run("delete-ns", path, "--namespace-id=0x%x" % ALL_NAMESPACES)
    out = run("create-ns", path, "--nsze=%d" % blocks, "--ncap=%d" % blocks,
              "--flbas=%d" % flbas)
    match = re.search(r"nsid:?\s*(\d+)", out or "")
    if not match:
        raise NamespaceResetError("namespace reset of %s failed: create-ns "
                                  "did not say which namespace it created"
                                  % path, steps)
    nsid = int(match.group(1))
    run("attach-ns", path, "--namespace-id=%d" % nsid,
        "--controllers=%d" % int(ctrl.get("cntlid", 0)))
    run("ns-rescan", path)
    name = "%sn%d" % (controller["name"], nsid)
    sysfs = polling._conf_value(manager, "sysfs_root", "/sys",
                                group="hardware")
    deadline = clock() + NAMESPACE_APPEAR_TIMEOUT
    while controller_namespaces(sysfs, controller["name"]) != [name]:
        if clock() > deadline:
            raise NamespaceResetError(
                "namespace reset of %s failed: the kernel shows namespaces "
                "%s, not just the new %s" % (path, ", ".join(
                    controller_namespaces(sysfs, controller["name"]))
                    or "none", name), steps)
        sleep(0.2)
    return {"steps": steps, "namespace": name, "size_bytes": blocks * lba}
