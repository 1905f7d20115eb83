"""[decom] options: how disks are erased and firmware is fetched."""

from oslo_config import cfg
from oslo_config import types

from teeth_agent.conf import group as conf_group

from teeth_agent.hardware import erase

group = cfg.OptGroup(
    "decom", title="Decommissioning",
    help="Secure erase, firmware and quality control of a used chassis.")

opts = [
    cfg.ListOpt(
        "erase_methods",
        item_type=types.String(choices=erase.KNOWN_METHODS),
        default=["nvme_sanitize_crypto", "nvme_sanitize_block",
                 "nvme_format_crypto", "nvme_format_user",
                 "ata_sanitize_crypto", "ata_sanitize_block",
                 "ata_security_erase_enhanced", "ata_security_erase",
                 "scsi_sanitize_crypto", "scsi_sanitize_block",
                 "nvme_sanitize_overwrite", "ata_sanitize_overwrite",
                 "scsi_sanitize_overwrite", "overwrite"],
        help="The erase methods the agent may use, in order of preference. "
             "For each device the first method in this list that the device "
             "supports is used. Remove a method to forbid it; keep "
             "overwrite last as the universal fallback."),
    cfg.IntOpt(
        "erase_concurrency",
        default=4,
        min=1,
        help="How many devices are erased at the same time."),
    cfg.IntOpt(
        "erase_block_size",
        default=8 * 1024 * 1024,
        min=64 * 1024,
        max=256 * 1024 * 1024,
        help="The size in bytes of each direct write of the overwrite "
             "method. It is rounded down to a multiple of the device's "
             "sector size. Large writes keep the device busy; 4 to 16 MiB "
             "reach full speed on common hardware."),
    cfg.IntOpt(
        "erase_verify_samples",
        default=64,
        min=0,
        help="How many random 4 KiB blocks are read back, besides the first "
             "and last MiB, to check that an overwrite left only zeroes."),
    cfg.FloatOpt(
        "erase_poll_interval",
        default=5.0,
        min=0.01,
        help="Seconds between two readings of a device's own progress "
             "during a sanitize (nvme sanitize-log, hdparm "
             "--sanitize-status, sg_requests)."),
    cfg.FloatOpt(
        "firmware_download_timeout",
        default=60.0,
        min=1.0,
        help="Seconds a firmware download may wait for the server to answer "
             "or to send more data before the attempt fails."),
    cfg.IntOpt(
        "firmware_download_attempts",
        default=3,
        min=1,
        help="How many times a firmware download is tried when the server "
             "cannot be reached or answers with a server error. Client "
             "errors (4xx) and checksum mismatches are never retried."),
    cfg.IntOpt(
        "firmware_max_bytes",
        default=512 * 1024 * 1024,
        min=1,
        help="The largest firmware image, in bytes, the agent downloads. A "
             "larger one fails the component."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
