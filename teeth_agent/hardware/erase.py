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

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time

from teeth_agent import blockdev
from teeth_agent.hardware import base
from teeth_agent import processes

LOG = logging.getLogger(__name__)

MIB = blockdev.MIB
CLEAR = "Clear"
PURGE = "Purge"

_DEFAULT_BLOCK_SIZE = 8 * MIB
_MARKER_SIZE = 4096
_MARKER_COUNT = 8
_POLL_INTERVAL = 5.0
# A device-level erase that reports no progress and has no estimate gets
# this long before the agent gives up on it.
_LONG_COMMAND_TIMEOUT = 24 * 3600


@dataclasses.dataclass(frozen=True)
class EraseMethod:
    """One erase method.

    Its wire name, the device family it applies to and the NIST SP 800-88
    category it meets.
    """

    name: str
    family: str
    nist_category: str
    description: str


def _methods(*methods):
    return {method.name: method for method in methods}


#: Every known method, strongest first.
METHODS = _methods(
    EraseMethod("nvme_sanitize_crypto", "nvme", PURGE,
                "NVMe sanitize, crypto erase"),
    EraseMethod("nvme_sanitize_block", "nvme", PURGE,
                "NVMe sanitize, block erase"),
    EraseMethod("nvme_format_crypto", "nvme", PURGE,
                "NVMe format, cryptographic erase (SES=2)"),
    EraseMethod("ata_sanitize_crypto", "ata", PURGE,
                "ATA sanitize, crypto scramble"),
    EraseMethod("ata_sanitize_block", "ata", PURGE,
                "ATA sanitize, block erase"),
    EraseMethod("ata_security_erase_enhanced", "ata", PURGE,
                "ATA enhanced security erase"),
    EraseMethod("scsi_sanitize_crypto", "scsi", PURGE,
                "SCSI sanitize, cryptographic erase"),
    EraseMethod("scsi_sanitize_block", "scsi", PURGE,
                "SCSI sanitize, block erase"),
    EraseMethod("nvme_sanitize_overwrite", "nvme", PURGE,
                "NVMe sanitize, overwrite"),
    EraseMethod("ata_sanitize_overwrite", "ata", PURGE,
                "ATA sanitize, overwrite"),
    EraseMethod("scsi_sanitize_overwrite", "scsi", PURGE,
                "SCSI sanitize, overwrite"),
    EraseMethod("nvme_format_user", "nvme", CLEAR,
                "NVMe format, user data erase (SES=1)"),
    EraseMethod("ata_security_erase", "ata", CLEAR,
                "ATA security erase (normal)"),
    EraseMethod("overwrite", "overwrite", CLEAR,
                "full overwrite with zeroes by the agent"),
)

KNOWN_METHODS = tuple(METHODS)

#: NIST SP 800-88 categories, weakest first.
CATEGORIES = (CLEAR, PURGE)


def category_rank(category):
    """The strength of a NIST category: higher is stronger; an unknown
    category ranks below Clear."""
    return CATEGORIES.index(category) if category in CATEGORIES else -1


def strongest_first(names):
    """``names`` (method names) ordered Purge before Clear, each category in
    catalogue order; unknown names last, in the order given."""
    known = list(METHODS)

    def key(name):
        method = METHODS.get(name)
        if method is None:
            return (1, 0, 0)
        return (0, -category_rank(method.nist_category), known.index(name))

    return sorted(names, key=key)


#: The default of ``[decom] erase_methods``: every method, strongest first.
DEFAULT_METHOD_ORDER = tuple(strongest_first(METHODS))


class EraseError(base.HardwareManagerError):
    """An erase method failed on a device; the message says why."""


class Capabilities(list):
    """The methods a device supports, strongest first.

    A plain list of names, plus ``unsupported``: ``{method: reason}`` for
    every known method the device cannot do, so a caller can report why a
    stronger method was not used.
    """

    def __init__(self, supported=(), unsupported=None):
        super().__init__(supported)
        self.unsupported = dict(unsupported or {})


# -- device families ----------------------------------------------------------

def _device_name(device):
    return device.get("name") or os.path.basename(device["path"])


