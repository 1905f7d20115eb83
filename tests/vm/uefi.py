"""UEFI machines for the VM test: OVMF with Secure Boot on, Microsoft keys.

Debian's ``ovmf`` package: the 4M build with Secure Boot support
(``OVMF_CODE_4M.secboot.fd``, which needs SMM: a q35 machine with
``smm=on`` and the flash marked secure) and the variable store with the
Microsoft KEK and db enrolled and Secure Boot on
(``OVMF_VARS_4M.ms.fd``), which is what a server from the shop has: it
trusts Microsoft's UEFI CA, hence Debian's shim. A machine starts from
a fresh copy of the variable store (:func:`fresh_variables`) or from the
one an earlier machine left: a second qemu given the same file is the same
machine after a power cycle (its boot entries kept).

By default no ``bootindex`` is given to any device: OVMF would then
rewrite ``BootOrder`` from qemu's list at every boot, and the test is
about the order the agent set. Without one OVMF boots the entries of
``BootOrder`` in turn, and on a fresh store the ones it makes itself for
the devices present (the CD-ROM, disks with a removable-path loader).

``boot_order`` (serials, ``"net"`` for the NIC) gives those devices a
``bootindex``, as a BMC's boot override would: for a store that already
boots a tenant from disk first. OVMF (2022.11, ``QemuBootOrderLib``)
then rewrites ``BootOrder`` at every boot, the entries booting the listed
devices first in that order (a disk's ``HD()`` entry counts as booting
it), the others after them; it deletes none of them (seen in the VM:
a store holding a tenant entry, the ESP image listed first, the ramdisk
boots, the tenant entry is second). :meth:`UefiMachine.drop_drive` takes
the ramdisk's medium away once it booted (qemu's ``drive_del``: the
device stays, no medium behind it), so that after the next reset OVMF
passes over it to the disk's entry.

:func:`boot_variables` reads the boot entries straight from the variable
store file (qemu writes the flash through to it), to compare what the
firmware holds before and after the agent acted, without the agent's own
view (``efibootmgr``).

``reboot`` True leaves out ``-no-reboot``: the guest's reboot resets the
machine and the firmware runs again, as on hardware.
"""

import json
import os
import shutil
import socket
import struct
import uuid

from tests.vm import machine

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
#: The guest port of the endpoint, fixed so that the command line in the
#: UEFI media's grub.cfg (built once per session) fits every test.
ENDPOINT_GUEST_PORT = 9999
TOOLS = ("sbattach", "sbverify", "mkfs.vfat", "mcopy", "mmd")
#: The firmware names the boot option it starts on the console.
FIRMWARE_BOOT = r'BdsDxe: starting (Boot[0-9A-Fa-f]{4}) "([^"]*)"'


def media_cmdline():
    """The kernel command line of the UEFI media built for the VM test:
    :func:`machine.ramdisk_cmdline` for :data:`ENDPOINT_GUEST_PORT`, and
    the guest's RAM cache keeping 64 MiB free (not 1 GiB)."""
    return machine.ramdisk_cmdline(
        ENDPOINT_GUEST_PORT,
        ["teeth_agent.standbye.cache_reserve=%d" % (64 * 1024 * 1024)])


