"""The EFI system partition of a written image, read and written in user
space with mtools.

The agent's kernel may have no vfat driver, and a tenant's FAT file system
is untrusted input, so nothing here mounts it: ``mdir`` lists a directory,
``mmd``/``mcopy`` write, all on the partition's own device node (or an
image file) with ``MTOOLS_SKIP_CHECK`` and no user configuration
(``MTOOLSRC=/dev/null``). Threat model of a hostile image:

- names: only the fixed loader paths and vendor directories whose names
  match :data:`_NAME` (``\\EFI\\<vendor>\\shimx64.efi``, ...) are ever
  used; a name with a separator, a dot-dot or an odd character is skipped,
  so no path the agent builds can leave ``\\EFI``;
- size and depth: only ``\\EFI`` and its direct subdirectories are listed
  (never a recursive walk), at most :data:`MAX_VENDORS` of them; each
  ``mdir`` is read through a pipe, cut (and refused) past
  :data:`MAX_LISTING` bytes, so a directory whose cluster chain loops
  cannot fill the ramdisk's memory;
- every tool that parses tenant data (``mdir``, ``mmd`` and ``mcopy`` on
  the ESP, ``sbverify`` on the image's kernel) runs under the same
  ``prlimit`` bounds (:func:`_limited`: CPU seconds and address space)
  besides its timeout, so a crafted FAT or PE file can neither spin nor
  take the ramdisk's memory;
- the loader is never read or run, only pointed at by a boot entry; the
  agent's own signed shim and grub come from the ramdisk
  (:data:`SHIM_PATH`, :data:`GRUB_PATH`), never from the image;
- the label comes from the image's ``/etc/os-release``, read as the rest
  of the image (:func:`teeth_agent.images.boot.read_text`: links resolved
  inside the image, size bounded) and cleaned to a short printable text.
"""

import logging
import os
import re
import tempfile

from teeth_agent.images import boot
from teeth_agent import processes

LOG = logging.getLogger(__name__)

ESP_GPT_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ESP_MBR_TYPE = "ef"
#: The loaders looked for in each vendor directory, in order.
VENDOR_LOADERS = ("shimx64.efi", "grubx64.efi")
#: The removable-media path, the last resort.
REMOVABLE_DIR = "BOOT"
REMOVABLE_LOADER = "BOOTX64.EFI"
#: The ramdisk's signed loaders (Debian shim-signed, grub-efi-amd64-signed).
SHIM_PATH = "/usr/lib/shim/shimx64.efi.signed"
MOK_MANAGER_PATH = "/usr/lib/shim/mmx64.efi.signed"
GRUB_PATH = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
#: The vendor directory the agent installs into: the prefix built into
#: Debian's signed grub, which reads its grub.cfg from there.
AGENT_VENDOR = "debian"
#: Most vendor directories of ``\\EFI`` looked into.
MAX_VENDORS = 64
#: Largest ``mdir`` output read for one directory.
MAX_LISTING = 1024 * 1024
#: Limits of one ``mdir``, ``mmd``, ``mcopy`` or ``sbverify`` run
#: (``prlimit``): a FAT directory of any size lists, a loader copies and a
#: kernel of up to 128 MiB is checked in well under a second.
MDIR_CPU_SECONDS = 20
MDIR_ADDRESS_SPACE = 512 * 1024 * 1024
#: prlimit's exit status when it cannot run the program (not installed).
_PRLIMIT_ENOENT = 127
#: Largest os-release read.
MAX_OS_RELEASE = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9 ._+()/:,-]")


class EspError(Exception):
    """The EFI system partition cannot be read or written as needed."""


def _env():
    return dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLSRC="/dev/null")


def _target(image, offset):
    """``-i`` argument of an mtools call: the device, or an image file
    with the partition's byte offset."""
    return image if not offset else "%s@@%d" % (image, offset)


