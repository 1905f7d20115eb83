"""Sample image data shared by the image tests."""

import struct

from teeth_agent import units

MIB = units.MIB


def qcow2_header(version=3, backing=0, crypt=0, incompatible=0,
                 extensions=b""):
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing,
                         0, 16, 10 * MIB, crypt, 1, 0x30000, 0x10000, 1, 0,
                         0)
    if version == 3:
        header += struct.pack(">QQQII", incompatible, 0, 0, 4, 112)
        header += bytes(112 - len(header))
    return header + extensions + bytes(8) + bytes(4096)