def device_family(device):
    """The family of erase methods ``device`` may support.

    ``"nvme"``, ``"sd"`` (ATA or SCSI, told apart by probing) or None for
    devices only the agent's overwrite can erase (loop, virtio, md).
    """
    name = _device_name(device)
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
    probes = {"nvme": _probe_nvme, "sd": _probe_sd}
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
    for name, method in METHODS.items():
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
    capabilities = Capabilities(
        [name for name in METHODS if name in supported],
        {name: reason for name, reason in unsupported.items()
         if name not in supported})
    LOG.info("erase capabilities of %s: %s", path,
             ", ".join(capabilities) or "none")
    return capabilities


def erase_device(manager, device, method, progress):
    """Erase ``device`` with ``method``.

    Returns ``{"method", "nist_category", "bytes", "details"}``.

    ``progress(done, total)`` is called as bytes are erased (device-level
    methods report the device's own progress scaled to its size). Raises
    :class:`base.IncompatibleHardwareMethodError` for a method name this
    module does not know and :class:`EraseError` when the erase fails.
    """
    info = METHODS.get(method)
    if info is None:
        raise base.IncompatibleHardwareMethodError(
            "unknown erase method %s" % method)
    path = device["path"]
    started = time.monotonic()
    LOG.info("erasing %s with %s", path, method)
    try:
        if info.family == "overwrite":
            size = overwrite(path, progress,
                             block_size=_conf_value(
                                 manager, "erase_block_size",
                                 _DEFAULT_BLOCK_SIZE))
            details = {}
        else:
            size = device.get("size_bytes") or blockdev.device_size(path)
            runner = {"nvme": _erase_nvme, "ata": _erase_ata,
                      "scsi": _erase_scsi}[info.family]
            details = runner(manager, device, method, size, progress) or {}
            progress(size, size)
    except (processes.ProcessError, OSError, ValueError) as exc:
        raise EraseError("%s failed on %s: %s" % (method, path, exc)) from exc
    LOG.info("erased %s with %s in %.1fs", path, method,
             time.monotonic() - started)
    return {"method": method, "nist_category": info.nist_category,
            "bytes": size, "details": details}


def _conf_value(manager, name, default, group="decom"):
    """An option of the manager's config, or ``default``.

    The default serves managers built without the agent's options.
    """
    try:
        return getattr(getattr(manager.conf, group), name)
    except AttributeError:
        # oslo.config's NoSuchOptError is an AttributeError too.
        return default


def _poll_interval(manager):
    return _conf_value(manager, "erase_poll_interval", _POLL_INTERVAL)


# -- direct I/O helpers -------------------------------------------------------

def _read_direct(fd, offset, length):
    """``length`` bytes at ``offset``, read with O_DIRECT.

    Both must be multiples of the sector size.
    """
    buffer = blockdev.aligned_buffer(length)
    try:
        count = os.preadv(fd, [buffer], offset)
        if count != length:
            raise OSError("short read at offset %d: %d of %d bytes"
                          % (offset, count, length))
        return buffer[:length]
    finally:
        buffer.close()


def overwrite(path, progress, block_size=_DEFAULT_BLOCK_SIZE):
    """Write zeroes over all of ``path``; return the bytes written.

    Large O_DIRECT writes, then fsync.

    ``progress(done, total)`` is called after every write. This is the
    speed-critical path: one aligned buffer, no copies, no page cache.
    """
    with blockdev.open_direct(path, write=True) as fd:
        size = blockdev.fd_size(fd)
        sector = blockdev.logical_block_size(fd)
        block_size = max(sector, block_size - block_size % sector)
        buffer = blockdev.aligned_buffer(block_size)
        try:
            with memoryview(buffer) as view:
                offset = 0
                progress(0, size)
                while offset < size:
                    length = min(block_size, size - offset)
                    # A temporary slice: a named one would outlive the view
                    # and keep the mmap from closing.
                    blockdev.write_all(
                        fd, view[:length] if length < block_size else view,
                        offset)
                    offset += length
                    progress(offset, size)
            os.fsync(fd)
        finally:
            buffer.close()
    return size


