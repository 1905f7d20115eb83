"""The config drive: an ISO 9660 image labelled ``config-2``.

It follows OpenStack's config-drive layout, which cloud-init reads::

    openstack/latest/meta_data.json      the meta_data object, as sent
    openstack/latest/user_data           user_data, when given
    openstack/latest/network_data.json   network_data, when given
    openstack/latest/vendor_data.json    vendor_data, when given
    openstack/content/0000, 0001, ...    the extra files

Extra files (``files``: path -> base64 content) are listed in
``meta_data.json`` under ``"files"`` as ``{"path", "content_path"}``
(appended to a list already there), as OpenStack does; otherwise
``meta_data.json`` is exactly the object that was sent. The image is built
with ``xorriso -as mkisofs`` (``genisoimage`` when xorriso is missing) with
Rock Ridge and Joliet names. A prebuilt drive arrives gzip-compressed and
base64-encoded; :func:`decode_prebuilt` checks that it is an ISO 9660 or
FAT file system labelled ``config-2`` and no larger than allowed.
"""

import base64
import binascii
import json
import os
import tempfile
import zlib

from teeth_agent import processes

LABEL = "config-2"
_ISO_DESCRIPTOR = 32768
_SECTOR = 2048


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


def build(config_drive, output, max_size):
    """Build the ISO for ``config_drive`` (a dict) at ``output``.

    Returns its size. Raises :class:`InvalidConfigDrive` when it would be
    larger than ``max_size`` or has a bad file, and
    :class:`teeth_agent.processes.ProcessError`.
    """
    with tempfile.TemporaryDirectory(prefix="configdrive-") as tree:
        layout(config_drive, tree)
        processes.execute(*_iso_tool(), "-quiet", "-o", output,
                          "-V", LABEL, "-R", "-J", "-input-charset",
                          "utf-8", tree)
    size = os.path.getsize(output)
    if size > max_size:
        os.unlink(output)
        raise InvalidConfigDrive("the config drive is %d bytes, more than "
                                 "the %d allowed" % (size, max_size))
    return size


def image_label(data):
    """The volume label of an ISO 9660 or FAT image, or None."""
    descriptor = data[_ISO_DESCRIPTOR:_ISO_DESCRIPTOR + _SECTOR]
    if descriptor[1:6] == b"CD001" and descriptor[0] == 1:
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
