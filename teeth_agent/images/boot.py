"""Boot loader detection and kexec target discovery in a written image.

Nothing from the image ever runs: its file systems are mounted read-only
with ``nosuid,nodev,noexec`` (and without journal replay), files are read
as data with symbolic links resolved inside the image's own root (an
absolute link cannot point into the agent's file system), sizes are
bounded, boot files that are mostly holes are refused (a hole would
become RAM in the agent's work directory), and the boot loader, when one
must be installed, comes from the agent's own ``grub-install`` (no
chroot), which writes only into a ``/boot/grub`` the agent made (see
:func:`install_grub`).

Discovery order, per file system (ext2/3/4, xfs, btrfs) of the install
device:

1. Boot Loader Specification entries (``/boot/loader/entries/*.conf`` or
   ``/loader/entries/*.conf`` on a separate /boot), newest version first;
2. the first ``menuentry`` of ``grub.cfg`` (``/boot/grub/``,
   ``/boot/grub2/``, or the same under a separate /boot) with a ``linux``
   line;
3. the newest ``/boot/vmlinuz-<version>`` (or ``/vmlinuz-<version>``) with
   the matching ``initrd.img-``/``initramfs-``/``initrd-`` file.

The command line is the entry's; when it names no ``root=``, ``root=UUID=``
of the file system holding ``/etc`` and ``ro`` are used.
"""

# Size: 605 lines, over the ~500 guideline: the boot-file rules (paths
# resolved inside the image, kernel and initrd choice, the read-only mount,
# grub install) are one threat model and are reviewed together.

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile

from teeth_agent import processes

LOG = logging.getLogger(__name__)

MOUNTABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs")
ESP_TYPES = ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "ef")
BIOS_BOOT_TYPE = "21686148-6449-6e6f-744e-656564454649"

#: Default largest kernel copied out of an image for kexec (``[standbye]
#: max_kernel_size``). Distribution kernels are 10-20 MiB; one with a
#: built-in initramfs rarely passes 64 MiB. The copy lives in the agent's
#: work directory, which is RAM in the ramdisk.
MAX_KERNEL_SIZE = 128 * 1024 * 1024
#: Default largest total of the initrds of one entry (``[standbye]
#: max_initrd_size``). Generic initramfs images with every driver and
#: firmware are 100-300 MiB; they are concatenated in the work directory.
MAX_INITRDS_TOTAL = 512 * 1024 * 1024
#: Largest share of a kernel or initrd that may be holes (blocks not on
#: disk) for it to be copied out.
MAX_HOLE_FRACTION = 1 / 8
#: Largest configuration file (grub.cfg, BLS entry) parsed.
MAX_CONFIG_FILE = 4 * 1024 * 1024
#: Files of the image's own ``/boot/grub`` that stay as they were when the
#: agent installs grub; grub's fresh modules, fonts and locales replace
#: the image's.
KEPT_GRUB_FILES = ("grub.cfg", "grubenv", "custom.cfg")
_MAX_LINKS = 40


class UnsafePath(Exception):
    """A path in the image leads outside it or loops."""


def resolve_inside(root, path):
    """The real path of ``path`` within the tree mounted at ``root``.

    Symbolic links are followed as the image's own system would (an
    absolute target starts again at ``root``, ``..`` stops at ``root``).
    Returns None when the path does not exist; raises :class:`UnsafePath`
    on a link loop.
    """
    pending = [part for part in path.split("/") if part]
    resolved = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            info = os.lstat(current)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > _MAX_LINKS:
                raise UnsafePath("too many symbolic links in %s" % path)
            target = os.readlink(current)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def read_text(root, path, limit=MAX_CONFIG_FILE):
    """The text of a regular file of the image, or None."""
    real = resolve_inside(root, path)
    if real is None:
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        return stream.read(limit).decode("utf-8", "replace")


def is_file(root, path):
    real = resolve_inside(root, path)
    return real is not None and os.path.isfile(real) and \
        not os.path.islink(real)