def _marker_offsets(size, count=_MARKER_COUNT):
    """Marker offsets spread over a device of ``size`` bytes.

    They avoid the first and last MiB (zeroed after every erase) when the
    device is big enough.
    """
    low, high = MIB, size - MIB - _MARKER_SIZE
    if high <= low:
        low, high = 0, size - _MARKER_SIZE
    if high < low:
        return []
    offsets = []
    for index in range(count):
        offset = low + (high - low) * (2 * index + 1) // (2 * count)
        offset -= offset % _MARKER_SIZE
        if offset not in offsets:
            offsets.append(offset)
    return offsets


def write_markers(path, count=_MARKER_COUNT):
    """Write random 4 KiB markers at known offsets of ``path``.

    Returns ``[(offset, bytes)]`` for :func:`verify_erased`, which checks
    that a device-level erase really removed them.
    """
    markers = []
    with blockdev.open_direct(path, write=True) as fd:
        size = blockdev.fd_size(fd)
        buffer = blockdev.aligned_buffer(_MARKER_SIZE)
        try:
            for offset in _marker_offsets(size, count):
                data = os.urandom(_MARKER_SIZE)
                buffer.seek(0)
                buffer.write(data)
                with memoryview(buffer) as view:
                    blockdev.write_all(fd, view, offset)
                markers.append((offset, data))
            os.fsync(fd)
        finally:
            buffer.close()
    return markers


def wipe_signatures(device):
    """Remove partition-table and file-system signatures from ``device``
    (a ``BlockDevice``); raises when a step fails. See
    :func:`teeth_agent.blockdev.wipe_signatures`."""
    blockdev.wipe_signatures(device["path"],
                             forget_partitions=bool(device.get("partitions")))


def verify_erased(path, method, markers, samples=64, rng=None):
    """Read ``path`` back with O_DIRECT and check the erase.

    Always: the first and last MiB are zero (they were wiped). For
    ``overwrite``: ``samples`` random 4 KiB-aligned blocks and the marker
    offsets are zero. For device-level methods: no marker survived (their
    data may read back as anything else, e.g. after a crypto erase).
    Returns ``{"verified": bool, "problems": [str], "blocks_checked": n}``.
    """
    rng = rng or random.SystemRandom()
    problems = []
    checked = 0
    zero_block = bytes(_MARKER_SIZE)
    with blockdev.open_direct(path) as fd:
        size = blockdev.fd_size(fd)
        sector = blockdev.logical_block_size(fd)
        for offset, length in blockdev.edges(size, sector):
            position = offset
            while position < offset + length:
                chunk = min(MIB, offset + length - position)
                if _read_direct(fd, position, chunk).count(0) != chunk:
                    problems.append("bytes %d-%d are not zero"
                                    % (position, position + chunk))
                position += chunk
                checked += 1
        for offset, marker in markers:
            data = _read_direct(fd, offset, len(marker))
            checked += 1
            if method == "overwrite":
                if data != bytes(len(marker)):
                    problems.append("block at %d is not zero" % offset)
            elif data == marker:
                problems.append("the marker at offset %d survived the "
                                "erase" % offset)
        if method == "overwrite" and size >= _MARKER_SIZE:
            blocks = size // _MARKER_SIZE
            for _ in range(samples):
                offset = rng.randrange(blocks) * _MARKER_SIZE
                checked += 1
                if _read_direct(fd, offset, _MARKER_SIZE) != zero_block:
                    problems.append("block at %d is not zero" % offset)
    return {"verified": not problems, "problems": problems[:20],
            "blocks_checked": checked}


# -- progress while a device works on its own ---------------------------------

@contextlib.contextmanager
def _estimated_progress(progress, size, estimate_s, clock=time.monotonic,
                        interval=5.0):
    """Report time-based progress while a blocking command runs.

    The device's own estimate of the duration drives it, capped below 100%.
    """
    if not estimate_s:
        yield
        return
    stop = threading.Event()
    started = clock()

    def tick():
        while not stop.wait(interval):
            fraction = min((clock() - started) / estimate_s, 0.99)
            progress(int(size * fraction), size)

    ticker = threading.Thread(target=tick, daemon=True,
                              name="erase-estimate")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


# -- NVMe ---------------------------------------------------------------------

