"""[decom] options: how disks are erased."""

from oslo_config import cfg

group = cfg.OptGroup(
    "decom", title="Decommissioning",
    help="Secure erase, firmware and quality control of a used chassis.")

opts = [
    cfg.ListOpt(
        "erase_methods",
        default=["nvme_sanitize_crypto", "nvme_sanitize_block",
                 "nvme_format_crypto", "nvme_format_user",
                 "ata_sanitize_crypto", "ata_sanitize_block",
                 "ata_security_erase_enhanced", "ata_security_erase",
                 "scsi_sanitize_crypto", "scsi_sanitize_block",
                 "nvme_sanitize_overwrite", "scsi_sanitize_overwrite",
                 "overwrite"],
        help="The erase methods the agent may use, in order of preference. "
             "For each device the first method in this list that the device "
             "supports is used. Remove a method to forbid it; keep "
             "overwrite last as the universal fallback."),
    cfg.IntOpt(
        "erase_concurrency",
        default=4,
        min=1,
        help="How many devices are erased at the same time."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)
