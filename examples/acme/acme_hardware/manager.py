"""The ACME Roadrunner 9000 hardware manager.

It selects itself only on that chassis (DMI ``sys_vendor`` "ACME",
``product_name`` "Roadrunner 9000"). It derives from the interface's base
class and implements only what the chassis does differently; every other
method declines (the base class's default), so the dispatcher asks the next
manager, the generic Linux one, and ``teeth-agent inventory`` lists ACME
only where ACME code answers. What it adds:

- firmware versions and updates of the ``bmc`` and ``nic0`` components.
  This example *simulates* them: versions live in a JSON state file and an
  update "flashes" an image by checking its header and recording the
  version. A real vendor manager would call its flashing tool here through
  ``teeth_agent.processes.execute``;
- a quality-control key, ``spec["acme"] = {"bmc_min_version": "2.0"}``.

The state file is ``[acme] firmware_state_file`` when set, else the
``ACME_FIRMWARE_STATE`` environment variable, else
``/var/lib/acme-teeth/firmware.json``.
"""

import json
import logging
import os
import re
import tempfile

from oslo_config import cfg

from teeth_agent.hardware import base
from teeth_agent.hardware import sysfs

LOG = logging.getLogger(__name__)

VENDOR = "ACME"
PRODUCT = "Roadrunner 9000"

#: Versions a chassis leaves the factory with (before any update).
FACTORY_VERSIONS = {"bmc": "1.4.0", "nic0": "20.5.13"}

#: An image starts with this, then the version it carries, then a newline.
IMAGE_MAGIC = b"ACMEFW"
_HEADER_BYTES = 256

DEFAULT_STATE_FILE = "/var/lib/acme-teeth/firmware.json"
STATE_FILE_ENV = "ACME_FIRMWARE_STATE"

opts = [
    cfg.StrOpt(
        "firmware_state_file",
        help="The JSON file in which the simulated ACME firmware keeps the "
             "installed version of each component. When unset, the "
             "ACME_FIRMWARE_STATE environment variable names it, else "
             "/var/lib/acme-teeth/firmware.json is used."),
]


def list_opts():
    """The ``[acme]`` options, for oslo-config-generator."""
    return [("acme", opts)]


def version_key(version):
    """Order versions numerically: ``"2.10"`` comes after ``"2.9"``."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


class FirmwareState:
    """The installed versions, kept in a JSON file.

    A missing file means factory versions. Writes replace the file
    atomically, so a crash never leaves half a state behind.
    """

    def __init__(self, path):
        self.path = path

    def versions(self):
        """``{component: version}`` for every ACME component."""
        versions = dict(FACTORY_VERSIONS)
        try:
            with open(self.path, encoding="utf-8") as stream:
                stored = json.load(stream)
        except FileNotFoundError:
            return versions
        except (OSError, ValueError) as exc:
            raise base.HardwareManagerError(
                "ACME firmware state %s is unreadable: %s"
                % (self.path, exc)) from exc
        if not isinstance(stored, dict):
            raise base.HardwareManagerError(
                "ACME firmware state %s is not a JSON object" % self.path)
        versions.update({k: v for k, v in stored.items() if k in versions})
        return versions

    def record(self, component, version):
        """Store ``version`` as installed on ``component``."""
        versions = self.versions()
        versions[component] = version
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory,
                                             prefix=".firmware-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(versions, stream, indent=2, sort_keys=True)
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def read_image_version(image_path):
    """The version an ACME firmware image carries.

    Raises :class:`~teeth_agent.hardware.base.HardwareManagerError` when
    the file is not an ACME image.
    """
    try:
        with open(image_path, "rb") as stream:
            header = stream.read(_HEADER_BYTES)
    except OSError as exc:
        raise base.HardwareManagerError("cannot read firmware image %s: %s"
                                        % (image_path, exc)) from exc
    if not header.startswith(IMAGE_MAGIC) or b"\n" not in header:
        raise base.HardwareManagerError(
            "%s is not an ACME firmware image (bad magic)" % image_path)
    line = header[len(IMAGE_MAGIC):header.index(b"\n")]
    try:
        version = line.decode("ascii").strip()
    except UnicodeDecodeError:
        version = ""
    if not version:
        raise base.HardwareManagerError(
            "%s is not an ACME firmware image (no version)" % image_path)
    return version


class AcmeHardwareManager(base.HardwareManager):
    """The ACME Roadrunner 9000: firmware and QC; the generic Linux
    manager serves everything else."""

    def _dmi(self, field):
        # Below [hardware] sysfs_root, like the generic manager, so the
        # test fixtures' fake machine is read the same way.
        return sysfs.read_text(os.path.join(
            self.conf.hardware.sysfs_root, "class", "dmi", "id", field))

    def evaluate_hardware_support(self):
        if self._dmi("sys_vendor") == VENDOR and \
                self._dmi("product_name") == PRODUCT:
            return base.HardwareSupport.SERVICE_PROVIDER
        return base.HardwareSupport.NONE

    def initialize(self):
        # Registered here, not at import time, so the options exist only
        # where this manager is actually loaded.
        self.conf.register_opts(opts, group="acme")
        self.firmware = FirmwareState(self._state_file())
        LOG.info("ACME firmware state in %s", self.firmware.path)

    def _state_file(self):
        """Where the simulated firmware versions are kept."""
        return (self.conf.acme.firmware_state_file
                or os.environ.get(STATE_FILE_ENV)
                or DEFAULT_STATE_FILE)

    def get_firmware_versions(self):
        return self.firmware.versions()

    def update_firmware(self, component, image_path, version):
        if component not in FACTORY_VERSIONS:
            raise base.IncompatibleHardwareMethodError(
                "ACME manages %s, not %s"
                % (", ".join(sorted(FACTORY_VERSIONS)), component))
        carried = read_image_version(image_path)
        if carried != version:
            raise base.HardwareManagerError(
                "%s carries %s version %s, not the requested %s"
                % (image_path, component, carried, version))
        previous = self.firmware.versions()[component]
        self.firmware.record(component, version)
        LOG.info("ACME %s firmware updated from %s to %s", component,
                 previous, version)
        return {"component": component, "previous_version": previous,
                "version": version,
                "image_bytes": os.path.getsize(image_path)}

    def run_qc_checks(self, spec, inventory):
        wanted = spec.get("acme")
        if not wanted:
            raise base.IncompatibleHardwareMethodError("no ACME QC keys")
        checks = []
        for key, expected in sorted(wanted.items()):
            if key == "bmc_min_version":
                actual = self.firmware.versions()["bmc"]
                checks.append({
                    "name": "acme.bmc_min_version",
                    "expected": ">= %s" % expected,
                    "actual": actual,
                    "pass": version_key(actual) >= version_key(
                        str(expected)),
                })
            else:
                # A misspelt key must not pass silently.
                checks.append({"name": "acme.%s" % key,
                               "expected": expected,
                               "actual": "unknown ACME QC key",
                               "pass": False})
        return checks