_NVME_SANACT = {"nvme_sanitize_block": 2, "nvme_sanitize_overwrite": 3,
                "nvme_sanitize_crypto": 4}


def _nvme_json(*argv):
    out, _ = processes.execute("nvme", *argv, "--output-format=json")
    return json.loads(out)


def _nvme_namespace_count(manager, device):
    """Namespaces of the controller that owns ``device`` (from sysfs)."""
    name = _device_name(device)
    controller = re.match(r"(nvme\d+)n\d+", name).group(1)
    sysfs = _conf_value(manager, "sysfs_root", "/sys", group="hardware")
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
        return _poll(lambda: _nvme_sanitize_state(path), path, method, size,
                     progress, _poll_interval(manager), sleep)
    ses = 2 if method == "nvme_format_crypto" else 1
    namespace = _nvme_json("id-ns", path)
    lbaf = int(namespace.get("flbas", 0)) & 0xF
    processes.execute("nvme", "format", path, "--ses=%d" % ses,
                      "--lbaf=%d" % lbaf, "--force",
                      "--timeout=%d" % (_LONG_COMMAND_TIMEOUT * 1000),
                      timeout=_LONG_COMMAND_TIMEOUT)
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


#: A device-level erase whose progress does not move for this long is
#: declared stuck (a large disk's overwrite sanitize takes hours, but its
#: progress counter keeps moving).
STALL_TIMEOUT = 4 * 3600


def _poll(read_state, path, method, size, progress, interval, sleep,
          max_waiting=12, stall_timeout=STALL_TIMEOUT, clock=time.monotonic):
    """Poll ``read_state() -> (state, value)`` until done or failed.

    ``state`` is ``"running"`` (value: fraction), ``"done"``,
    ``"failed"`` (value: reason) or ``"waiting"`` (the device does not
    show the operation yet; allowed ``max_waiting`` times in a row). A
    ``"running"`` fraction that does not change for ``stall_timeout``
    seconds fails the erase instead of waiting forever.
    """
    waiting = 0
    last_value = None
    last_change = clock()
    while True:
        state, value = read_state()
        if state == "done":
            return {}
        if state == "failed":
            raise EraseError("%s failed on %s: %s" % (method, path, value))
        if state == "waiting":
            waiting += 1
            if waiting > max_waiting:
                raise EraseError("%s on %s: the device never reported the "
                                 "operation as started" % (method, path))
        else:
            waiting = 0
            if value != last_value:
                last_value, last_change = value, clock()
            elif clock() - last_change > stall_timeout:
                raise EraseError("%s on %s: no progress for %ds (stuck at "
                                 "%.1f%%)" % (method, path, stall_timeout,
                                              100.0 * value))
            progress(int(size * min(value, 0.999)), size)
        sleep(interval)


# -- ATA (hdparm) -------------------------------------------------------------

@dataclasses.dataclass
class AtaState:
    """What ``hdparm -I`` says about a drive's erase features."""

    is_ata: bool = False
    serial: str = ""
    security: bool = False
    enabled: bool = False
    locked: bool = False
    frozen: bool = False
    enhanced: bool = False
    erase_minutes: int = 0
    enhanced_minutes: int = 0
    sanitize: bool = False
    sanitize_crypto: bool = False
    sanitize_block: bool = False
    sanitize_overwrite: bool = False


def parse_hdparm_identify(text):
    """Parse ``hdparm -I`` output into an :class:`AtaState`."""
    state = AtaState()
    state.is_ata = bool(re.search(r"^ATA device", text, re.M))
    serial = re.search(r"^\s*Serial Number:\s*(\S.*?)\s*$", text, re.M)
    state.serial = serial.group(1) if serial else ""
    section = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.split(":", 1)[0].strip()
            continue
        stripped = line.strip()
        if section == "Security":
            match = re.match(r"(not\s+)?(supported|enabled|locked|frozen)"
                             r"(:\s*enhanced erase)?\s*$", stripped)
            if match:
                negated = bool(match.group(1))
                if match.group(3):
                    state.enhanced = not negated
                elif match.group(2) == "supported":
                    state.security = not negated
                else:
                    setattr(state, match.group(2), not negated)
            for minutes, label in re.findall(
                    r"(\d+)min for (ENHANCED )?SECURITY ERASE UNIT",
                    stripped):
                if label:
                    state.enhanced_minutes = int(minutes)
                else:
                    state.erase_minutes = int(minutes)
        elif section == "Commands/features":
            feature = stripped.lstrip("*").strip()
            if feature == "SANITIZE feature set":
                state.sanitize = True
            elif feature == "CRYPTO_SCRAMBLE_EXT command":
                state.sanitize_crypto = True
            elif feature == "BLOCK_ERASE_EXT command":
                state.sanitize_block = True
            elif feature == "OVERWRITE_EXT command":
                state.sanitize_overwrite = True
    return state