def is_esp(partition):
    return partition["type"] in (ESP_GPT_TYPE, ESP_MBR_TYPE)


def find_esps(table):
    """The EFI system partitions of ``table`` (as read by
    :func:`teeth_agent.disk.partitions.read_table`), in table order."""
    return [p for p in table["partitions"] if is_esp(p) and p["number"]]


def _limited(*argv):
    """``argv`` run under ``prlimit``: at most :data:`MDIR_CPU_SECONDS`
    of CPU and :data:`MDIR_ADDRESS_SPACE` bytes of address space (the
    bounds of every tool run on tenant data here)."""
    return ("prlimit", "--cpu=%d" % MDIR_CPU_SECONDS,
            "--as=%d" % MDIR_ADDRESS_SPACE) + tuple(argv)


def _not_installed(returncode, err):
    """Whether prlimit said it could not find the program it runs."""
    return returncode == _PRLIMIT_ENOENT and "failed to execute" in (err or "")


def _listing(image, path, offset, recursive=False):
    """``(returncode, stdout, stderr)`` of ``mdir -a -b`` on ``path``
    (``-/``: with every subdirectory), read through a pipe: at most
    :data:`MAX_LISTING` bytes are ever held (a directory whose cluster
    chain loops would print without end), and mdir runs under ``prlimit``
    (:func:`_limited`)."""
    # open_pipe passes no environment: env(1) sets mtools' own.
    flags = ("-/", "-a", "-b") if recursive else ("-a", "-b")
    pipe = processes.open_pipe(*_limited(
        "env", "MTOOLS_SKIP_CHECK=1", "MTOOLSRC=/dev/null", "mdir", *flags,
        "-i", _target(image, offset), "::" + path), stdin=False)
    try:
        out = pipe.stdout.read(MAX_LISTING + 1)
        if len(out) > MAX_LISTING:
            raise EspError("the directory %s on %s lists more than %d bytes"
                           % (path, image, MAX_LISTING))
    except BaseException:
        pipe.kill()
        raise
    pipe.stdout.close()
    returncode, err = pipe.finish(timeout=MDIR_CPU_SECONDS * 4, check=False)
    return returncode, out.decode("utf-8", "replace"), err


def holds_efi_file(image, offset=0):
    """Whether the FAT file system ``image`` holds a file named ``*.efi``
    anywhere (the BIOS path's "the image brought a UEFI loader"). One
    recursive listing, bounded like every other (:func:`_listing`):
    :class:`EspError` past :data:`MAX_LISTING` bytes; False when mdir
    cannot read it."""
    returncode, out, _ = _listing(image, "/", offset, recursive=True)
    return returncode == 0 and any(
        line.rstrip().lower().endswith(".efi") for line in out.splitlines())


def list_directory(image, path, offset=0):
    """``{name: is_directory}`` of the FAT directory ``path`` (``/EFI``).

    Returns None when it does not exist; raises :class:`EspError` when the
    file system cannot be read or the listing is too long. Names with a
    separator or a control character are left out.
    """
    try:
        returncode, out, err = _listing(image, path, offset)
    except processes.ToolNotFound:
        raise
    except processes.ProcessError as exc:
        raise EspError("cannot list %s on %s: %s" % (path, image, exc)) \
            from None
    if returncode != 0:
        if "not found" in err:
            return None
        raise EspError("cannot list %s on %s: %s"
                       % (path, image, (err or "").strip()[-200:]))
    prefix = "::" + path.rstrip("/") + "/"
    entries = {}
    for line in out.splitlines():
        if not line.startswith(prefix):
            continue
        name = line[len(prefix):]
        directory = name.endswith("/")
        name = name.rstrip("/")
        if not name or "/" in name or "\\" in name or \
                any(ord(c) < 32 for c in name):
            continue
        entries[name] = directory
    return entries