def missing_requirements():
    """Why the UEFI tests cannot run here, or None."""
    missing = [path for path in (OVMF_CODE, OVMF_VARS)
               if not os.path.exists(path)]
    missing += [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return ("the UEFI VM tests need %s (tools/install-system-packages "
                "installs them)" % ", ".join(missing))
    return None


def fresh_variables(directory, name="OVMF_VARS.fd"):
    """A fresh copy of the Secure Boot variable store in ``directory``."""
    path = os.path.join(directory, name)
    shutil.copyfile(OVMF_VARS, path)
    return path


class UefiMachine(machine.VirtualMachine):
    """A :class:`machine.VirtualMachine` booting through OVMF (Secure Boot
    on) from its disks, with the variable store ``variables``."""

    bootindex = False

    def __init__(self, directory, disks, forwards, variables, reboot=False,
                 memory_mib=3072, boot_order=()):
        super().__init__(directory, kernel=None, initrd=None, cmdline=None,
                         disks=disks, forwards=forwards,
                         memory_mib=memory_mib)
        self.variables = variables
        self.no_reboot = not reboot
        self.boot_order = tuple(boot_order)
        self.qmp_path = os.path.join(directory, "qmp.sock")

    def bootindex_of(self, index, serial):
        if serial in self.boot_order:
            return self.boot_order.index(serial)
        return None

    def monitor_argv(self):
        return ["-monitor", "none",
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]

    def qmp(self, command, **arguments):
        """The ``return`` of the QMP ``command`` (a few milliseconds: the
        only wait here that does not go through ``transport.sleep``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.qmp_path)
            stream = sock.makefile("rwb")
            json.loads(stream.readline())  # the greeting
            for name, args in (("qmp_capabilities", {}),
                               (command, arguments)):
                stream.write(json.dumps({"execute": name,
                                         "arguments": args}).encode()
                             + b"\n")
                stream.flush()
                reply = {}
                while "return" not in reply and "error" not in reply:
                    line = stream.readline()
                    if not line:
                        raise machine.MachineError("qemu closed QMP")
                    reply = json.loads(line)  # events come in between
                if "error" in reply:
                    raise machine.MachineError("QMP %s: %s" % (name, reply))
        return reply["return"]

    def drop_drive(self, index):
        """Detach the backend of disk ``index`` (HMP ``drive_del``): the
        device stays, every read of it fails."""
        out = self.qmp("human-monitor-command",
                       **{"command-line": "drive_del d%d" % index})
        if out.strip():
            raise machine.MachineError("drive_del d%d: %s" % (index, out))

    def firmware_argv(self):
        return ["-machine", "q35,smm=on",
                "-global", "driver=cfi.pflash01,property=secure,value=on",
                "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s"
                % OVMF_CODE,
                "-drive", "if=pflash,format=raw,unit=1,file=%s"
                % self.variables]


# -- the variable store, read from the host ----------------------------------

EFI_GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
_VAR_START = 0x55AA
_VAR_ADDED = 0x3F
#: VAR_ADDED & VAR_IN_DELETED_TRANSITION: valid unless a newer copy is.
_VAR_IN_TRANSITION = 0x3E
#: AUTHENTICATED_VARIABLE_HEADER: StartId, State, Reserved, Attributes,
#: MonotonicCount, TimeStamp (16), PubKeyIndex, NameSize, DataSize,
#: VendorGuid (16).
_HEADER = struct.Struct("<HBBIQ16sIII16s")


def store_variables(data):
    """``{(name, vendor GUID): (attributes, bytes)}``: the live variables
    of an OVMF variable store image (a firmware volume whose
    authenticated variable store follows its header)."""
    if data[0x28:0x2C] != b"_FVH":
        raise ValueError("not a firmware volume")
    start = struct.unpack_from("<H", data, 0x30)[0]
    size = struct.unpack_from("<I", data, start + 16)[0]
    end = min(len(data), start + size)
    offset = start + 28
    added, transition = {}, {}
    while offset + _HEADER.size <= end:
        (start_id, state, _, attributes, _, _, _, name_size, data_size,
         guid) = _HEADER.unpack_from(data, offset)
        if start_id != _VAR_START:
            break
        name_at = offset + _HEADER.size
        name = data[name_at:name_at + name_size].decode(
            "utf-16-le").rstrip("\0")
        value = data[name_at + name_size:name_at + name_size + data_size]
        key = (name, uuid.UUID(bytes_le=guid))
        if state == _VAR_ADDED:
            added[key] = (attributes, value)
        elif state == _VAR_IN_TRANSITION:
            transition[key] = (attributes, value)
        offset = (name_at + name_size + data_size + 3) & ~3
    for key, value in transition.items():
        added.setdefault(key, value)
    return added


def _load_option(value):
    """An EFI_LOAD_OPTION: ``{"attributes", "label", "partition_uuid"
    (of its GPT HD() node, or None), "file", "bytes" (hex, all of
    it)}``."""
    attributes, path_length = struct.unpack_from("<IH", value, 0)
    end = 6
    while value[end:end + 2] != b"\0\0":
        end += 2
    label = value[6:end].decode("utf-16-le")
    path = value[end + 2:end + 2 + path_length]
    partition_uuid = loader = None
    at = 0
    while at + 4 <= len(path):
        kind, sub, length = struct.unpack_from("<BBH", path, at)
        if kind == 0x7F or length < 4:
            break
        node = path[at:at + length]
        # Media device path: 1 hard drive (GUID signature type 2), 4 file.
        if kind == 4 and sub == 1 and length >= 42 and node[41] == 2:
            partition_uuid = str(uuid.UUID(bytes_le=node[24:40]))
        elif kind == 4 and sub == 4:
            loader = node[4:].decode("utf-16-le").rstrip("\0")
        at += length
    return {"attributes": attributes, "label": label,
            "partition_uuid": partition_uuid, "file": loader,
            "bytes": value.hex()}


def boot_variables(path):
    """The boot entries in the variable store file ``path``:
    ``{"boot_order": ["0008", ...], "boot_next": "0009" or None,
    "options": {"0008": load option}}``, numbers as efibootmgr prints
    them."""
    with open(path, "rb") as stream:
        found = store_variables(stream.read())
    result = {"boot_order": [], "boot_next": None, "options": {}}
    for (name, guid), (_, value) in found.items():
        if guid != EFI_GLOBAL:
            continue
        if name == "BootOrder":
            result["boot_order"] = ["%04X" % number for number in
                                    struct.unpack("<%dH" % (len(value) // 2),
                                                  value)]
        elif name == "BootNext" and len(value) == 2:
            result["boot_next"] = "%04X" % struct.unpack("<H", value)[0]
        elif len(name) == 8 and name.startswith("Boot") and \
                all(c in "0123456789ABCDEFabcdef" for c in name[4:]):
            result["options"][name[4:].upper()] = _load_option(value)
    return result