def _ata_state(path):
    # hdparm's exit status says nothing about the drive's state: only the
    # identify data does.
    _, out, _ = processes.run("hdparm", "-I", path)
    return parse_hdparm_identify(out or "")


def _probe_sd(manager, device):
    path = device["path"]
    state = _ata_state(path)
    if not state.is_ata:
        return _probe_scsi(device)
    supported, reasons = set(), {}
    for method in ("scsi_sanitize_crypto", "scsi_sanitize_block",
                   "scsi_sanitize_overwrite"):
        reasons[method] = ("%s is an ATA device (ATA methods apply)" % path)
    for method, flag in (("ata_sanitize_crypto", "sanitize_crypto"),
                         ("ata_sanitize_block", "sanitize_block"),
                         ("ata_sanitize_overwrite", "sanitize_overwrite")):
        if not state.sanitize:
            reasons[method] = "the drive has no ATA SANITIZE feature set"
        elif not getattr(state, flag):
            reasons[method] = ("the drive's SANITIZE feature set lacks "
                               "this operation")
        else:
            supported.add(method)
    store = _password_store(manager)
    if state.security and state.enabled and not state.frozen and \
            store is not None:
        # A password left by an agent that died mid-erase is in the state
        # directory: remove it from the drive, then judge the drive again.
        # A drive whose password the agent never stored is left alone.
        found = store.lookup(state.serial, path)
        if found is not None and _ata_release_password(path, found):
            store.remove(state.serial, path)
        state = _ata_state(path)
    reason = None
    if not state.security:
        reason = "the drive has no ATA security feature set"
    elif state.frozen:
        reason = ("the drive's security is frozen (the firmware froze it at "
                  "boot; a suspend/resume or hot-plug unfreezes it)")
    elif state.locked or state.enabled:
        reason = "the drive's security is enabled with an unknown password"
    elif store is None:
        reason = ("[DEFAULT] state_dir is empty: without a place to keep "
                  "the drive's password the agent could not unlock the drive "
                  "after a restart")
    if reason:
        reasons["ata_security_erase"] = reason
        reasons["ata_security_erase_enhanced"] = reason
    else:
        supported.add("ata_security_erase")
        if state.enhanced:
            supported.add("ata_security_erase_enhanced")
        else:
            reasons["ata_security_erase_enhanced"] = (
                "the drive does not support enhanced security erase")
    return supported, reasons


#: Bytes of randomness in an ATA password; as hex it is 24 characters,
#: within the 32 bytes of the ATA password field.
ATA_PASSWORD_BYTES = 12