def _mostly_holes(info):
    """Whether the file with ``os.stat`` result ``info`` is more than
    :data:`MAX_HOLE_FRACTION` holes: its allocated blocks hold less than
    the rest of its size.

    A few holes are normal: ``mke2fs -d`` and ``cp --sparse`` turn blocks
    of zeros into holes, and a kernel has some. A file that is mostly holes
    is a small file on the image's disk that would take its whole size of
    RAM in the work directory once copied.
    """
    holes = info.st_size - info.st_blocks * 512
    return holes > info.st_size * MAX_HOLE_FRACTION


@contextlib.contextmanager
def open_boot_file(root, path, limit):
    """The image's regular file ``path``, open for reading, checked.

    Raises :class:`UnsafePath` when ``path`` does not exist, is not a
    regular file, is larger than ``limit`` bytes or is mostly holes (see
    :func:`_mostly_holes`), and ``OSError``
    when it cannot be read (a symbolic link as the last component
    included: it is opened with ``O_NOFOLLOW``).
    """
    real = resolve_inside(root, path)
    if real is None:
        raise UnsafePath("%s does not exist in the image" % path)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath("%s is not a regular file" % path)
        if info.st_size > limit:
            raise UnsafePath("%s is larger than %d bytes" % (path, limit))
        if _mostly_holes(info):
            raise UnsafePath(
                "%s is a sparse file: %d of its %d bytes are on disk"
                % (path, info.st_blocks * 512, info.st_size))
        yield source


def copy_stream(source, target, limit):
    """Copy at most ``limit`` bytes of ``source`` to ``target``; returns
    the bytes copied. Raises :class:`UnsafePath` when ``source`` holds
    more (a file that grew since it was checked)."""
    copied = 0
    while True:
        chunk = source.read(min(1024 * 1024, limit + 1 - copied))
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            raise UnsafePath("a boot file grew past %d bytes while it was "
                             "copied" % limit)
        target.write(chunk)


def copy_out(root, path, destination, limit=MAX_KERNEL_SIZE):
    """Copy the image's regular file ``path`` to ``destination``.

    Returns ``destination``. Raises what :func:`open_boot_file` raises.
    """
    with open_boot_file(root, path, limit) as source:
        with open(destination, "wb") as target:
            copy_stream(source, target, limit)
    return destination


def version_key(text):
    """Sort key comparing version strings number by number."""
    return [(1, int(part)) if part.isdigit() else (0, part)
            for part in re.split(r"(\d+)", text) if part]


# -- what the image's configuration says --------------------------------------

def _bls_entries(root):
    found = []
    for base in ("/boot", "/"):
        directory = resolve_inside(root, os.path.join(base, "loader",
                                                      "entries"))
        if directory is None or not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".conf"):
                continue
            text = read_text(root, os.path.join(base, "loader", "entries",
                                                name))
            if text is None:
                continue
            entry = {"initrd": []}
            for line in text.splitlines():
                key, _, value = line.strip().partition(" ")
                value = value.strip()
                if key == "initrd":
                    entry["initrd"].append(value)
                elif key in ("linux", "options", "version", "title"):
                    entry[key] = value
            if entry.get("linux"):
                entry["base"] = base
                entry["name"] = name
                found.append(entry)
    found.sort(key=lambda e: version_key(e.get("version") or e["name"]),
               reverse=True)
    return found


def _grubenv(root):
    for path in ("/boot/grub2/grubenv", "/boot/grub/grubenv",
                 "/grub2/grubenv", "/grub/grubenv"):
        text = read_text(root, path, 64 * 1024)
        if text:
            return dict(line.split("=", 1) for line in text.splitlines()
                        if "=" in line and not line.startswith("#"))
    return {}


def _strip_device(path):
    # grub paths may name a device first: (hd0,gpt2)/boot/vmlinuz
    return re.sub(r"^\([^)]*\)", "", path)


