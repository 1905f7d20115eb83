"""The UEFI outputs of the ramdisk: an ESP image and an ISO, Secure Boot ready.

The boot chain is Debian's signed one: ``shimx64.efi`` (signed by
Microsoft's UEFI CA, which the firmware of nearly every server trusts)
verifies ``grubx64.efi`` (signed by Debian), which verifies the kernel
(``vmlinuz`` of ``linux-image-amd64``, signed by Debian) through shim; the
initramfs is not signed (no Secure Boot chain checks one). Booted this way
with Secure Boot on, the kernel locks itself down (integrity), which is why
the agent then uses ``kexec -s``.

``esp.img``
    a FAT file system to write to an EFI system partition (a USB stick's, a
    disk's) or to attach as a disk: ``\\EFI\\BOOT\\BOOTX64.EFI`` (shim),
    ``\\EFI\\BOOT\\grubx64.efi``, ``\\EFI\\BOOT\\mmx64.efi`` (the MOK manager
    shim starts when a key enrolment is pending), ``\\EFI\\debian\\grub.cfg``
    (the signed grub's built-in prefix is ``/EFI/debian``) and
    ``\\teeth\\vmlinuz``, ``\\teeth\\initrd.img``.
``teeth-ramdisk.iso``
    an ISO 9660 image for (virtual) CD media: its El Torito UEFI boot
    image is a small FAT image with the loaders; the kernel, initramfs and
    ``grub.cfg`` are files of the ISO (``/teeth/``, ``/EFI/debian/``: grub
    started from a CD takes the ISO file system as its root).
``netboot/``
    a tree to serve as the TFTP or HTTP root for network boot (see
    docs/ramdisk.md): ``shimx64.efi`` (the file DHCP names),
    ``grubx64.efi`` (Debian's signed *network* grub, which shim loads from
    the same directory and whose built-in prefix is ``/grub``),
    ``mmx64.efi``, ``grub/grub.cfg`` and ``teeth/vmlinuz``,
    ``teeth/initrd.img``.

Both media find their kernel with grub's ``search --file`` for a file named
after the build (``/teeth/id-<hash of the initramfs>``), so a second disk
or stick holding another teeth ramdisk is never picked by mistake. Nothing
is mounted to build them: ``mkfs.vfat -C`` makes the FAT images in files,
mtools fills them, xorriso writes the ISO.
"""

import hashlib
import os
import shutil
import tempfile

from tools.ramdisk.base import BuildError
from tools.ramdisk.base import run

ISO_LABEL = "TEETH_RAMDISK"
#: The kernel command line grub gives the ramdisk when the build names none.
DEFAULT_CMDLINE = "console=tty0 console=ttyS0,115200n8 ip=dhcp"
MIB = 1024 * 1024
# FAT overhead and slack: 10% plus 4 MiB, and never under 8 MiB.
FAT_MIN_MIB = 8


