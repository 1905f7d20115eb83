"""The signed UEFI boot loaders of the ramdisk, from Debian's packages.

Three packages carry them: ``shim-signed`` (``shimx64.efi.signed``, signed
by Microsoft's UEFI CA, trusting Debian's CA), ``shim-helpers-amd64-signed``
(``mmx64.efi.signed``, the MOK manager, and ``fbx64.efi.signed``) and
``grub-efi-amd64-signed`` (``grubx64.efi.signed``, a monolithic grub signed
by Debian, whose built-in prefix is ``/EFI/debian``).

They are downloaded with ``apt-get download`` and unpacked with ``dpkg-deb
-x``, never installed with apt: the maintainer scripts of shim-signed run
``grub-install`` (which, on a build host booted UEFI, would write the
host's own ESP and boot entries). The files land in the ramdisk root at
the paths the packages use, where the agent takes them from for images
that bring no boot loader, and are used for the ramdisk's own UEFI
outputs (:mod:`tools.ramdisk.uefi_media`).
"""

import glob
import os
import re
import shutil
import subprocess

from tools.ramdisk.base import BuildError
from tools.ramdisk.base import log
from tools.ramdisk.base import run

PACKAGES = ("shim-signed", "shim-helpers-amd64-signed",
            "grub-efi-amd64-signed")
#: The files taken from the packages, by role, as paths inside them (and
#: inside the ramdisk root).
FILES = {
    "shim": "usr/lib/shim/shimx64.efi.signed",
    "mok_manager": "usr/lib/shim/mmx64.efi.signed",
    "fallback": "usr/lib/shim/fbx64.efi.signed",
    "grub": "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
    "grub_cd": "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
    "grub_net": "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
}


def versions():
    """``{package: version}`` of the candidates in the host's apt lists."""
    found = {}
    for package in PACKAGES:
        done = subprocess.run(["apt-cache", "policy", package],
                              capture_output=True, text=True, check=False)
        match = re.search(r"Candidate:\s*(\S+)", done.stdout)
        if not match or match.group(1) == "(none)":
            raise BuildError("apt knows no installable %s (the signed UEFI "
                             "loaders come from it): is the main component "
                             "of the Debian mirror in apt's sources?"
                             % package)
        found[package] = match.group(1)
    return found


def fetch(cache, package_versions, workdir):
    """Download (once, into ``cache/debs``) and unpack the packages into
    ``workdir/loaders``; returns ``{role: path}`` of :data:`FILES`."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    unpacked = os.path.join(workdir, "loaders")
    for package, version in sorted(package_versions.items()):
        pattern = os.path.join(debs, "%s_%s_*.deb" % (
            package, version.replace(":", "%3a")))
        if not glob.glob(pattern):
            log("downloading %s %s", package, version)
            run("apt-get", "download", "-q", "%s=%s" % (package, version),
                cwd=debs)
        found = glob.glob(pattern)
        if not found:
            raise BuildError("apt-get download left no %s" % pattern)
        run("dpkg-deb", "-x", found[0], unpacked)
    paths = {}
    for role, relative in FILES.items():
        path = os.path.join(unpacked, relative)
        if not os.path.isfile(path):
            raise BuildError("the signed loader packages hold no /%s"
                             % relative)
        paths[role] = path
    return paths


def install(paths, root):
    """Copy the loaders into the ramdisk ``root`` at their package paths."""
    for role, relative in FILES.items():
        target = os.path.join(root, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(paths[role], target)


def keep(paths, directory):
    """Copy the loaders to ``directory`` (the cached base) by role name;
    returns ``{role: path}`` there."""
    os.makedirs(directory, exist_ok=True)
    kept = {}
    for role, path in paths.items():
        kept[role] = os.path.join(directory, os.path.basename(path))
        shutil.copy2(path, kept[role])
    return kept