def _grub_entries(root):
    for config in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg",
                   "/grub/grub.cfg", "/grub2/grub.cfg"):
        text = read_text(root, config)
        if not text:
            continue
        base = "/boot" if config.startswith("/boot/") else "/"
        entry = None
        depth = 0
        for line in text.splitlines():
            words = line.strip().split()
            if not words:
                continue
            if words[0] == "menuentry" and entry is None:
                entry = {"initrd": [], "base": base, "name": config}
                depth = line.count("{") - line.count("}")
                continue
            if entry is None:
                continue
            depth += line.count("{") - line.count("}")
            if words[0] in ("linux", "linuxefi", "linux16") and \
                    len(words) > 1:
                entry["linux"] = _strip_device(words[1])
                entry["options"] = " ".join(
                    word for word in words[2:] if "$" not in word)
            elif words[0] in ("initrd", "initrdefi", "initrd16"):
                entry["initrd"] = [_strip_device(w) for w in words[1:]]
            if depth <= 0:
                if entry.get("linux") and "$" not in entry["linux"]:
                    yield entry
                    return
                entry = None


def _glob_entries(root):
    for base in ("/boot", "/"):
        directory = resolve_inside(root, base)
        if directory is None or not os.path.isdir(directory):
            continue
        versions = sorted(
            (name[len("vmlinuz-"):] for name in os.listdir(directory)
             if name.startswith("vmlinuz-")), key=version_key, reverse=True)
        for version in versions:
            kernel = os.path.join(base, "vmlinuz-" + version)
            if not is_file(root, kernel):
                continue
            initrds = [os.path.join(base, pattern % version) for pattern in
                       ("initrd.img-%s", "initramfs-%s.img", "initrd-%s",
                        "initrd-%s.img")]
            initrd = next((p for p in initrds if is_file(root, p)), None)
            yield {"linux": kernel, "initrd": [initrd] if initrd else [],
                   "options": "", "base": "/", "name": "vmlinuz"}


def _locate(root, base, path):
    """The image path of a loader path given relative to ``base``."""
    for candidate in (os.path.join(base, path.lstrip("/")), path):
        if is_file(root, candidate):
            return os.path.normpath(candidate)
    return None


def find_kernel(root):
    """The first bootable entry of the file system mounted at ``root``.

    Returns ``{"kernel", "initrds" (list), "options", "source"}`` with
    paths inside the image, or None.
    """
    env = None
    for source, entries in (("bls", _bls_entries(root)),
                            ("grub.cfg", _grub_entries(root)),
                            ("vmlinuz", _glob_entries(root))):
        for entry in entries:
            kernel = _locate(root, entry["base"], entry["linux"])
            if kernel is None:
                continue
            initrds = [_locate(root, entry["base"], path)
                       for path in entry["initrd"]]
            if None in initrds:
                continue
            options = entry.get("options") or ""
            if "$" in options:
                env = env if env is not None else _grubenv(root)
                options = re.sub(r"\$\{?(\w+)\}?",
                                 lambda m: env.get(m.group(1), ""), options)
            return {"kernel": kernel, "initrds": initrds,
                    "options": " ".join(options.split()), "source": source}
    return None


# -- the device ---------------------------------------------------------------

def probe(node):
    """``blkid -p`` properties of ``node`` (TYPE, UUID, LABEL, ...)."""
    returncode, out, _ = processes.run("blkid", "-p", "-o", "export", node)
    if returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in out.splitlines()
                if "=" in line)


def read_only_mount_options(fs_type):
    """The ``mount -o`` strings to try, in order, for a read-only mount of
    a ``fs_type`` file system that writes nothing to the device."""
    # nosymfollow: the kernel itself refuses to follow the image's links,
    # so nothing read here can lead out of the image, whatever our own
    # path handling does.
    options = "ro,nosuid,nodev,noexec,nosymfollow"
    if fs_type in ("ext3", "ext4"):
        return [options + ",noload"]
    if fs_type == "xfs":
        return [options + ",norecovery"]
    if fs_type == "btrfs":
        # A read-only btrfs mount still replays its log tree unless told
        # not to; kernels before 5.9 spell the option without "rescue=".
        return [options + ",rescue=nologreplay", options + ",nologreplay"]
    return [options]


