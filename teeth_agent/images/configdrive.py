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
:func:`decode_prebuilt` checks that it is an ISO 9660 or FAT file system
labelled ``config-2`` and no larger than allowed, and
:func:`fit_to_sector_size` rebuilds it as VFAT when the disk cannot read
it as it is.
"""

import base64
import binascii
import json
import os
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
    user space (``xorriso -osirrox``, ``mcopy``) and rebuilt. Raises
    :class:`InvalidConfigDrive` when it holds anything but regular files
    and directories, or the rebuilt drive is larger than ``max_size``;
    :class:`teeth_agent.processes.ProcessError` when a tool fails.
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
        if kind == "ISO 9660":
            processes.execute("xorriso", "-osirrox", "on", "-indev",
                              "stdio:" + image, "-extract", "/", tree)
        else:
            processes.execute("mcopy", "-s", "-n", "-i", image, "::/*",
                              tree + "/", env=dict(os.environ, **_MTOOLS_ENV))
        _check_tree(tree)
        output = os.path.join(work, "rebuilt")
        _build_vfat(tree, output, sector_size)
        _check_size(output, max_size)
        with open(output, "rb") as stream:
            rebuilt = stream.read()
    return rebuilt


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


def decode_prebuilt(text, max_size):
    """The bytes of a prebuilt config drive sent as gzip+base64 text.

    Raises :class:`InvalidConfigDrive` when it does not decode, is larger
    than ``max_size`` once decompressed, or is not an ISO 9660 or FAT
    image labelled ``config-2``.
    """
    try:
        compressed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidConfigDrive("config_drive is not valid base64") \
            from None
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(compressed, max_size + 1)
    except zlib.error as exc:
        raise InvalidConfigDrive("config_drive is not gzip data: %s"
                                 % exc) from None
    if len(data) > max_size:
        raise InvalidConfigDrive("config_drive is larger than %d bytes "
                                 "once decompressed" % max_size)
    if not decompressor.eof:
        raise InvalidConfigDrive("config_drive is truncated gzip data")
    label = image_label(data)
    if label is None or label.lower() != LABEL:
        raise InvalidConfigDrive(
            "config_drive must be an ISO 9660 or FAT image labelled %s "
            "(found %s)" % (LABEL, "label %r" % label if label is not None
                            else "no file system"))
    return data
