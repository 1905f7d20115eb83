"""Build the teeth-agent ramdisk: a kernel and an initramfs from Debian.

The initramfs is two uncompressed cpio archives, concatenated:

* the **agent layer**, rebuilt on every run (a second or two): this
  checkout's ``teeth_agent`` package, compiled, with an installed-package
  record (``dist-info``) carrying the entry points from ``setup.cfg``, any
  ``--extra-package`` (a vendor's hardware-manager package) and the TLS
  inputs (``--ca-file``, optionally ``--agent-cert``/``--agent-key``);
* the **base**, cached under ``.ramdisk-cache/base-<hash>/``: a Debian root
  made by ``mmdebstrap --variant=minbase`` with the packages of
  ``packages.txt``, the agent's Python dependencies (``requirements.txt``,
  installed with pip), the kernel modules of ``modules.txt`` and everything
  they depend on, the kernel's ``bzImage`` (for ``kexec`` inside the
  ramdisk), the init and the built-in agent configuration, trimmed by
  ``trim.txt``.

The base is keyed by a hash of every input: the files of this directory
that make it (``base.py``, ``vmlinux.py``, the lists, the init and the
configuration; not this module nor ``agent_layer.py``),
``requirements.txt``, the suite, the mirror and the kernel package's exact
version; when nothing changed it is reused as is. The agent layer comes
first in the concatenation, so its files win over the base's.

Outputs, in ``--output`` (default ``.ramdisk-cache/out``): ``vmlinuz`` (the
Debian bzImage), ``vmlinux`` (the same kernel as an uncompressed ELF, which
qemu boots several times faster under emulation), ``initrd.img`` and
``manifest.json`` (versions, hashes, sizes). With ``--uefi``, also the
UEFI media of :mod:`tools.ramdisk.uefi_media` (``esp.img``,
``teeth-ramdisk.iso``, ``netboot/``): Debian's signed shim and grub (from
their packages, unpacked by :mod:`tools.ramdisk.loaders`, which also puts
them into the base for the agent) and the same kernel and initramfs.
"""

import argparse
import json
import os
import shutil
import sys
import time

from tools.ramdisk import agent_layer
from tools.ramdisk import base
from tools.ramdisk.base import BuildError
from tools.ramdisk.base import log
from tools.ramdisk.base import run
from tools.ramdisk import loaders
from tools.ramdisk import uefi_media


def concatenate(parts, output):
    with open(output + ".tmp", "wb") as out:
        for part in parts:
            with open(part, "rb") as stream:
                shutil.copyfileobj(stream, out, 4 * 1024 * 1024)
    os.replace(output + ".tmp", output)


