"""Bootable test images for the VM test, built without mounting anything.

A test image is a GPT raw disk whose first partition holds an ext4 root
made with ``mkfs.ext4 -d`` from a staged tree: ``/etc`` (so the agent
takes it for the root file system), and, for the kexec image,
``/boot/vmlinuz-<release>`` (the ramdisk's own Debian kernel),
``/boot/initrd.img-<release>`` (a tiny initramfs whose ``/init`` prints
:data:`BOOTED_MARKER` and the kernel command line on the console, then
powers off) and a Boot Loader Specification entry naming them. The first
bytes of the MBR hold a minimal boot routine (``cli; hlt``) so the agent
sees an image that brings its own boot loader; the VM test never lets the
firmware run it.

The image built with ``boot_loader=False`` brings none: no boot code in
the MBR, and an empty 1 MiB BIOS boot partition (GPT type EF02, number
:data:`BIOS_BOOT_NUMBER`) ahead of the root, where the agent's
``grub-install`` embeds grub's core image. It carries no ``grub.cfg``
either, so the one that boots is the agent's.
"""

import os
import shutil
import subprocess
import uuid

BOOTED_MARKER = "TEETH-TEST-IMAGE-BOOTED"
#: On the BLS entry's options; the booted image prints its command line,
#: which proves the agent passed the image's own options to kexec.
CMDLINE_TOKEN = "teeth_test_image=kexec-entry"
#: On the BLS entry's options of the image without a boot loader.
GRUB_CMDLINE_TOKEN = "teeth_test_image=grub-entry"
MIB = 1024 * 1024
ROOT_PARTITION_START = MIB
BIOS_BOOT_NUMBER = 1
BIOS_BOOT_START = MIB
BIOS_BOOT_SIZE = MIB
# cli; hlt; jmp back to hlt: a boot routine that only stops the CPU.
BOOT_CODE = b"\xfa\xf4\xeb\xfd"

