"""ATA erase: sanitize and security erase through hdparm, the one-shot
passwords they need and the parsers of hdparm's output."""

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import time

from teeth_agent.hardware.erase import catalogue
from teeth_agent.hardware.erase import polling
from teeth_agent.hardware.erase import scsi
from teeth_agent import processes

LOG = logging.getLogger(__name__)


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
        return scsi._probe_scsi(device)
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
        return polling._poll(
            lambda: _ata_sanitize_state(path), path, method, size,
            progress, polling._poll_interval(manager), sleep)
    store = _password_store(manager)
    if store is None:
        raise catalogue.EraseError(
            "%s needs [DEFAULT] state_dir to keep the drive's "
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
        raise catalogue.EraseError(
            "%s is frozen; security erase is impossible until "
            "it is unfrozen" % path)
    if not state.security or state.enabled or state.locked:
        raise catalogue.EraseError(
            "%s is not ready for a security erase (security "
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
            raise catalogue.EraseError(
                "%s did not accept the security password "
                "(security is still disabled)" % path)
        timeout = max(2 * 60 * minutes, 3600) if minutes else \
            polling._LONG_COMMAND_TIMEOUT
        flag = "--security-erase-enhanced" if enhanced else \
            "--security-erase"
        with polling._estimated_progress(progress, size, 60 * minutes):
            processes.run("hdparm", "--user-master", "u", flag,
                          password, path, timeout=timeout, hide=[password])
        after = _ata_state(path)
        if after.enabled or after.locked:
            raise catalogue.EraseError(
                "%s still has security enabled after the "
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
