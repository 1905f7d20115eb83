"""UEFI tenant images for the VM test, built from Debian packages, cached.

Each image is a GPT raw disk: partition 1 an EFI system partition (FAT,
made with ``mkfs.vfat -C`` and filled with mtools: nothing is mounted),
partition 2 an ext4 root (``mkfs.ext4 -d``) holding ``/etc/os-release``
(the boot entry's label), ``/boot/vmlinuz-<release>``, a tiny initramfs and
a Boot Loader Specification entry.

``own_loader``
    the ESP holds the image's own boot chain, Debian's signed shim and grub
    (``loaders``: the files of ``shim-signed``, ``shim-helpers-amd64-signed``
    and ``grub-efi-amd64-signed`` the ramdisk build unpacked) in
    ``\\EFI\\teethtest\\`` with the image's own ``grub.cfg`` (whose command
    line carries :data:`OWN_GRUB_TOKEN`), and *no* removable-path loader:
    the firmware can only boot it through a boot entry.
``no_loader``
    the ESP is empty: the agent installs its own signed shim and grub.

The kernel is the ramdisk's (Debian's signed ``vmlinuz``); with
``signed=False`` it is a copy with its signature removed (``sbattach
--remove``). The initramfs prints :data:`images.BOOTED_MARKER` and the
command line, then: booted by grub (``BOOT_IMAGE=`` on the command line)
it powers off; otherwise (``kexec``) it prints :data:`KEXEC_REBOOT` and
reboots, so the firmware boots the disk next.

Images are cached in ``<cache>/uefi-images-<hash>/`` keyed by this file,
:mod:`tests.vm.images` (whose marker and helpers they use) and the bytes
of every input (kernel, shim, grub, busybox).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid

from tests.vm import images

VENDOR = "teethtest"
OS_RELEASE = ('PRETTY_NAME="Teeth UEFI Test 1"\nNAME="teeth uefi test"\n'
              'ID=teeth-uefi-test\nVERSION_ID=1\n')
LABEL = "Teeth UEFI Test 1"
#: On the image's own grub.cfg command line (own_loader only).
OWN_GRUB_TOKEN = "teeth_test_image=own-grub"
#: On the BLS entry's options: the command line the agent's kexec and the
#: agent's grub.cfg use.
BLS_TOKEN = "teeth_test_image=uefi-bls"
KEXEC_REBOOT = "TEETH-TEST-IMAGE: started by kexec; rebooting"
MIB = 1024 * 1024
ESP_START = MIB
ESP_SIZE = 32 * MIB
ROOT_START = ESP_START + ESP_SIZE
SIZE = 96 * MIB

_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "%(marker)s"
echo "cmdline: $(/bin/busybox cat /proc/cmdline)"
case " $(/bin/busybox cat /proc/cmdline) " in
    *" BOOT_IMAGE="*) /bin/busybox poweroff -f ;;
esac
echo "%(reboot)s"
/bin/busybox reboot -f
""" % {"marker": images.BOOTED_MARKER, "reboot": KEXEC_REBOOT}