def build(output=None, cache=base.DEFAULT_CACHE, suite=base.DEFAULT_SUITE,
          mirror=None, extra_packages=(), compress=None, tls=None,
          uefi=False, uefi_cmdline=uefi_media.DEFAULT_CMDLINE):
    """Build (or reuse) the ramdisk; returns the manifest (a dict) also
    written to ``output/manifest.json``. ``tls`` is an
    :class:`agent_layer.TLSInputs` (a CA file is required unless it says
    plaintext). With ``uefi`` the UEFI media are made too (see
    :mod:`uefi_media`), booting the kernel with ``uefi_cmdline``."""
    tls = tls or agent_layer.TLSInputs()
    agent_layer.check_tls(tls)
    if uefi:
        uefi_media.check_cmdline(uefi_cmdline)
    if os.geteuid() != 0:
        raise BuildError("run as root: mmdebstrap and device nodes need it")
    started = time.monotonic()
    output = os.path.abspath(output or os.path.join(cache, "out"))
    os.makedirs(cache, exist_ok=True)
    os.makedirs(output, exist_ok=True)
    mirror = mirror or base.apt_mirror()
    kernel = base.kernel_package()
    loader_versions = loaders.versions()
    key = base.base_key(suite, mirror, kernel, loader_versions)
    base_dir, built = base.build_base(cache, suite, mirror, kernel, key,
                                      loader_versions)
    agent_cpio = os.path.join(output, "agent.cpio")
    agent_layer.build_agent_layer(agent_cpio, extra_packages, tls)
    initrd = os.path.join(output, "initrd.img")
    concatenate([agent_cpio, os.path.join(base_dir, "base.cpio")], initrd)
    os.unlink(agent_cpio)
    if compress:
        tool = {"gzip": ["gzip", "-6", "-n"],
                "zstd": ["zstd", "-q", "-9", "-T0", "--rm", "-f"]}[compress]
        run(*tool, initrd)
        os.replace(initrd + (".gz" if compress == "gzip" else ".zst"),
                   initrd)
    for name in ("vmlinuz", "vmlinux"):
        shutil.copy2(os.path.join(base_dir, name),
                     os.path.join(output, name))
    with open(os.path.join(base_dir, "base.json")) as stream:
        manifest = json.load(stream)
    if uefi:
        manifest["uefi"] = uefi_media.build(
            base_dir, manifest, os.path.join(output, "vmlinuz"), initrd,
            output, uefi_cmdline)
    manifest.update({
        "base_cached": not built,
        "agent_version": agent_layer.agent_version(),
        "extra_packages": list(extra_packages),
        "tls": ("plaintext" if tls.plaintext else
                {"ca_file": os.path.abspath(tls.ca_file),
                 "agent_cert": (os.path.abspath(tls.agent_cert)
                                if tls.agent_cert else None)}),
        "initrd_bytes": os.path.getsize(initrd),
        "initrd_compression": compress or "none",
        "seconds": round(time.monotonic() - started, 1),
        "files": {name: os.path.join(output, name)
                  for name in ("vmlinuz", "vmlinux", "initrd.img")},
    })
    with open(os.path.join(output, "manifest.json"), "w") as stream:
        json.dump(manifest, stream, indent=2)
    log("ramdisk in %s (%.0f s, base %s)", output, manifest["seconds"],
        "cached" if not built else "built")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="build-ramdisk",
        description="Build the teeth-agent ramdisk (kernel and initramfs) "
                    "from Debian packages and this checkout. Needs root.")
    parser.add_argument("-o", "--output",
                        help="directory for vmlinuz, vmlinux, initrd.img "
                             "and manifest.json (default: "
                             ".ramdisk-cache/out)")
    parser.add_argument("--cache", default=base.DEFAULT_CACHE,
                        help="cache directory (default: %(default)s)")
    parser.add_argument("--suite", default=base.DEFAULT_SUITE,
                        help="Debian suite (default: %(default)s)")
    parser.add_argument("--mirror",
                        help="Debian mirror (default: the one apt uses)")
    parser.add_argument("--extra-package", action="append", default=[],
                        dest="extra_packages", metavar="PIP_SPEC",
                        help="a package to pip-install into the agent "
                             "layer, e.g. a vendor's hardware manager "
                             "(./examples/acme); repeatable")
    parser.add_argument("--compress", choices=["gzip", "zstd"],
                        help="compress initrd.img (for network boot; "
                             "qemu boots the uncompressed one as fast)")
    uefi_args = parser.add_argument_group(
        "UEFI", "Also make media that boot UEFI machines, with Secure Boot "
                "on or off, through Debian's signed shim and grub: esp.img, "
                "teeth-ramdisk.iso and the netboot/ tree (docs/ramdisk.md).")
    uefi_args.add_argument("--uefi", action="store_true",
                           help="make the UEFI media too")
    uefi_args.add_argument("--uefi-cmdline",
                           default=uefi_media.DEFAULT_CMDLINE,
                           help="the kernel command line the media's "
                                "grub.cfg gives the ramdisk (default: "
                                "%(default)s)")
    tls_args = parser.add_argument_group(
        "TLS", "The agent talks TLS to its endpoint: the image carries the "
               "CA it trusts, and optionally one machine's client "
               "certificate. Per-machine certificates are better delivered "
               "at boot (teeth_ramdisk.tls_media=, see docs/ramdisk.md).")
    tls_args.add_argument("--ca-file",
                          help="the PEM CA that signs the endpoint's "
                               "certificate (required unless --plaintext)")
    tls_args.add_argument("--agent-cert",
                          help="a client certificate (PEM) every machine "
                               "booting this image presents: for an image "
                               "made for one machine")
    tls_args.add_argument("--agent-key",
                          help="the private key of --agent-cert")
    tls_args.add_argument("--plaintext", action="store_true",
                          help="build an image whose agent talks to its "
                               "endpoint without TLS (unencrypted, "
                               "unauthenticated)")
    args = parser.parse_args(argv)
    try:
        manifest = build(output=args.output, cache=args.cache,
                         suite=args.suite, mirror=args.mirror,
                         extra_packages=args.extra_packages,
                         compress=args.compress,
                         tls=agent_layer.TLSInputs(
                             ca_file=args.ca_file,
                             agent_cert=args.agent_cert,
                             agent_key=args.agent_key,
                             plaintext=args.plaintext),
                         uefi=args.uefi, uefi_cmdline=args.uefi_cmdline)
    except BuildError as exc:
        log("failed: %s", exc)
        return 1
    json.dump(manifest, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
