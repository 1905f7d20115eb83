"""The erase catalogue: every known method, its device family and the
NIST SP 800-88 category it meets, and the capabilities a probe reports."""

import dataclasses
import os

from teeth_agent.disk import blockdev
from teeth_agent.hardware import base


MIB = blockdev.MIB
CLEAR = "Clear"
PURGE = "Purge"


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
