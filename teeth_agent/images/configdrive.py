"""The config drive: a file system labelled ``config-2``.

It follows OpenStack's config-drive layout, which cloud-init reads::

    openstack/latest/meta_data.json      the meta_data object, as sent
    openstack/latest/user_data           user_data, when given
    openstack/latest/network_data.json   network_data, when given
    openstack/latest/vendor_data.json    vendor_data, when given
    openstack/content/0000, 0001, ...    the extra files

Extra files (``files``: path -> base64 content) are listed in
``meta_data.json`` under ``"files"`` as ``{"path", "content_path"}``
(appended to a list already there), as OpenStack does; otherwise
``meta_data.json`` is exactly the object that was sent.

The file system is ISO 9660, built with ``xorriso -as mkisofs``
(``genisoimage`` when xorriso is missing) with Rock Ridge and Joliet
names, unless the disk's logical sectors are larger than 2048 bytes:
Linux cannot mount ISO 9660 there ("unsupported/invalid hardware sector
size"), so the drive is VFAT instead (``mkfs.vfat`` on a file, filled with
mtools, nothing mounted), with FAT sectors as large as the disk's. A
prebuilt drive arrives gzip-compressed and base64-encoded;
:func:`check_prebuilt` (in bounded memory, for validation) and
:func:`decode_prebuilt` check that it is an ISO 9660 or FAT file system
labelled ``config-2`` and no larger than allowed, and
:func:`fit_to_sector_size` rebuilds it as VFAT when the disk cannot read
it as it is, after checking that what extraction would write is bounded.
"""

# Size: 513 lines, over the ~500 guideline: the config-drive rules (ISO build,
# inflate limits, sector fit) are one threat model; just over the guideline.

import base64
import binascii
import json
import os
import re
import stat
import tempfile
import zlib

from teeth_agent import processes
from teeth_agent import units

LABEL = "config-2"
ISO9660 = "iso9660"
VFAT = "vfat"
#: The largest logical sector size on which Linux mounts ISO 9660.
ISO_MAX_SECTOR_SIZE = 2048
_ISO_DESCRIPTOR = 32768
_SECTOR = 2048
_MIB = units.MIB
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
#: Most files a prebuilt drive may hold when it has to be extracted.
MAX_EXTRACTED_FILES = 10000
#: Most bytes of a file listing (``xorriso -find``, ``mdir -/``) read
#: before a prebuilt drive is refused: a crafted directory loop must not
#: make the listing itself grow without end.
MAX_LISTING = 4 * _MIB
#: CPU seconds a listing or extraction tool may use on one prebuilt drive
#: (an honest one takes well under one; a directory loop makes xorriso
#: read nodes until it is stopped).
TOOL_CPU_SECONDS = 20
#: Address space of a listing or extraction tool (xorriso needs under 10
#: MiB of memory for an honest drive).
TOOL_ADDRESS_SPACE = 512 * _MIB
#: Bytes of a prebuilt drive kept while it is checked (the ISO 9660 volume
#: descriptor ends at 34816, the FAT boot sector at 512).
_HEAD = 64 * 1024
_CHUNK = _MIB
_REPORT_LBA = re.compile(
    r"^File data lba:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,")
_MDIR_TOTAL = re.compile(r"^\s*([\d ]+?) files?\s+([\d ]+?) bytes\s*$")


class InvalidConfigDrive(ValueError):
    """The config drive given by the server cannot be used."""


def decode_files(files):
    """``{path: bytes}`` from ``{path: base64 text}``; checks the paths."""
    decoded = {}
    for path, content in (files or {}).items():
        if not path.startswith("/") or "\0" in path or \
                ".." in path.split("/"):
            raise InvalidConfigDrive("files: %r must be an absolute path "
                                     "without .." % path)
        try:
            decoded[path] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidConfigDrive("files.%s is not valid base64"
                                     % path) from None
    return decoded


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)