def build_id(initrd):
    """A short hash of the initramfs naming this build on its media."""
    digest = hashlib.sha256()
    with open(initrd, "rb") as stream:
        for chunk in iter(lambda: stream.read(4 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def check_cmdline(cmdline):
    """A kernel command line grub.cfg can carry verbatim: one line of
    printable characters, none that grub's parser would take as syntax."""
    if not cmdline or len(cmdline) > 2048:
        raise BuildError("the UEFI kernel command line must have 1 to 2048 "
                         "characters")
    bad = sorted({c for c in cmdline
                  if not c.isprintable() or c in "\"'\\$;&|{}<>`#\n"})
    if bad:
        raise BuildError("the UEFI kernel command line may not contain %s "
                         "(grub.cfg would read them as its own syntax)"
                         % " ".join(repr(c) for c in bad))
    return cmdline


def grub_config(identity, cmdline):
    """The grub.cfg of the media (``identity``: the build's id, searched
    for) and of network boot (``identity`` None: the files are on the
    server grub was loaded from, its root already)."""
    search = ("search --no-floppy --set=root --file /teeth/id-%s\n"
              % identity) if identity else ""
    return (
        "# The teeth-agent ramdisk, made by tools/build-ramdisk --uefi.\n"
        "set timeout=0\n" + search +
        "menuentry 'teeth-agent ramdisk' {\n"
        "    echo 'teeth ramdisk: loading the kernel and the initramfs'\n"
        "    linux /teeth/vmlinuz %(cmdline)s\n"
        "    initrd /teeth/initrd.img\n"
        "}\n" % {"cmdline": cmdline})


def link_or_copy(source, target):
    """A hard link to ``source`` at ``target`` (a copy across file
    systems): the media trees hold the 200 MiB initramfs several times."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fat_image(path, files, label):
    """A FAT file system image at ``path`` holding ``files`` (``{path in
    the image: source path}``, '/'-separated), made without mounting."""
    total = sum(os.path.getsize(source) for source in files.values())
    size_mib = max(FAT_MIN_MIB, int(total * 1.1 / MIB) + 4)
    if os.path.exists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run("mkfs.vfat", "-C", "-n", label, path, str(size_mib * 1024))
    directories = set()
    for target in files:
        parts = target.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directories.add("/".join(parts[:depth]))
    for directory in sorted(directories, key=lambda d: d.count("/")):
        run("mmd", "-i", path, "::/" + directory)
    for target, source in sorted(files.items()):
        run("mcopy", "-i", path, source, "::/" + target.strip("/"))
    return path


def build(base_dir, base_info, kernel, initrd, output, cmdline):
    """Write ``esp.img``, ``teeth-ramdisk.iso`` and ``efi/`` into
    ``output``; returns the manifest part describing them."""
    cmdline = check_cmdline(cmdline)
    loaders = base_info.get("uefi_loaders", {}).get("files")
    if not loaders:
        raise BuildError("the cached base holds no signed UEFI loaders")
    signed = {role: os.path.join(base_dir, path)
              for role, path in loaders.items()}
    identity = build_id(initrd)
    workdir = tempfile.mkdtemp(prefix="uefi-", dir=output)
    try:
        config = os.path.join(workdir, "grub.cfg")
        with open(config, "w") as stream:
            stream.write(grub_config(identity, cmdline))
        marker = os.path.join(workdir, "id-" + identity)
        with open(marker, "w") as stream:
            stream.write("teeth-agent ramdisk %s\n" % identity)
        loader_files = {
            "EFI/BOOT/BOOTX64.EFI": signed["shim"],
            "EFI/BOOT/grubx64.efi": signed["grub"],
            "EFI/BOOT/mmx64.efi": signed["mok_manager"],
            "EFI/debian/grub.cfg": config,
        }
        payload = {
            "teeth/vmlinuz": kernel,
            "teeth/initrd.img": initrd,
            "teeth/id-" + identity: marker,
        }
        esp = fat_image(os.path.join(output, "esp.img"),
                        dict(loader_files, **payload), "TEETH_ESP")
        # The ISO: a small El Torito FAT image, the payload as ISO files.
        tree = os.path.join(workdir, "iso")
        # Booted from a CD, grub's root is the ISO file system, not the El
        # Torito image it was loaded from: its prefix /EFI/debian is there.
        for target, source in dict(payload, **{
                "EFI/debian/grub.cfg": config}).items():
            link_or_copy(source, os.path.join(tree, target))
        fat_image(os.path.join(tree, "boot", "efiboot.img"), loader_files,
                  "TEETH_EFI")
        iso = os.path.join(output, "teeth-ramdisk.iso")
        run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J",
            "-V", ISO_LABEL, "-o", iso + ".tmp",
            "-e", "boot/efiboot.img", "-no-emul-boot", tree)
        os.replace(iso + ".tmp", iso)
        # A tree to serve as the TFTP or HTTP root for network boot.
        netboot = os.path.join(output, "netboot")
        shutil.rmtree(netboot, ignore_errors=True)
        for target, source in (("shimx64.efi", signed["shim"]),
                               ("grubx64.efi", signed["grub_net"]),
                               ("mmx64.efi", signed["mok_manager"]),
                               ("teeth/vmlinuz", kernel),
                               ("teeth/initrd.img", initrd)):
            link_or_copy(source, os.path.join(netboot, target))
        os.makedirs(os.path.join(netboot, "grub"))
        with open(os.path.join(netboot, "grub", "grub.cfg"), "w") as stream:
            stream.write(grub_config(None, cmdline))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"id": identity, "cmdline": cmdline,
            "loader_packages": base_info["uefi_loaders"]["packages"],
            "loaders": signed,
            "files": {"esp.img": esp, "teeth-ramdisk.iso": iso,
                      "netboot": netboot}}
