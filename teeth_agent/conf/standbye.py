"""[standbye] options: the image cache and image writes."""

from oslo_config import cfg

group = cfg.OptGroup(
    "standbye", title="Standby",
    help="Caching, writing and booting tenant images.")

opts = [
    cfg.StrOpt(
        "image_cache_dir",
        default="/var/cache/teeth-agent/images",
        help="Directory where images are cached ahead of time."),
    cfg.IntOpt(
        "cache_reserve",
        default=1024 * 1024 * 1024,
        min=0,
        help="Bytes of the cache directory's file system that caching leaves "
             "free."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)