_TEST_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "%s"
echo "cmdline: $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
""" % BOOTED_MARKER


def _run(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def _shared_libraries(binary):
    """The libraries (and loader) ``binary`` needs, from ldd."""
    out = _run("ldd", binary, text=True).stdout
    paths = []
    for line in out.splitlines():
        words = line.split()
        for word in words:
            if word.startswith("/") and os.path.exists(word):
                paths.append(word)
    return paths


def build_test_initrd(directory):
    """A cpio initramfs: busybox (with its libraries) and an /init that
    prints :data:`BOOTED_MARKER`, then powers off. Returns its path."""
    tree = os.path.join(directory, "initrd-tree")
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed")
    for path in [busybox] + _shared_libraries(busybox):
        target = os.path.join(tree, path.lstrip("/"))
        if path == busybox:
            target = os.path.join(tree, "bin", "busybox")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    for name in ("proc", "dev"):
        os.makedirs(os.path.join(tree, name), exist_ok=True)
    os.mknod(os.path.join(tree, "dev", "console"), 0o600 | 0o020000,
             os.makedev(5, 1))
    with open(os.path.join(tree, "init"), "w") as stream:
        stream.write(_TEST_INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    output = os.path.join(directory, "test-initrd.img")
    names = _run("find", ".", "-mindepth", "1", cwd=tree,
                 text=True).stdout.split()
    with open(output, "wb") as stream:
        subprocess.run(["cpio", "--create", "--format=newc", "--quiet"],
                       input="\n".join(names).encode(), cwd=tree,
                       stdout=stream, check=True)
    # Gone, so the next image built in the same directory can stage again.
    shutil.rmtree(tree)
    return output


def build_disk_image(directory, name, kernel=None, release=None,
                     size_mib=64, boot_loader=True,
                     cmdline_token=CMDLINE_TOKEN):
    """A GPT raw disk image at ``directory/name`` with an ext4 root.

    With ``kernel`` (a bzImage path) and ``release`` the root also holds
    the kernel, the test initrd and a BLS entry whose options carry
    ``cmdline_token``; without, it holds no kernel at all. With
    ``boot_loader`` the MBR holds :data:`BOOT_CODE` and the root is
    partition 1; without, the MBR's boot code is all zeroes, partition
    :data:`BIOS_BOOT_NUMBER` is an empty BIOS boot partition and the root
    follows it. Returns ``{"path", "root_offset", "root_size",
    "root_uuid", "root_number"}`` (offsets and sizes in bytes).
    """
    tree = os.path.join(directory, name + "-tree")
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "os-release"), "w") as stream:
        stream.write('NAME="teeth test image"\nID=teeth-test\n')
    with open(os.path.join(tree, "etc", "hostname"), "w") as stream:
        stream.write("teeth-test-image\n")
    if kernel is not None:
        boot = os.path.join(tree, "boot")
        entries = os.path.join(boot, "loader", "entries")
        os.makedirs(entries)
        shutil.copy2(kernel, os.path.join(boot, "vmlinuz-" + release))
        shutil.copy2(build_test_initrd(directory),
                     os.path.join(boot, "initrd.img-" + release))
        with open(os.path.join(entries, "teeth-test.conf"), "w") as stream:
            stream.write("title teeth test image\nversion %s\n"
                         "linux /boot/vmlinuz-%s\n"
                         "initrd /boot/initrd.img-%s\n"
                         "options console=ttyS0 panic=-1 %s\n"
                         % (release, release, release, cmdline_token))
    path = os.path.join(directory, name)
    with open(path, "wb") as stream:
        stream.truncate(size_mib * MIB)
    if boot_loader:
        root_offset = ROOT_PARTITION_START
        root_number = 1
    else:
        root_offset = BIOS_BOOT_START + BIOS_BOOT_SIZE
        root_number = BIOS_BOOT_NUMBER + 1
        _run("sgdisk", "-n", "%d:%d:+%dK" % (
            BIOS_BOOT_NUMBER, BIOS_BOOT_START // 512,
            BIOS_BOOT_SIZE // 1024),
            "-t", "%d:ef02" % BIOS_BOOT_NUMBER,
            "-c", "%d:bios-boot" % BIOS_BOOT_NUMBER, path)
    # What is left after the root's start, less 1 MiB for the backup GPT.
    root_size = size_mib * MIB - root_offset - MIB
    root = os.path.join(directory, name + "-root.ext4")
    root_uuid = str(uuid.uuid4())
    _run("mkfs.ext4", "-q", "-F", "-L", "teeth-test-root", "-U", root_uuid,
         "-d", tree, root, "%dk" % (root_size // 1024))
    partition = "%d:%d:+%dK" % (root_number, root_offset // 512,
                                root_size // 1024)
    _run("sgdisk", "-n", partition, "-t", "%d:8300" % root_number,
         "-c", "%d:root" % root_number, path)
    with open(path, "r+b") as out, open(root, "rb") as stream:
        out.seek(root_offset)
        shutil.copyfileobj(stream, out, 4 * MIB)
        if boot_loader:
            out.seek(0)
            out.write(BOOT_CODE)
    os.unlink(root)
    shutil.rmtree(tree)
    return {"path": path, "root_offset": root_offset,
            "root_size": root_size, "root_uuid": root_uuid,
            "root_number": root_number}


TLS_MEDIA_LABEL = "TEETHTLS"


def tls_media(directory, certificate):
    """An ISO 9660 image labelled :data:`TLS_MEDIA_LABEL` holding one
    machine's ``agent.pem`` and ``agent-key.pem`` (``certificate``: a
    :class:`teeth_agent.pki.Issued`), as a BMC's virtual media would carry
    them; the ramdisk reads it with ``teeth_ramdisk.tls_media=LABEL=...``.
    """
    content = os.path.join(directory, "tls-media")
    os.makedirs(content)
    shutil.copyfile(certificate.cert_path,
                    os.path.join(content, "agent.pem"))
    shutil.copyfile(certificate.key_path,
                    os.path.join(content, "agent-key.pem"))
    iso = os.path.join(directory, "tls-media.iso")
    _run("xorriso", "-as", "mkisofs", "-quiet", "-V", TLS_MEDIA_LABEL,
         "-o", iso, content)
    shutil.rmtree(content)
    return iso