def _find_name(listing, wanted, directory):
    """The name in ``listing`` equal to ``wanted`` ignoring case (FAT is
    case-insensitive), of the given kind, or None."""
    for name, is_dir in sorted(listing.items()):
        if name.lower() == wanted.lower() and is_dir == directory:
            return name
    return None


def find_loader(image, offset=0):
    """The loader to boot from the ESP ``image``, or None.

    ``\\EFI\\<vendor>\\shimx64.efi`` before ``grubx64.efi`` (vendors in
    name order, ``BOOT`` left to last), then ``\\EFI\\BOOT\\BOOTX64.EFI``.
    Returns ``{"loader" (a UEFI path with backslashes), "vendor"}``.
    """
    efi = list_directory(image, "/", offset)
    top = _find_name(efi or {}, "EFI", True)
    if top is None:
        return None
    vendors = list_directory(image, "/" + top, offset) or {}
    names = sorted(name for name, is_dir in vendors.items()
                   if is_dir and _NAME.match(name)
                   and name.upper() != REMOVABLE_DIR)
    if len(names) > MAX_VENDORS:
        LOG.warning("%s has %d vendor directories in \\EFI; looking into "
                    "the first %d", image, len(names), MAX_VENDORS)
        names = names[:MAX_VENDORS]
    listings = {}
    for wanted in VENDOR_LOADERS:
        for vendor in names:
            if vendor not in listings:
                listings[vendor] = list_directory(
                    image, "/%s/%s" % (top, vendor), offset) or {}
            name = _find_name(listings[vendor], wanted, False)
            if name is not None:
                return {"loader": "\\%s\\%s\\%s" % (top, vendor, name),
                        "vendor": vendor}
    removable = _find_name(vendors, REMOVABLE_DIR, True)
    if removable is not None:
        listing = list_directory(image, "/%s/%s" % (top, removable),
                                 offset) or {}
        name = _find_name(listing, REMOVABLE_LOADER, False)
        if name is not None:
            return {"loader": "\\%s\\%s\\%s" % (top, removable, name),
                    "vendor": None}
    return None


def os_release_label(root):
    """A boot entry label from the image's os-release (``PRETTY_NAME``,
    else ``NAME`` and ``VERSION_ID``), or None."""
    text = None
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = boot.read_text(root, path, MAX_OS_RELEASE)
        except (boot.UnsafePath, OSError) as exc:
            LOG.warning("cannot read %s of the image: %s", path, exc)
            text = None
        if text:
            break
    if not text:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and re.match(r"^[A-Z_]+$", key):
            fields.setdefault(key, value.strip().strip("\"'"))
    label = fields.get("PRETTY_NAME") or " ".join(
        part for part in (fields.get("NAME"), fields.get("VERSION_ID"))
        if part)
    return clean_label(label)


def clean_label(text, limit=64):
    """``text`` as a boot entry label: printable ASCII letters, digits and
    simple punctuation, whitespace folded, at most ``limit`` characters;
    None when nothing is left."""
    label = " ".join(_LABEL_CHARS.sub(" ", text or "").split())[:limit]
    return label.strip() or None


def kernel_signed(path):
    """Whether the kernel file ``path`` carries an Authenticode signature
    (``sbverify --list``): True, False, or None when it cannot tell
    (sbverify missing, not a PE image). Says nothing about whether the
    signer is trusted: only the running kernel's ``kexec -s`` can."""
    # The kernel is the tenant's: sbverify parses it under prlimit.
    try:
        returncode, out, err = processes.run(
            *_limited("sbverify", "--list", path), timeout=60)
    except processes.ToolNotFound:
        return None
    if returncode != 0:
        if not _not_installed(returncode, err):
            LOG.info("sbverify --list %s exited %d: %s", path, returncode,
                     (err or "").strip()[-200:])
        return None
    if re.search(r"^signature \d+", out or "", re.MULTILINE):
        return True
    if "No signature table present" in (out or "") + (err or ""):
        return False
    return None


