"""Tool outputs for the erase unit tests, written for these tests.

They follow the layout of nvme-cli 2.x, hdparm 9.6x and sg3-utils 1.4x
output closely enough for the parsers, with made-up models and serials.
"""

import json

HDPARM_QEMU = """
/dev/sda:

ATA device, with non-removable media
\tModel Number:       QEMU HARDDISK
\tSerial Number:      SATA0001
\tFirmware Revision:  2.5+
Standards:
\tUsed: ATA/ATAPI-7 T13 1532D revision 4a
\tSupported: 7 6 5 4
Configuration:
\tLogical\t\tmax\tcurrent
\tcylinders\t16383\t16383
\tLBA    user addressable sectors:   2097152
\tLogical/Physical Sector size:           512 bytes
\tdevice size with M = 1000*1000:        1073 MBytes (1 GB)
Capabilities:
\tLBA, IORDY(cannot be disabled)
\tQueue depth: 32
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
\t   *\tPower Management feature set
\t   *\tWrite cache
\t   *\tFlush cache
\t   *\t48-bit Address feature set
Checksum: correct
"""

_HDPARM_SSD_HEAD = """
/dev/sdb:

ATA device, with non-removable media
\tModel Number:       ACME SSD 480G
\tSerial Number:      ACME0000SSD42
\tFirmware Revision:  A1B2
\tTransport:          Serial, ATA8-AST, SATA 1.0a, SATA II Extensions
Standards:
\tUsed: unknown (minor revision code 0x011b)
\tSupported: 10 9 8 7 6 5
Configuration:
\tLBA48  user addressable sectors:   937703088
\tLogical  Sector size:                   512 bytes
\tPhysical Sector size:                  4096 bytes
\tdevice size with M = 1000*1000:      480103 MBytes (480 GB)
\tNominal Media Rotation Rate: Solid State Device
Capabilities:
\tLBA, IORDY(can be disabled)
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
\t    \tSecurity Mode feature set
\t   *\tWrite cache
\t   *\tData Set Management TRIM supported (limit 8 blocks)
{sanitize}Security:
\tMaster password revision code = 65534
\t\tsupported
\t{enabled}\tenabled
\t{locked}\tlocked
\t{frozen}\tfrozen
\tnot\texpired: security count
\t{enhanced}\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 4min for ENHANCED SECURITY ERASE UNIT.
Logical Unit WWN Device Identifier: 5002538e40a1b2c3
\tNAA\t\t: 5
Checksum: correct
"""

_SANITIZE_FEATURES = """\t   *\tSANITIZE feature set
\t   *\tCRYPTO_SCRAMBLE_EXT command
\t   *\tBLOCK_ERASE_EXT command
"""


def hdparm_ssd(enabled=False, locked=False, frozen=False, enhanced=True,
               sanitize=False):
    """``hdparm -I`` of a SATA SSD with the ATA security feature set."""
    def flag(value):
        return "" if value else "not"
    return _HDPARM_SSD_HEAD.format(
        enabled=flag(enabled), locked=flag(locked), frozen=flag(frozen),
        enhanced=flag(enhanced),
        sanitize=_SANITIZE_FEATURES if sanitize else "")


HDPARM_SCSI = """
/dev/sdc:
SG_IO: bad/missing sense data, sb[]:  70 00 05 00 00 00 00 0a 00 00 00 00 20 00
"""


def nvme_id_ctrl(sanicap=0, fna=0, oacs=0x17):
    """``nvme id-ctrl -o json`` of a controller (only fields parsed and a
    few around them)."""
    return json.dumps({
        "vid": 7532, "ssvid": 7532, "sn": "NVME0001            ",
        "mn": "ACME NVMe 1.6TB", "fr": "1.0", "rab": 6, "ieee": 525,
        "cmic": 0, "mdts": 7, "cntlid": 0, "ver": 66560, "oacs": oacs,
        "acl": 3, "aerl": 3, "frmw": 3, "lpa": 7, "fna": fna,
        "sanicap": sanicap, "nn": 1, "oncs": 95,
    })


NVME_ID_NS = json.dumps({"nsze": 3125627568, "ncap": 3125627568,
                         "nuse": 3125627568, "nsfeat": 0, "nlbaf": 1,
                         "flbas": 1, "lbafs": [{"ms": 0, "ds": 9, "rp": 0},
                                               {"ms": 0, "ds": 12,
                                                "rp": 0}]})


def nvme_sanitize_log(status, sprog, nested_status_text=True):
    """``nvme sanitize-log -o json`` as nvme-cli 2.x prints it."""
    if nested_status_text:
        sstat = {"global_erased": 1, "no_cmplted_passes": 0,
                 "status": "(%d) status text" % status}
    else:
        sstat = status
    return json.dumps({"nvme0n1": {"sprog": sprog, "sstat": sstat,
                                   "cdw10_info": 4, "time_over_write":
                                   4294967295}})


SG_OPCODES_SUPPORTED = """  ACME      SAS SSD 1.6T      A100
  Opcode=0x48  Service_action=0x03
  Command_name: Sanitize, cryptographic erase
  Command is supported [conforming to SCSI standard]
  Usage data: 48 e3 00 00 00 00 00 ff ff 00
"""

SG_OPCODES_UNSUPPORTED = """  ACME      SAS SSD 1.6T      A100
  Opcode=0x48  Service_action=0x02
  Command_name: Sanitize, block erase
  Command is not supported
"""

HDPARM_SANITIZE_RUNNING = """
/dev/sdb:
Issuing SANITIZE_STATUS command
Sanitize status:
    State:    SD2 Sanitize operation In Process
    Progress: 0x4000 (25%)
"""

HDPARM_SANITIZE_DONE = """
/dev/sdb:
Issuing SANITIZE_STATUS command
Sanitize status:
    State:    SD0 Sanitize Idle
    Last Sanitize Operation Completed Without Error
"""
