"""Real disk images for the standbye tests, built without mounting.

:func:`build_disk_image` makes a GPT disk image with an ext4 root
partition holding ``/boot/vmlinuz-<version>``, an initrd and a grub.cfg
(or BLS entries), and optionally an EFI system partition with a loader:
``sgdisk`` on the image file, ``mkfs.ext4 -d`` and ``mkfs.vfat`` +
``mcopy`` on partition-sized files, then ``dd`` into place.
"""

import hashlib
import json
import os
import subprocess
import uuid

KERNEL_VERSION = "6.1.0-teeth"
ROOT_FS_UUID = "4f3c2d1e-0a9b-4c8d-9e7f-112233445566"


def sha256_of(path):
    """The hex sha256 of a file, read 4 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, **kwargs)


def _place(image, part_file, start_sector, sector=512):
    _run("dd", "if=%s" % part_file, "of=%s" % image, "bs=1M",
         "seek=%d" % (start_sector * sector), "oflag=seek_bytes",
         "conv=notrunc,fsync")


def build_disk_image(directory, size_mib=48, esp=True, bls=False,
                     name="disk.img", bios_boot=False, tree_hook=None):
    """Build the image.

    ``tree_hook(tree)``, when given, may change the root file system's
    tree (a hostile image) before it is made into ext4. Returns
    ``{"path", "kernel", "initrd", "cmdline", "root_uuid",
    "root_partition"}``: what run_image must find.
    """
    tree = os.path.join(directory, name + ".root")
    boot = os.path.join(tree, "boot")
    os.makedirs(os.path.join(boot, "grub"))
    os.makedirs(os.path.join(tree, "etc"))
    kernel = "/boot/vmlinuz-%s" % KERNEL_VERSION
    initrd = "/boot/initrd.img-%s" % KERNEL_VERSION
    with open(tree + kernel, "wb") as stream:
        stream.write(b"MZ" + os.urandom(256 * 1024))
    with open(tree + initrd, "wb") as stream:
        stream.write(b"070701" + os.urandom(128 * 1024))
    # An older kernel that must not be chosen.
    with open(os.path.join(boot, "vmlinuz-5.10.0-old"), "wb") as stream:
        stream.write(b"MZ" + os.urandom(1024))
    with open(os.path.join(tree, "etc", "os-release"), "w") as stream:
        stream.write("ID=teeth-test\n")
    cmdline = "root=UUID=%s ro console=ttyS0 quiet" % ROOT_FS_UUID
    if bls:
        entries = os.path.join(boot, "loader", "entries")
        os.makedirs(entries)
        with open(os.path.join(entries, "teeth-%s.conf" % KERNEL_VERSION),
                  "w") as stream:
            stream.write("title Teeth test\nversion %s\nlinux /vmlinuz-%s\n"
                         "initrd /initrd.img-%s\noptions %s\n"
                         % (KERNEL_VERSION, KERNEL_VERSION, KERNEL_VERSION,
                            cmdline))
        with open(os.path.join(entries, "teeth-5.10.0-old.conf"),
                  "w") as stream:
            stream.write("title old\nversion 5.10.0-old\n"
                         "linux /vmlinuz-5.10.0-old\noptions root=/dev/sda9\n")
    else:
        with open(os.path.join(boot, "grub", "grub.cfg"), "w") as stream:
            stream.write(
                "set default=0\nset timeout=5\n"
                "menuentry 'Teeth test' --class gnu-linux {\n"
                "    insmod ext2\n"
                "    search --no-floppy --fs-uuid --set=root %s\n"
                "    linux %s %s $vt_handoff\n"
                "    initrd %s\n}\n"
                "menuentry 'Old' {\n    linux /boot/vmlinuz-5.10.0-old\n}\n"
                % (ROOT_FS_UUID, kernel, cmdline, initrd))
    if tree_hook is not None:
        tree_hook(tree)
    image = os.path.join(directory, name)
    with open(image, "wb") as stream:
        stream.truncate(size_mib * 1024 * 1024)
    esp_sectors = 8 * 2048 if esp else 0
    argv = ["sgdisk", "-U", str(uuid.uuid4())]
    root_number = 1
    root_start = 2048
    if esp:
        argv += ["-n", "1:2048:+8M", "-t", "1:EF00", "-c", "1:esp"]
        root_number += 1
        root_start += esp_sectors
    if bios_boot:
        # An empty BIOS boot partition: room for grub's core image, no
        # loader yet (the agent is expected to install one).
        argv += ["-n", "%d:%d:+1M" % (root_number, root_start),
                 "-t", "%d:EF02" % root_number, "-c", "%d:bios" % root_number]
        root_number += 1
        root_start += 2048
    argv += ["-n", "%d:0:0" % root_number, "-t", "%d:8300" % root_number,
             "-c", "%d:root" % root_number, image]
    _run(*argv)
    table = subprocess.run(["sfdisk", "--json", image], check=True,
                           capture_output=True, text=True).stdout
    parts = json.loads(table)["partitiontable"]["partitions"]
    root_sectors = parts[-1]["size"]
    assert parts[-1]["start"] == root_start
    root_file = image + ".root.ext4"
    with open(root_file, "wb") as stream:
        stream.truncate(root_sectors * 512)
    _run("mkfs.ext4", "-q", "-F", "-U", ROOT_FS_UUID, "-L", "root", "-d",
         tree, root_file)
    _place(image, root_file, root_start)
    os.unlink(root_file)
    if esp:
        esp_file = image + ".esp"
        with open(esp_file, "wb") as stream:
            stream.truncate(esp_sectors * 512)
        _run("mkfs.vfat", "-n", "ESP", esp_file)
        loader = os.path.join(directory, "BOOTX64.EFI")
        with open(loader, "wb") as stream:
            stream.write(b"MZ" + os.urandom(4096))
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        _run("mmd", "-i", esp_file, "::/EFI", "::/EFI/BOOT", env=env)
        _run("mcopy", "-i", esp_file, loader, "::/EFI/BOOT/BOOTX64.EFI",
             env=env)
        _place(image, esp_file, 2048)
        os.unlink(esp_file)
    subprocess.run(["rm", "-rf", tree], check=False)
    return {"path": image, "kernel": kernel, "initrd": initrd,
            "cmdline": cmdline, "root_uuid": ROOT_FS_UUID,
            "root_partition": root_number}