def _run(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def _digest(paths, extra):
    digest = hashlib.sha256(extra.encode())
    # This module and tests.vm.images (BOOTED_MARKER, the library
    # lookup) shape the images as much as their inputs do.
    sources = [os.path.abspath(__file__), os.path.abspath(images.__file__)]
    for path in sources + list(paths):
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(4 * MIB), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _initrd(directory):
    tree = os.path.join(directory, "initrd-tree")
    busybox = shutil.which("busybox")
    for path in [busybox] + images._shared_libraries(busybox):
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
        stream.write(_INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    output = os.path.join(directory, "initrd.img")
    names = _run("find", ".", "-mindepth", "1", cwd=tree,
                 text=True).stdout.split()
    with open(output, "wb") as stream:
        subprocess.run(["cpio", "--create", "--format=newc", "--quiet"],
                       input="\n".join(names).encode(), cwd=tree,
                       stdout=stream, check=True)
    shutil.rmtree(tree)
    return output


def _esp(path, files):
    _run("mkfs.vfat", "-C", "-n", "ESP", path, str(ESP_SIZE // 1024))
    made = set()
    for target in sorted(files):
        parts = target.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in made:
                _run("mmd", "-i", path, "::/" + directory)
                made.add(directory)
        _run("mcopy", "-i", path, files[target], "::/" + target)


def build(cache, kind, kernel, release, loaders, signed=True):
    """The image ``kind`` (``own_loader`` or ``no_loader``), built once per
    inputs into ``cache``; ``loaders`` maps ``shim``, ``grub`` and
    ``mok_manager`` to the signed files. Returns ``{"path", "root_uuid",
    "root_offset", "root_size", "kernel_signed", "kind"}``."""
    if kind not in ("own_loader", "no_loader"):
        raise ValueError("unknown UEFI image kind %r" % kind)
    inputs = [kernel, shutil.which("busybox")]
    if kind == "own_loader":
        inputs += [loaders["shim"], loaders["grub"], loaders["mok_manager"]]
    key = _digest(inputs, "%s %s %s" % (kind, release, signed))
    directory = os.path.join(cache, "uefi-images-" + key)
    record = os.path.join(directory, "image.txt")
    if os.path.exists(record):
        with open(record) as stream:
            fields = dict(line.rstrip("\n").split("=", 1) for line in stream)
        return {"path": os.path.join(directory, "disk.img"),
                "root_uuid": fields["root_uuid"], "kind": kind,
                "root_offset": ROOT_START,
                "root_size": int(fields["root_size"]),
                "kernel_signed": signed}
    os.makedirs(cache, exist_ok=True)
    # A private work directory: two test sessions may build at once.
    work = tempfile.mkdtemp(prefix="uefi-images-tmp-", dir=cache)
    tree = os.path.join(work, "root")
    boot = os.path.join(tree, "boot")
    os.makedirs(os.path.join(boot, "loader", "entries"))
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "os-release"), "w") as stream:
        stream.write(OS_RELEASE)
    vmlinuz = os.path.join(boot, "vmlinuz-" + release)
    shutil.copy2(kernel, vmlinuz)
    if not signed:
        _run("sbattach", "--remove", vmlinuz)
    shutil.copy2(_initrd(work), os.path.join(boot, "initrd.img-" + release))
    root_uuid = str(uuid.uuid4())
    options = "console=ttyS0 panic=-1 root=UUID=%s %s" % (root_uuid,
                                                          BLS_TOKEN)
    with open(os.path.join(boot, "loader", "entries", "teeth-uefi.conf"),
              "w") as stream:
        stream.write("title teeth UEFI test image\nversion %s\n"
                     "linux /boot/vmlinuz-%s\ninitrd /boot/initrd.img-%s\n"
                     "options %s\n" % (release, release, release, options))
    esp_files = {}
    if kind == "own_loader":
        config = os.path.join(work, "grub.cfg")
        with open(config, "w") as stream:
            stream.write(
                "set timeout=0\n"
                "menuentry 'teeth UEFI test image' {\n"
                "    search --no-floppy --fs-uuid --set=root %s\n"
                "    linux /boot/vmlinuz-%s console=ttyS0 panic=-1 "
                "root=UUID=%s %s\n"
                "    initrd /boot/initrd.img-%s\n"
                "}\n" % (root_uuid, release, root_uuid, OWN_GRUB_TOKEN,
                         release))
        prefix = "EFI/%s/" % VENDOR
        esp_files = {prefix + "shimx64.efi": loaders["shim"],
                     prefix + "grubx64.efi": loaders["grub"],
                     prefix + "mmx64.efi": loaders["mok_manager"],
                     prefix + "grub.cfg": config}
    esp = os.path.join(work, "esp.fat")
    _esp(esp, esp_files)
    root = os.path.join(work, "root.ext4")
    root_size = SIZE - ROOT_START - MIB
    _run("mkfs.ext4", "-q", "-F", "-L", "uefi-test-root", "-U", root_uuid,
         "-d", tree, root, "%dk" % (root_size // 1024))
    disk = os.path.join(work, "disk.img")
    with open(disk, "wb") as stream:
        stream.truncate(SIZE)
    _run("sgdisk", "-n", "1:%d:+%dK" % (ESP_START // 512, ESP_SIZE // 1024),
         "-t", "1:ef00", "-c", "1:EFI system", "-n",
         "2:%d:+%dK" % (ROOT_START // 512, root_size // 1024),
         "-t", "2:8300", "-c", "2:root", disk)
    with open(disk, "r+b") as out:
        for offset, source in ((ESP_START, esp), (ROOT_START, root)):
            out.seek(offset)
            with open(source, "rb") as stream:
                shutil.copyfileobj(stream, out, 4 * MIB)
    for name in (esp, root):
        os.unlink(name)
    shutil.rmtree(tree)
    with open(os.path.join(work, "image.txt"), "w") as stream:
        stream.write("root_uuid=%s\nroot_size=%d\n" % (root_uuid, root_size))
    try:
        os.rename(work, directory)
    except OSError:
        # Another session finished the same image first: use that one.
        shutil.rmtree(work, ignore_errors=True)
    return build(cache, kind, kernel, release, loaders, signed)
