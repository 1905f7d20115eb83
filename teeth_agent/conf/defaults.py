"""Defaults the options share with the code that uses them.

conf is a leaf of the import graph (docs/architecture.md): it imports
nothing of the project outside teeth_agent.conf. These values repeat
:data:`teeth_agent.protocol.DEFAULT_MAX_LINE_LENGTH` and the erase
catalogue of :mod:`teeth_agent.hardware.erase`;
tests/unit/conf/test_defaults.py
fails when they differ.
"""

#: The default maximum line length of both ends, in bytes.
DEFAULT_MAX_LINE_LENGTH = 1024 * 1024

#: Every erase method name (hardware.erase.KNOWN_METHODS).
ERASE_METHODS = (
    "nvme_sanitize_crypto",
    "nvme_sanitize_block",
    "nvme_format_crypto",
    "ata_sanitize_crypto",
    "ata_sanitize_block",
    "ata_security_erase_enhanced",
    "scsi_sanitize_crypto",
    "scsi_sanitize_block",
    "nvme_sanitize_overwrite",
    "ata_sanitize_overwrite",
    "scsi_sanitize_overwrite",
    "nvme_format_user",
    "ata_security_erase",
    "overwrite",
)

#: The default of ``[decom] erase_methods``: every method, strongest first
#: (hardware.erase.DEFAULT_METHOD_ORDER). The catalogue already lists the
#: methods strongest first, so the two are the same tuple; the test above
#: checks each against the catalogue, and tells when they part.
DEFAULT_ERASE_ORDER = ERASE_METHODS

#: ``gc.set_threshold`` of a ``teeth-endpoint serve`` process
#: (``[endpoint] gc_thresholds``); CPython's own are 700, 10, 10.
GC_THRESHOLDS = (50000, 20, 100)