def _mount(node, fs_type, directory):
    attempts = read_only_mount_options(fs_type)
    for index, options in enumerate(attempts):
        try:
            processes.execute("mount", "-t", fs_type, "-o", options, node,
                              directory)
            return
        except processes.ToolNotFound:
            raise
        except processes.ProcessError as exc:
            if index == len(attempts) - 1:
                raise
            LOG.info("mounting %s with %s failed (%s); trying %s", node,
                     options, exc, attempts[index + 1])


@contextlib.contextmanager
def mounted_read_only(node, fs_type):
    """Mount ``node`` read-only, without journal or log replay, at a
    temporary directory; unmount and remove it when the block ends."""
    directory = tempfile.mkdtemp(prefix="teeth-image-")
    try:
        _mount(node, fs_type, directory)
        try:
            yield directory
        finally:
            processes.execute("umount", directory)
    finally:
        os.rmdir(directory)


def has_boot_loader(path, table, node_of):
    """Describe the boot loader the image brought, or None.

    Looks for boot code in the MBR, a GPT BIOS boot partition with
    content, and an EFI system partition holding an ``.efi`` loader
    (listed with mtools, which reads FAT in user space, under the bounds
    of :func:`teeth_agent.images.uefi.holds_efi_file`). ``node_of(n)``
    gives partition ``n``'s device node.
    """
    # uefi imports this module: imported here, when first needed.
    from teeth_agent.images import uefi
    with open(path, "rb") as stream:
        head = stream.read(512)
        if any(head[:440]):
            return "boot code in the MBR"
        for partition in table["partitions"]:
            if partition["type"] == BIOS_BOOT_TYPE:
                stream.seek(partition["start"] * table["sector_size"])
                if any(stream.read(512)):
                    return "a BIOS boot partition"
    for partition in table["partitions"]:
        if partition["type"] not in ESP_TYPES:
            continue
        if uefi.holds_efi_file(node_of(partition["number"])):
            return "an EFI system partition with a loader"
    return None


def _open_directory(parent_fd, name, shown, create=False):
    """A descriptor of the real directory ``name`` in ``parent_fd``.

    Never follows a symbolic link (``O_NOFOLLOW``); ``shown`` is the image
    path for messages. With ``create`` a missing directory is made.
    Raises :class:`UnsafePath` when ``name`` is a link or not a directory.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath("%s in the image is a symbolic link or not a "
                             "directory; the agent installs grub only into "
                             "a real directory of the image" % shown) \
                from None
        raise
    os.mkdir(name, 0o755, dir_fd=parent_fd)
    return os.open(name, flags, dir_fd=parent_fd)


def _lstat_at(parent_fd, name):
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _move_aside(boot_fd):
    """Rename the image's ``/boot/grub`` out of grub-install's way.

    Returns the new name, or None when the image has none. Raises
    :class:`UnsafePath` when it is a link or not a directory.
    """
    info = _lstat_at(boot_fd, "grub")
    if info is None:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath("/boot/grub in the image is a symbolic link or not "
                         "a directory; the agent installs grub only into a "
                         "real directory of the image")
    while True:
        aside = "grub.teeth-aside-%s" % os.urandom(6).hex()
        if _lstat_at(boot_fd, aside) is None:
            break
    # rename() acts on the entry itself: nothing here is followed.
    os.rename("grub", aside, src_dir_fd=boot_fd, dst_dir_fd=boot_fd)
    return aside


def _merge_back(boot_fd, aside, grub_fd):
    """Move the image's own files from ``aside`` into the new grub
    directory, except where grub wrote its own (modules, fonts, locales
    must match the installed core image); :data:`KEPT_GRUB_FILES` are the
    image's either way. Then remove what is left of ``aside``."""
    aside_fd = _open_directory(boot_fd, aside, "/boot/grub")
    try:
        for name in os.listdir(aside_fd):
            ours = _lstat_at(grub_fd, name)
            if ours is not None:
                if name not in KEPT_GRUB_FILES or stat.S_ISDIR(ours.st_mode):
                    continue
                os.unlink(name, dir_fd=grub_fd)
            os.rename(name, name, src_dir_fd=aside_fd, dst_dir_fd=grub_fd)
    finally:
        os.close(aside_fd)
    # rmtree with dir_fd walks by descriptor and never follows a link.
    shutil.rmtree(aside, dir_fd=boot_fd)