class AtaPasswordStore:
    """The agent's ATA security passwords, one file per drive.

    Files live in ``<state_dir>/ata-passwords`` (directory 0700, files
    0600, written and fsynced before the password is set on the drive).
    A drive is known by the serial number it reports, else by its path;
    the file name is a digest of that key, so no serial can name a file
    outside the directory. The password is removed once the drive's
    security is disabled again, so an agent that dies mid-erase finds it
    on its next run and unlocks the drive, and no password outlives the
    erase that needed it.
    """

    DIRECTORY = "ata-passwords"

    def __init__(self, state_dir):
        self.directory = os.path.join(state_dir, self.DIRECTORY)

    @staticmethod
    def _keys(serial, path):
        return (["serial:%s" % serial] if serial else []) + \
            ["path:%s" % path]

    def path_of(self, serial, path):
        """The file that holds (or would hold) the drive's password."""
        return self._file(self._keys(serial, path)[0])

    def _file(self, key):
        digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
        return os.path.join(self.directory, "drive-%s.json" % digest[:40])

    def _sync_directory(self):
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def create(self, serial, path):
        """Make, store and return a new random password for the drive.

        Raises OSError when it cannot be stored (then nothing may be set
        on the drive).
        """
        password = secrets.token_hex(ATA_PASSWORD_BYTES)
        key = self._keys(serial, path)[0]
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        final = self._file(key)
        temporary = final + ".tmp"
        data = json.dumps({"key": key, "serial": serial or None,
                           "path": path, "password": password,
                           "created": time.time()}).encode("utf-8")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                     | os.O_NOFOLLOW, 0o600)
        try:
            # An old file of that name may have had another mode.
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        self._sync_directory()
        return password

    def lookup(self, serial, path):
        """The stored password of the drive, or None."""
        for key in self._keys(serial, path):
            try:
                with open(self._file(key), encoding="utf-8") as stream:
                    record = json.load(stream)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                LOG.error("cannot read the stored ATA password of %s: %s",
                          path, exc)
                continue
            password = record.get("password") if \
                isinstance(record, dict) else None
            if isinstance(password, str) and password:
                return password
        return None

    def remove(self, serial, path):
        """Forget the drive's password (every key it may be stored under)."""
        removed = False
        for key in self._keys(serial, path):
            try:
                os.unlink(self._file(key))
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            self._sync_directory()


def _password_store(manager):
    """The :class:`AtaPasswordStore` under ``[DEFAULT] state_dir``, or None
    when the agent keeps no state on disk."""
    try:
        state_dir = manager.conf.state_dir
    except AttributeError:
        # Managers built without the agent's options.
        return None
    return AtaPasswordStore(state_dir) if state_dir else None


def _ata_release_password(path, password):
    """Try to remove the agent's ``password`` from a drive.

    Never raises. Returns True when the drive's security ends up disabled.
    The password is never logged.
    """
    state = _ata_state(path)
    try:
        if state.locked:
            processes.run("hdparm", "--user-master", "u",
                          "--security-unlock", password, path,
                          hide=[password])
        if state.enabled or state.locked:
            processes.run("hdparm", "--user-master", "u",
                          "--security-disable", password, path,
                          hide=[password])
        state = _ata_state(path)
    except processes.ProcessError as exc:
        LOG.error("could not remove the security password of %s: %s",
                  path, exc)
        return False
    if state.enabled or state.locked:
        LOG.error("%s still has security enabled; the agent's stored "
                  "password did not unlock it", path)
        return False
    return True


def _erase_ata(manager, device, method, size, progress, sleep=time.sleep):
    path = device["path"]
    if method.startswith("ata_sanitize_"):
        # The overwrite pattern is a 32-bit number: 0 writes zeroes, in one
        # pass (hdparm's default of 0 passes means 16).
        action = {"ata_sanitize_crypto": ["--sanitize-crypto-scramble"],
                  "ata_sanitize_block": ["--sanitize-block-erase"],
                  "ata_sanitize_overwrite": ["--sanitize-overwrite-passes",
                                             "1", "--sanitize-overwrite",
                                             "0"]}[method]
        processes.execute("hdparm", "--yes-i-know-what-i-am-doing",
                          *action, path)
        return _poll(lambda: _ata_sanitize_state(path), path, method, size,
                     progress, _poll_interval(manager), sleep)
    store = _password_store(manager)
    if store is None:
        raise EraseError("%s needs [DEFAULT] state_dir to keep the drive's "
                         "password during the erase" % method)
    return _ata_security_erase(store, path, method, size, progress)


def parse_hdparm_sanitize_status(text):
    """``(state, value)`` for :func:`_poll` from hdparm --sanitize-status."""
    if "SD3" in text or "completed unsuccessfully" in text:
        return "failed", "the drive reports the sanitize failed"
    if "SD1" in text:
        return "failed", "the drive's sanitize is frozen"
    if "SD2" in text:
        match = re.search(r"Progress:\s*0x[0-9a-fA-F]+\s*\((\d+)%\)", text)
        return "running", int(match.group(1)) / 100.0 if match else 0.0
    if "Completed Without Error" in text:
        return "done", 1.0
    return "waiting", 0.0


