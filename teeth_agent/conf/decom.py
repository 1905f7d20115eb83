"""[decom] options: how disks are erased and firmware is fetched."""

from oslo_config import cfg
from oslo_config import types

from teeth_agent.conf import defaults
from teeth_agent.conf import group as conf_group


group = cfg.OptGroup(
    "decom", title="Decommissioning",
    help="Secure erase, firmware and quality control of a used chassis.")

opts = [
    cfg.ListOpt(
        "erase_methods",
        item_type=types.String(choices=defaults.ERASE_METHODS),
        default=list(defaults.DEFAULT_ERASE_ORDER),
        help="The erase methods the agent may use, in order of preference. "
             "For each device the first method in this list that the device "
             "supports (and that meets minimum_nist_category) is used; a "
             "list given here is used in the order given. The default is "
             "every known method, strongest first: the NIST SP 800-88 Purge "
             "methods before the Clear ones, overwrite last as the universal "
             "fallback. Remove a method to forbid it."),
    cfg.StrOpt(
        "minimum_nist_category",
        default="purge",
        choices=[("purge", "A device that supports a Purge method must be "
                  "purged: if no allowed Purge method succeeds, the device "
                  "fails. A device that supports no Purge method (a loop or "
                  "virtual disk) gets its best Clear method, and its result "
                  "says that no Purge was offered."),
                 ("clear", "Any method in erase_methods is acceptable, also "
                  "a Clear method on a device that could be purged.")],
        help="The weakest NIST SP 800-88 category an erase may reach. A "
             "device that cannot reach it fails instead of silently getting "
             "less; the result of decom.disk_erase says which category each "
             "device got."),
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
    cfg.BoolOpt(
        "remove_boot_entries",
        default=True,
        help="Whether decom.disk_erase removes the UEFI boot entries that "
             "boot a partition of a disk it erased, so the firmware does "
             "not keep trying a system that is gone. Only entries booting "
             "those disks' partitions are removed, never network, setup or "
             "firmware entries; nothing changes on a machine booted in "
             "BIOS mode."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