def layout(config_drive, directory):
    """Write the config-drive tree of ``config_drive`` in ``directory``.

    Returns the list of relative paths written.
    """
    files = decode_files(config_drive.get("files"))
    meta_data = dict(config_drive["meta_data"])
    latest = os.path.join(directory, "openstack", "latest")
    written = []
    if files:
        listed = list(meta_data.get("files") or [])
        for index, (path, content) in enumerate(sorted(files.items())):
            name = "%04d" % index
            _write(os.path.join(directory, "openstack", "content", name),
                   content)
            written.append("openstack/content/%s" % name)
            listed.append({"path": path, "content_path": "/content/%s"
                           % name})
        meta_data["files"] = listed
    _write(os.path.join(latest, "meta_data.json"),
           json.dumps(meta_data, sort_keys=True).encode())
    written.append("openstack/latest/meta_data.json")
    if config_drive.get("user_data") is not None:
        _write(os.path.join(latest, "user_data"),
               config_drive["user_data"].encode("utf-8"))
        written.append("openstack/latest/user_data")
    for key, name in (("network_data", "network_data.json"),
                      ("vendor_data", "vendor_data.json")):
        if config_drive.get(key) is not None:
            _write(os.path.join(latest, name),
                   json.dumps(config_drive[key], sort_keys=True).encode())
            written.append("openstack/latest/%s" % name)
    return written


def _iso_tool():
    if processes.which("xorriso"):
        return ["xorriso", "-as", "mkisofs"]
    if processes.which("genisoimage"):
        return ["genisoimage"]
    raise processes.ToolNotFound(["xorriso"])


def file_system_for(sector_size):
    """The config-drive file system a disk with ``sector_size``-byte
    logical sectors can mount: :data:`ISO9660` or :data:`VFAT`."""
    return ISO9660 if sector_size <= ISO_MAX_SECTOR_SIZE else VFAT


def build(config_drive, output, max_size, sector_size=512):
    """Build the drive for ``config_drive`` (a dict) at ``output``.

    ISO 9660, or VFAT with ``sector_size``-byte sectors when the disk's
    ``sector_size`` is larger than ISO 9660 allows (see
    :func:`file_system_for`). Returns its size. Raises
    :class:`InvalidConfigDrive` when it would be larger than ``max_size``
    or has a bad file, and :class:`teeth_agent.processes.ProcessError`.
    """
    with tempfile.TemporaryDirectory(prefix="configdrive-") as tree:
        layout(config_drive, tree)
        _build_tree(tree, output, sector_size)
    return _check_size(output, max_size)


def _build_tree(tree, output, sector_size):
    if file_system_for(sector_size) == VFAT:
        _build_vfat(tree, output, sector_size)
    else:
        processes.execute(*_iso_tool(), "-quiet", "-o", output,
                          "-V", LABEL, "-R", "-J", "-input-charset",
                          "utf-8", tree)


def _check_size(output, max_size):
    size = os.path.getsize(output)
    if size > max_size:
        os.unlink(output)
        raise InvalidConfigDrive("the config drive is %d bytes, more than "
                                 "the %d allowed" % (size, max_size))
    return size