def _write_new_file(directory_fd, name, text):
    """Create ``name`` in ``directory_fd`` with ``text``; never follows or
    replaces anything already there. Returns False when it exists."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=directory_fd)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
    return True


def install_grub(path, root_node, fs_type, target, boot):
    """Install the agent's own grub onto the disk ``path``.

    The image's /boot gets grub's modules and, when it has none, a
    grub.cfg booting ``boot``. ``target`` is ``i386-pc`` (BIOS). Runs
    only the agent's own ``grub-install``; the image's root is mounted
    read-write with ``nosuid,nodev,noexec`` just for this.

    ``grub-install`` resolves its boot directory itself (``realpath`` in
    user space, which ``nosymfollow`` does not stop) and reads
    ``device.map`` from it, so it is never pointed at anything the image
    made: ``/boot`` must be a real directory (it is opened component by
    component with ``O_NOFOLLOW``; a link there raises
    :class:`UnsafePath`), the image's ``/boot/grub`` (a real directory
    too) is renamed aside, and grub-install writes into a new, empty
    ``/boot/grub`` the agent made. Afterwards the image's own files come
    back where grub wrote none, :data:`KEPT_GRUB_FILES` in any case; when
    grub-install fails the image's ``/boot/grub`` is put back as it was.
    """
    if not processes.which("grub-install"):
        raise processes.ToolNotFound(["grub-install"])
    directory = tempfile.mkdtemp(prefix="teeth-grub-")
    try:
        # nosymfollow: no link of the image is followed by the kernel while
        # it is mounted read-write; grub's own resolution is handled below.
        processes.execute("mount", "-t", fs_type, "-o",
                          "nosuid,nodev,noexec,nosymfollow", root_node,
                          directory)
        try:
            _install_into(directory, path, target, boot)
        finally:
            processes.execute("umount", directory)
    finally:
        os.rmdir(directory)


def _install_into(directory, path, target, boot):
    root_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY |
                      os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        boot_fd = _open_directory(root_fd, "boot", "/boot", create=True)
        try:
            aside = _move_aside(boot_fd)
            os.mkdir("grub", 0o755, dir_fd=boot_fd)
            try:
                processes.execute("grub-install", "--target=%s" % target,
                                  "--boot-directory=%s"
                                  % os.path.join(directory, "boot"),
                                  "--no-floppy", path, timeout=600)
            except BaseException:
                shutil.rmtree("grub", dir_fd=boot_fd)
                if aside is not None:
                    os.rename(aside, "grub", src_dir_fd=boot_fd,
                              dst_dir_fd=boot_fd)
                raise
            grub_fd = _open_directory(boot_fd, "grub", "/boot/grub")
            try:
                if aside is not None:
                    _merge_back(boot_fd, aside, grub_fd)
                if boot:
                    _write_new_file(grub_fd, "grub.cfg", grub_config(boot))
            finally:
                os.close(grub_fd)
        finally:
            os.close(boot_fd)
    finally:
        os.close(root_fd)


def _initrd_paths(boot):
    initrd = boot.get("initrd")
    if not initrd:
        return []
    return [initrd] if isinstance(initrd, str) else list(initrd)


def grub_config(boot):
    """A minimal grub.cfg booting ``boot`` (kernel, initrd, cmdline).

    ``boot["initrd"]`` is one path or a list of them; grub loads several
    initrds given on one ``initrd`` line, in order.
    """
    lines = ["set timeout=1", "menuentry 'image' {",
             "    search --no-floppy --fs-uuid --set=root %s"
             % boot["fs_uuid"],
             "    linux %s %s" % (boot["kernel"], boot["cmdline"])]
    initrds = _initrd_paths(boot)
    if initrds:
        lines.append("    initrd %s" % " ".join(initrds))
    lines.append("}")
    return "\n".join(lines) + "\n"