def _ata_sanitize_state(path):
    _, out, _ = processes.run("hdparm", "--sanitize-status", path)
    return parse_hdparm_sanitize_status(out or "")


def _ata_security_erase(store, path, method, size, progress):
    enhanced = method == "ata_security_erase_enhanced"
    state = _ata_state(path)
    if state.frozen:
        raise EraseError("%s is frozen; security erase is impossible until "
                         "it is unfrozen" % path)
    if not state.security or state.enabled or state.locked:
        raise EraseError("%s is not ready for a security erase (security "
                         "supported=%s enabled=%s locked=%s)"
                         % (path, state.security, state.enabled,
                            state.locked))
    minutes = state.enhanced_minutes if enhanced else state.erase_minutes
    # Stored before it is set: an agent that dies from here on finds it on
    # its next run (see _probe_sd).
    password = store.create(state.serial, path)
    try:
        processes.run("hdparm", "--user-master", "u", "--security-set-pass",
                      password, path, hide=[password])
        if not _ata_state(path).enabled:
            raise EraseError("%s did not accept the security password "
                             "(security is still disabled)" % path)
        timeout = max(2 * 60 * minutes, 3600) if minutes else \
            _LONG_COMMAND_TIMEOUT
        flag = "--security-erase-enhanced" if enhanced else \
            "--security-erase"
        with _estimated_progress(progress, size, 60 * minutes):
            processes.run("hdparm", "--user-master", "u", flag,
                          password, path, timeout=timeout, hide=[password])
        after = _ata_state(path)
        if after.enabled or after.locked:
            raise EraseError("%s still has security enabled after the "
                             "erase: the drive did not erase" % path)
    except BaseException:
        if _ata_release_password(path, password):
            store.remove(state.serial, path)
        else:
            LOG.error("%s may be left with security enabled; its password "
                      "stays in %s so that the agent's next run (or an "
                      "operator) can unlock it", path,
                      store.path_of(state.serial, path))
        raise
    store.remove(state.serial, path)
    return {"estimated_minutes": minutes or None}


# -- SCSI (sg3-utils) ---------------------------------------------------------

_SCSI_SANITIZE = {"scsi_sanitize_overwrite": (1, ["--overwrite", "--zero"]),
                  "scsi_sanitize_block": (2, ["--block"]),
                  "scsi_sanitize_crypto": (3, ["--crypto"])}


def parse_sg_opcodes(text):
    """True when ``sg_opcodes -o OP,SA`` says the command is supported."""
    match = re.search(r"Command is (.+)", text)
    return bool(match) and match.group(1).strip().startswith("supported")


def _probe_scsi(device):
    path = device["path"]
    supported, reasons = set(), {}
    for method in METHODS.values():
        if method.family == "ata":
            reasons[method.name] = "%s is not an ATA device" % path
    for method, (action, _) in _SCSI_SANITIZE.items():
        rc, out, err = processes.run("sg_opcodes", "--opcode=0x48,%d"
                                     % action, path)
        if rc == 0 and parse_sg_opcodes(out):
            supported.add(method)
        else:
            reasons[method] = ("the device does not report SANITIZE service "
                               "action %d as supported" % action)
    return supported, reasons


def parse_sg_requests(rc, text):
    """``(state, value)`` for :func:`_poll` from sg_requests --progress."""
    match = re.search(r"Progress indication:\s*([\d.]+)%", text)
    if match:
        return "running", float(match.group(1)) / 100.0
    if rc != 0 or re.search(r"sanitize.*fail|medium error", text, re.I):
        return "failed", "the device reports: %s" % text.strip()[-200:]
    return "done", 1.0


def _erase_scsi(manager, device, method, size, progress, sleep=time.sleep):
    path = device["path"]
    _, flags = _SCSI_SANITIZE[method]
    processes.execute("sg_sanitize", "--quick", "--early", *flags, path)

    def state():
        rc, out, err = processes.run("sg_requests", "--progress", path)
        return parse_sg_requests(rc, (out or "") + (err or ""))

    return _poll(state, path, method, size, progress,
                 _poll_interval(manager), sleep)