def _vfat_size(tree, cluster):
    """Bytes of a FAT file system (one sector per cluster) that holds
    ``tree``, with room for FATs, directories and long names."""
    clusters = 0
    for directory, names, files in os.walk(tree):
        # Each name takes up to 5 entries of 32 bytes with its long name.
        clusters += -(-max(len(names) + len(files) + 2, 1) * 160 // cluster)
        for name in files:
            size = os.path.getsize(os.path.join(directory, name))
            clusters += -(-size // cluster)
    # Two FATs of at most 4 bytes per cluster, the reserved sectors and a
    # FAT12/16 root directory, then a margin so mkfs.vfat's own choices
    # (FAT type, alignment) always leave enough clusters.
    size = clusters * cluster + 2 * 4 * clusters + 64 * cluster
    size = size * 5 // 4 + _MIB
    return -(-size // _MIB) * _MIB


def _build_vfat(tree, output, sector_size):
    with open(output, "wb") as stream:
        stream.truncate(_vfat_size(tree, sector_size))
    # One sector per cluster: mtools and every FAT reader handle sectors of
    # the disk's size, and small files waste little.
    processes.execute("mkfs.vfat", "-S", str(sector_size), "-s", "1",
                      "-n", LABEL, output)
    env = dict(os.environ, **_MTOOLS_ENV)
    sources = [os.path.join(tree, name) for name in sorted(os.listdir(tree))]
    if sources:
        processes.execute("mcopy", "-s", "-i", output, *sources, "::/",
                          env=env)


def fat_sector_size(data):
    """The bytes per sector of a FAT image, or None for other data."""
    if len(data) >= 512 and data[510:512] == b"\x55\xaa":
        for offset in (82, 54):  # FAT32, then FAT12/16 type field
            if data[offset:offset + 3] == b"FAT":
                return int.from_bytes(data[11:13], "little")
    return None


def is_iso9660(data):
    descriptor = data[_ISO_DESCRIPTOR:_ISO_DESCRIPTOR + _SECTOR]
    return descriptor[1:6] == b"CD001" and descriptor[0] == 1


def fit_to_sector_size(data, sector_size, max_size):
    """A prebuilt drive (``data``) a disk with ``sector_size``-byte
    sectors can mount: ``data`` itself, or its files rebuilt as VFAT.

    An ISO 9660 drive on a disk whose sectors are larger than 2048 bytes,
    or a FAT drive with sectors smaller than the disk's, is extracted in
    user space (``xorriso -osirrox``, ``mcopy``) and rebuilt. Before
    anything is extracted its file listing is checked (see
    :func:`check_iso_report` and :func:`check_mdir_listing`): the files
    may total at most ``max_size`` bytes, and no two ISO 9660 files may
    share data. The extracting tool runs with every file it writes limited
    to ``max_size`` bytes and :data:`TOOL_CPU_SECONDS` of CPU. Raises
    :class:`InvalidConfigDrive` when a check fails, the drive holds
    anything but regular files and directories, or the rebuilt drive is
    larger than ``max_size``; :class:`teeth_agent.processes.ProcessError`
    when a tool fails.
    """
    if is_iso9660(data):
        if file_system_for(sector_size) == ISO9660:
            return data
        kind = "ISO 9660"
    else:
        fat_sector = fat_sector_size(data)
        if fat_sector is None or fat_sector >= sector_size:
            return data
        kind = "FAT with %d-byte sectors" % fat_sector
    with tempfile.TemporaryDirectory(prefix="configdrive-") as work:
        image = os.path.join(work, "prebuilt")
        with open(image, "wb") as stream:
            stream.write(data)
        tree = os.path.join(work, "tree")
        os.mkdir(tree)
        # What extraction would produce is listed and bounded first: the
        # sizes in a crafted drive's directories need not match its bytes
        # (records sharing one extent, zisofs, cross-linked clusters).
        if kind == "ISO 9660":
            check_iso_report(_listing("xorriso", "-indev", "stdio:" + image,
                                      "-find", "/", "-exec", "report_lba"),
                             len(data), max_size)
            _extract(max_size, "xorriso", "-osirrox", "on", "-indev",
                     "stdio:" + image, "-extract", "/", tree)
        else:
            env = dict(os.environ, **_MTOOLS_ENV)
            # open_pipe passes no environment: env(1) sets mtools' own.
            check_mdir_listing(_listing("env", "MTOOLS_SKIP_CHECK=1", "mdir",
                                        "-/", "-a", "-i", image, "::/"),
                               max_size)
            _extract(max_size, "mcopy", "-s", "-n", "-i", image, "::/*",
                     tree + "/", env=env)
        _check_tree(tree)
        output = os.path.join(work, "rebuilt")
        _build_vfat(tree, output, sector_size)
        _check_size(output, max_size)
        with open(output, "rb") as stream:
            rebuilt = stream.read()
    return rebuilt


def _limited(max_size, argv):
    # prlimit (util-linux): RLIMIT_FSIZE bounds every file the tool writes,
    # RLIMIT_CPU its run and RLIMIT_AS its memory, whatever the checks
    # before it missed.
    return ("prlimit", "--fsize=%d" % max_size,
            "--cpu=%d" % TOOL_CPU_SECONDS,
            "--as=%d" % TOOL_ADDRESS_SPACE) + tuple(argv)


def _extract(max_size, *argv, env=None):
    try:
        processes.execute(*_limited(max_size, argv), env=env)
    except processes.ProcessError as exc:
        raise InvalidConfigDrive("the prebuilt config drive cannot be "
                                 "extracted within %d bytes per file: %s"
                                 % (max_size, exc)) from None


def _listing(*argv):
    """The standard output of a listing tool, at most
    :data:`MAX_LISTING` bytes of it; :class:`InvalidConfigDrive` beyond."""
    pipe = processes.open_pipe(*_limited(MAX_LISTING, argv), stdin=False)
    try:
        out = pipe.stdout.read(MAX_LISTING + 1)
        if len(out) > MAX_LISTING:
            raise InvalidConfigDrive(
                "the prebuilt config drive's file listing is longer than %d "
                "bytes" % MAX_LISTING)
    except BaseException:
        pipe.kill()
        raise
    pipe.stdout.close()
    try:
        pipe.finish(timeout=TOOL_CPU_SECONDS * 2)
    except processes.ProcessError as exc:
        raise InvalidConfigDrive("the prebuilt config drive cannot be "
                                 "listed within the tools' limits: %s"
                                 % exc) from None
    return out.decode("utf-8", "replace")


def check_iso_report(report, image_size, max_size):
    """Check ``xorriso -find / -exec report_lba`` output before extraction.

    Each ``File data lba`` line is one extent of one file as xorriso will
    extract it: its first 2048-byte block, its blocks and the file's size
    (the expanded size for a zisofs-compressed file). Raises
    :class:`InvalidConfigDrive` when the files total more than
    ``max_size`` bytes, there are more than :data:`MAX_EXTRACTED_FILES`,
    an extent lies past the end of the image (``image_size`` bytes), or
    two extents overlap: an honest drive stores each file once, while a
    crafted one makes many directory records share one large extent.
    """
    extents = []
    total = 0
    for line in report.splitlines():
        match = _REPORT_LBA.match(line)
        if match is None:
            continue
        start, blocks, size = (int(group) for group in match.groups()[1:])
        total += size
        extents.append((start, blocks))
        if len(extents) > MAX_EXTRACTED_FILES:
            raise InvalidConfigDrive(
                "the prebuilt config drive holds more than %d files"
                % MAX_EXTRACTED_FILES)
        if total > max_size:
            raise InvalidConfigDrive(
                "the prebuilt config drive's files total more than %d bytes"
                % max_size)
        if (start + blocks) * _SECTOR > image_size:
            raise InvalidConfigDrive(
                "the prebuilt config drive has a file past its end (block "
                "%d)" % (start + blocks))
    end = 0
    for start, blocks in sorted(extent for extent in extents
                                if extent[1] > 0):
        if start < end:
            raise InvalidConfigDrive(
                "the prebuilt config drive has files sharing data (block "
                "%d); each file must be stored once" % start)
        end = start + blocks
    return total


def check_mdir_listing(listing, max_size):
    """Check ``mdir -/ -a`` output of a FAT drive before extraction.

    mcopy writes each file's size as its directory entry gives it, so the
    total mdir prints (after "Total files listed:" when it lists several
    directories, else the one directory's summary line) bounds what
    extraction writes, whatever the clusters hold. Raises
    :class:`InvalidConfigDrive` when there is no total, or it is above
    ``max_size`` bytes or counts more than :data:`MAX_EXTRACTED_FILES`
    entries.
    """
    lines = listing.splitlines()
    summaries = [match for match in map(_MDIR_TOTAL.match, lines) if match]
    if "Total files listed:" in (line.strip() for line in lines):
        summaries = summaries[-1:]
    if len(summaries) != 1:
        raise InvalidConfigDrive(
            "the prebuilt FAT config drive cannot be listed")
    files, total = (int(group.replace(" ", ""))
                    for group in summaries[0].groups())
    if files > MAX_EXTRACTED_FILES:
        raise InvalidConfigDrive(
            "the prebuilt config drive holds more than %d files"
            % MAX_EXTRACTED_FILES)
    if total > max_size:
        raise InvalidConfigDrive(
            "the prebuilt config drive's files total %d bytes, more than %d"
            % (total, max_size))
    return total


def _check_tree(tree):
    # The extracted drive is copied as it is: a link or a device node in it
    # would make mcopy read something of the agent's instead.
    for directory, names, files in os.walk(tree):
        for name in names + files:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InvalidConfigDrive(
                    "the prebuilt config drive holds %s, which is not a "
                    "regular file or directory"
                    % os.path.relpath(os.path.join(directory, name), tree))


def image_label(data):
    """The volume label of an ISO 9660 or FAT image, or None."""
    descriptor = data[_ISO_DESCRIPTOR:_ISO_DESCRIPTOR + _SECTOR]
    if is_iso9660(data):
        return descriptor[40:72].decode("ascii", "replace").strip()
    if len(data) >= 512 and data[510:512] == b"\x55\xaa":
        for offset in (71, 43):  # FAT32, then FAT12/16
            fs_type = data[offset + 11:offset + 19]
            if fs_type.startswith(b"FAT"):
                return data[offset:offset + 11].decode(
                    "ascii", "replace").strip()
    return None


def _max_encoded_length(max_size):
    # zlib's deflateBound: deflate stores n bytes in at most n + n/4096 +
    # n/16384 bytes and a few more; gzip adds a header and trailer (1024
    # leaves room for a file name) and base64 a third. Text longer than
    # that cannot be a drive of max_size bytes from gzip or zlib.
    compressed = max_size + 5 * (max_size // 16384 + 1) + 1024
    return 4 * (compressed // 3 + 1)


def _inflate(text, max_size, keep):
    """Decompress gzip+base64 ``text`` a chunk at a time.

    Returns ``(head, size)``: the first ``keep`` bytes of the data (a
    ``bytearray``) and its size; no more than ``keep`` plus one chunk is
    held at once. Raises
    :class:`InvalidConfigDrive` before decoding anything when ``text`` is
    longer than a gzip stream of ``max_size`` bytes can be, and as soon as
    the data passes ``max_size`` bytes.
    """
    if len(text) > _max_encoded_length(max_size):
        raise InvalidConfigDrive("config_drive is %d characters, more than "
                                 "a gzip+base64 image of %d bytes can be"
                                 % (len(text), max_size))
    try:
        compressed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidConfigDrive("config_drive is not valid base64") \
            from None
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = bytearray()
    size = 0
    pending = compressed
    try:
        while True:
            chunk = decompressor.decompress(pending, _CHUNK)
            pending = decompressor.unconsumed_tail
            size += len(chunk)
            if size > max_size:
                raise InvalidConfigDrive(
                    "config_drive is larger than %d bytes once "
                    "decompressed" % max_size)
            if len(head) < keep:
                head += chunk[:keep - len(head)]
            if decompressor.eof or (not chunk and not pending):
                break
    except zlib.error as exc:
        raise InvalidConfigDrive("config_drive is not gzip data: %s"
                                 % exc) from None
    if not decompressor.eof:
        raise InvalidConfigDrive("config_drive is truncated gzip data")
    return head, size


def _check_label(data):
    label = image_label(data)
    if label is None or label.lower() != LABEL:
        raise InvalidConfigDrive(
            "config_drive must be an ISO 9660 or FAT image labelled %s "
            "(found %s)" % (LABEL, "label %r" % label if label is not None
                            else "no file system"))


def check_prebuilt(text, max_size):
    """Check a prebuilt config drive sent as gzip+base64 text without
    keeping it: it decompresses in chunks of :data:`_CHUNK` bytes, of
    which only the first 64 KiB are kept (for the label), so checking
    many at once costs little memory. Returns the decompressed size.

    Raises :class:`InvalidConfigDrive` as :func:`decode_prebuilt` does.
    """
    head, size = _inflate(text, max_size, _HEAD)
    _check_label(bytes(head))
    return size


def decode_prebuilt(text, max_size):
    """The bytes (a ``bytearray``: never copied once decompressed) of a
    prebuilt config drive sent as gzip+base64 text.

    Raises :class:`InvalidConfigDrive` when it does not decode, is larger
    than ``max_size`` once decompressed (decompression stops there), or
    is not an ISO 9660 or FAT image labelled ``config-2``.
    """
    data, _ = _inflate(text, max_size, max_size)
    _check_label(data)
    return data