def _mtools(*argv):
    """``mmd``/``mcopy`` on the tenant's ESP, under :func:`_limited`."""
    try:
        returncode, out, err = processes.run(*_limited(*argv), env=_env(),
                                             timeout=300)
    except processes.ToolNotFound:
        raise
    except processes.ProcessError as exc:
        raise EspError("%s failed on the EFI system partition: %s"
                       % (argv[0], exc)) from exc
    if _not_installed(returncode, err):
        raise processes.ToolNotFound([argv[0]])
    if returncode != 0:
        raise EspError("%s failed on the EFI system partition: %s"
                       % (argv[0], processes.ProcessError(
                           _limited(*argv), returncode, out, err)))


def _ensure_directory(image, offset, path):
    """Make the FAT directory ``path`` unless it exists (as a directory:
    a file of that name is an error)."""
    parent, _, name = path.rpartition("/")
    listing = list_directory(image, parent or "/", offset) or {}
    existing = next((n for n, is_dir in listing.items()
                     if n.lower() == name.lower()), None)
    if existing is None:
        _mtools("mmd", "-i", _target(image, offset), "::" + path)
        return path
    if not listing[existing]:
        raise EspError("%s on the EFI system partition is a file, not a "
                       "directory" % path)
    return (parent + "/" + existing) if parent else "/" + existing


def _copy(image, offset, source, destination):
    listing = list_directory(image, destination.rpartition("/")[0],
                             offset) or {}
    name = destination.rpartition("/")[2]
    if any(n.lower() == name.lower() and is_dir
           for n, is_dir in listing.items()):
        raise EspError("%s on the EFI system partition is a directory"
                       % destination)
    _mtools("mcopy", "-o", "-i", _target(image, offset), source,
            "::" + destination)


def install_signed_loader(image, grub_cfg, offset=0, shim=SHIM_PATH,
                          grub=GRUB_PATH, mok_manager=MOK_MANAGER_PATH):
    """Copy the ramdisk's signed shim and grub and ``grub_cfg`` (text)
    into ``\\EFI\\debian`` of the ESP ``image``, and to the removable path
    ``\\EFI\\BOOT`` unless it already holds a ``BOOTX64.EFI``.

    Returns ``{"loader", "removable" (bool)}``. Raises
    :class:`EspError` (no space, a name taken by a directory, ...) and
    :class:`processes.ToolNotFound` when a loader or mtools is missing.
    """
    for path in (shim, grub):
        if not os.path.isfile(path):
            raise processes.ToolNotFound([path])
    top = _ensure_directory(image, offset, "/EFI")
    with tempfile.TemporaryDirectory(prefix="teeth-esp-") as work:
        config = os.path.join(work, "grub.cfg")
        with open(config, "w") as stream:
            stream.write(grub_cfg)
        vendor = _ensure_directory(image, offset, top + "/" + AGENT_VENDOR)
        _copy(image, offset, shim, vendor + "/shimx64.efi")
        _copy(image, offset, grub, vendor + "/grubx64.efi")
        if mok_manager and os.path.isfile(mok_manager):
            _copy(image, offset, mok_manager, vendor + "/mmx64.efi")
        _copy(image, offset, config, vendor + "/grub.cfg")
        removable = _ensure_directory(image, offset, top + "/" + REMOVABLE_DIR)
        listing = list_directory(image, removable, offset) or {}
        has_own = _find_name(listing, REMOVABLE_LOADER, False) is not None
        if not has_own:
            _copy(image, offset, shim, removable + "/" + REMOVABLE_LOADER)
            _copy(image, offset, grub, removable + "/grubx64.efi")
            _copy(image, offset, config, removable + "/grub.cfg")
    loader = "\\" + "\\".join(part for part in vendor.split("/") if part) + \
        "\\shimx64.efi"
    LOG.info("installed the signed shim and grub into %s of %s", loader,
             image)
    return {"loader": loader, "removable": not has_own}
