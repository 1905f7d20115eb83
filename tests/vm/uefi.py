"""UEFI machines for the VM test: OVMF with Secure Boot on, Microsoft keys.

Debian's ``ovmf`` package: the 4M build with Secure Boot support
(``OVMF_CODE_4M.secboot.fd``, which needs SMM: a q35 machine with
``smm=on`` and the flash marked secure) and the variable store with the
Microsoft KEK and db enrolled and Secure Boot on
(``OVMF_VARS_4M.ms.fd``), which is what a server from the shop has: it
trusts Microsoft's UEFI CA, hence Debian's shim. Every machine gets a
fresh copy of the variable store; a second qemu given the same copy is the
same machine after a power cycle (its boot entries kept).

No ``bootindex`` is given to any device: OVMF would then rewrite
``BootOrder`` from qemu's list at every boot, and the test is about the
order the agent set. Without one OVMF boots the entries of
``BootOrder`` in turn, and on a fresh store the ones it makes itself for
the devices present (the CD-ROM, disks with a removable-path loader).

``reboot`` True leaves out ``-no-reboot``: the guest's reboot resets the
machine and the firmware runs again, as on hardware.
"""

import os
import shutil

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
                 memory_mib=3072):
        super().__init__(directory, kernel=None, initrd=None, cmdline=None,
                         disks=disks, forwards=forwards,
                         memory_mib=memory_mib)
        self.variables = variables
        self.no_reboot = not reboot

    def firmware_argv(self):
        return ["-machine", "q35,smm=on",
                "-global", "driver=cfi.pflash01,property=secure,value=on",
                "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s"
                % OVMF_CODE,
                "-drive", "if=pflash,format=raw,unit=1,file=%s"
                % self.variables]
