"""[standbye] options: the image cache and image writes."""

import ipaddress

from oslo_config import cfg

from teeth_agent.conf import group as conf_group


def _network(value):
    """A CIDR, normalised; ValueError (so oslo.config refuses the file)
    when it is not one."""
    return str(ipaddress.ip_network(value.strip(), strict=False))


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
    cfg.StrOpt(
        "work_dir",
        default="/var/lib/teeth-agent/standbye",
        help="Directory for files the standbye commands keep between steps: "
             "the record of the prepared image, qcow2 images downloaded "
             "before conversion when they are not cached, and kernels "
             "copied out of an image for kexec. It should not be on a tmpfs "
             "when large qcow2 images are written without being cached "
             "first."),
    cfg.BoolOpt(
        "allow_md5",
        default=False,
        help="Accept images whose only checksum is md5. MD5 is broken for "
             "collisions, so by default an image must carry a sha256 or "
             "sha512 checksum."),
    cfg.IntOpt(
        "download_retries",
        default=5,
        min=0,
        help="How many times a download is retried after a transient "
             "failure (connection error, timeout, 5xx answer), across all "
             "of an image's URLs, before it fails. A 4xx answer, a checksum "
             "mismatch or a full disk is never retried."),
    cfg.FloatOpt(
        "download_backoff",
        default=1.0,
        min=0.0,
        help="Seconds to wait before the first retry of a download; each "
             "further retry waits twice as long, up to 30 seconds."),
    cfg.FloatOpt(
        "download_timeout",
        default=60.0,
        min=0.1,
        help="Seconds a download may wait to connect or for the next bytes "
             "before the attempt counts as failed and is retried."),
    cfg.IntOpt(
        "write_buffer_size",
        default=4 * 1024 * 1024,
        min=64 * 1024,
        help="Bytes per buffer when an image streams to a device. Download, "
             "checksum and write run on separate threads and hand over "
             "buffers of this size; write_buffer_count of them bound the "
             "memory used."),
    cfg.IntOpt(
        "write_buffer_count",
        default=8,
        min=2,
        help="How many write buffers an image stream may hold at once."),
    cfg.BoolOpt(
        "pin_checksum_thread",
        default=True,
        help="While an image streams, run its checksum thread on a CPU of "
             "its own (of those the agent may use, the one that has served "
             "the fewest device interrupts) and its download thread on the "
             "others. The checksum is the stream's slowest stage, so every "
             "moment something else takes its CPU slows the whole write "
             "(up to 20 % on a 2-CPU machine). Has no effect when the agent "
             "may use only one CPU."),
    cfg.IntOpt(
        "max_config_drive_size",
        default=64 * 1024 * 1024,
        min=1024 * 1024,
        max=64 * 1024 * 1024,
        help="The largest config drive, in bytes, the agent writes. The "
             "partition it creates for it is the image rounded up to whole "
             "MiB and never larger than this."),
    cfg.IntOpt(
        "max_kernel_size",
        # teeth_agent.images.boot.MAX_KERNEL_SIZE
        default=128 * 1024 * 1024,
        min=1024 * 1024,
        help="The largest kernel, in bytes, run_image copies out of an "
             "image to kexec it. The copy is made in work_dir, which is RAM "
             "in the ramdisk; distribution kernels are 10 to 20 MiB. An "
             "image whose kernel is larger, or mostly holes, is booted by a "
             "reboot instead."),
    cfg.IntOpt(
        "max_initrd_size",
        # teeth_agent.images.boot.MAX_INITRDS_TOTAL
        default=512 * 1024 * 1024,
        min=1024 * 1024,
        help="The largest total, in bytes, of the initrds of one boot entry "
             "run_image copies out of an image to kexec it. They are "
             "concatenated in work_dir, which is RAM in the ramdisk; a "
             "generic initramfs with every driver and firmware is 100 to "
             "300 MiB. An image whose initrds are larger, or mostly holes, is "
             "booted by a reboot instead."),
    cfg.IntOpt(
        "qemu_img_convert_cpu_limit",
        default=3600,
        min=1,
        help="Seconds of CPU time qemu-img may use to convert one qcow2 "
             "image to the install device (its address space is limited to "
             "1 GiB). A large, heavily compressed image needs more; the "
             "limit stops a crafted image from running it forever."),
    # -- download and write limits (issue 11) --
    cfg.FloatOpt(
        "download_attempt_timeout",
        default=600.0,
        min=1.0,
        help="Seconds every download attempt (one connection to one URL) "
             "may take whatever the size of the image; it may run longer "
             "only while it keeps receiving at download_min_rate on "
             "average: an attempt that has received N bytes fails once it "
             "has run for more than download_attempt_timeout + N / "
             "download_min_rate seconds, and is retried (on the next URL) "
             "like a dropped connection. This stops a server that sends a "
             "byte now and then from holding the disk task forever, while "
             "a large image over a slow but steady link is never cut off. "
             "Firmware downloads (decom.firmware_secure) have the same "
             "deadline."),
    cfg.IntOpt(
        "download_min_rate",
        default=1024 * 1024,
        min=1,
        help="Bytes per second a download attempt must average, beyond "
             "the download_attempt_timeout it always has (see there). The "
             "default, 1 MiB/s, gives a 20 GiB image about 6 hours."),
    cfg.ListOpt(
        "allowed_redirect_networks",
        default=[],
        item_type=_network,
        help="Networks (CIDRs, e.g. 10.20.0.0/16) that image and firmware "
             "download redirects may lead to although their addresses are "
             "loopback, link-local, private, multicast, unspecified or "
             "otherwise not global. The first URL of an image is always "
             "used as given; a redirect to any such address outside these "
             "networks is refused, as is a redirect to another scheme "
             "(https to http, or http to https)."),
    cfg.StrOpt(
        "proxy",
        regex=r"^(?:[Hh][Tt][Tt][Pp]://)?[^\s/?#]+/?$",
        help="The HTTP proxy that carries image and firmware downloads, "
             "as http://[user:password@]host:port (https:// downloads go "
             "through it with CONNECT). When unset, the http_proxy, "
             "https_proxy and no_proxy environment variables are used; "
             "when set, they are ignored. Redirects are checked against "
             "allowed_redirect_networks as without a proxy, and the "
             "credentials are never logged."),
    cfg.ListOpt(
        "no_proxy",
        default=[],
        help="Hosts downloaded from directly although proxy is set: host "
             "names (covering their sub-domains), IP addresses or CIDR "
             "networks, each optionally with :port, or * for all. "
             "Loopback hosts are always reached directly."),
    cfg.IntOpt(
        "decompression_memory_limit",
        default=256 * 1024 * 1024,
        min=16 * 1024 * 1024,
        help="Bytes of memory an xz or zstd image may need to be "
             "decompressed (its dictionary or window size). An image that "
             "declares more is refused before the memory is allocated; the "
             "agent runs from RAM. gzip needs 32 KiB at most and needs no "
             "limit."),
    cfg.IntOpt(
        "qcow2_stream_buffer",
        default=32 * 1024 * 1024,
        min=16 * 1024 * 1024,
        help="Bytes of memory a qcow2 image written as it downloads may "
             "use to keep clusters that arrive before the table that "
             "places them (qemu-img lays tables out first, so it usually "
             "needs none). An image whose layout needs more is written "
             "again from a copy staged in work_dir instead. The agent's "
             "resident memory during a write grows by about this much "
             "(with the default, it stays under 150 MiB)."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
