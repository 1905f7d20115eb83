"""A qemu virtual machine booting the ramdisk, for the VM test.

The machine runs under TCG emulation (``-accel tcg -cpu max``, one vCPU)
with file-backed disks, its serial console written to a file, and
user-mode networking restricted to the host (``restrict=on``): the guest
reaches exactly the host services named in ``forwards`` through
``guestfwd`` rules, each relaying one guest connection to
``127.0.0.1:<host port>`` with ``nc``. ``-no-reboot`` turns a reboot into
qemu's exit.

Every wait here sleeps through ``teeth_agent.transport`` so the endpoint
running on the hub in the same thread keeps answering the agent.
"""

import os
import re
import signal
import subprocess

from teeth_agent import transport

GUEST_SERVER = "10.0.2.100"
GUEST_ADDRESS = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
POLL = 0.25


class MachineError(AssertionError):
    """The machine did not do what the test waited for."""


class VirtualMachine:
    """One qemu process; :meth:`stop` always ends it.

    Subclasses (``tests.vm.uefi``) add firmware with :meth:`firmware_argv`
    and may let the guest reboot (``no_reboot`` False), leave the boot
    order to the firmware (``bootindex`` False) or give their own
    ``bootindex`` per device (:meth:`bootindex_of`), and add monitor
    arguments (:meth:`monitor_argv`).

    ``disks`` is a list of ``(kind, path, serial)`` with kind ``virtio``,
    ``virtio-ro`` (read-only), ``nvme``, ``nvme-ns`` (one namespace of a
    controller the ``nvme-ns`` disks share), ``sata`` or ``cdrom`` (an ISO
    image, read-only);
    ``forwards`` maps a guest port on :data:`GUEST_SERVER` to a host port
    on 127.0.0.1. With ``kernel``
    None the firmware (SeaBIOS) boots the first disk instead, through
    whatever boot loader that disk holds; ``initrd`` and ``cmdline`` are
    then unused.
    """

    def __init__(self, directory, kernel, initrd, cmdline, disks,
                 forwards, memory_mib=3072):
        self.directory = directory
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.disks = disks
        self.forwards = forwards
        self.memory_mib = memory_mib
        self.console_path = os.path.join(directory, "console.log")
        self.qemu_log_path = os.path.join(directory, "qemu.log")
        self.process = None
        self.started_at = None

    no_reboot = True
    bootindex = True

    def firmware_argv(self):
        """Extra qemu arguments for the firmware (none: SeaBIOS)."""
        return []

    def monitor_argv(self):
        """The monitor arguments: none (nothing talks to qemu)."""
        return ["-monitor", "none"]

    def bootindex_of(self, index, serial):
        """The ``bootindex`` of disk ``index`` (serial ``serial``), or None;
        ``serial`` ``"net"`` asks for the NIC's. Without a kernel the
        first disk comes first (unless ``bootindex`` is False)."""
        if self.kernel is None and index == 0 and self.bootindex:
            return 0
        return None

    def _relay(self, host_port):
        # guestfwd's cmd: takes no spaces, so the relay is a script.
        path = os.path.join(self.directory, "relay-%d.sh" % host_port)
        with open(path, "w") as stream:
            stream.write("#!/bin/sh\nexec nc 127.0.0.1 %d\n" % host_port)
        os.chmod(path, 0o755)
        return path

    def argv(self):
        netdev = ["user", "id=n0", "restrict=on", "ipv6=off"]
        for guest_port, host_port in sorted(self.forwards.items()):
            netdev.append("guestfwd=tcp:%s:%d-cmd:%s" % (
                GUEST_SERVER, guest_port, self._relay(host_port)))
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
                "-smp", "1", "-m", str(self.memory_mib),
                # No default CD-ROM, VGA or NIC: only the devices below.
                "-nodefaults", "-nographic"] + \
            (["-no-reboot"] if self.no_reboot else []) + \
            self.monitor_argv() + \
            ["-serial", "file:%s" % self.console_path]
        argv += self.firmware_argv()
        if self.kernel is not None:
            argv += ["-kernel", self.kernel, "-initrd", self.initrd,
                     "-append", self.cmdline]
        # romfile= (empty): no iPXE option ROM to load and run.
        nic = "virtio-net-pci,netdev=n0,romfile="
        if self.bootindex_of(None, "net") is not None:
            nic += ",bootindex=%d" % self.bootindex_of(None, "net")
        argv += ["-netdev", ",".join(netdev), "-device", nic]
        ahci = False
        namespaces = []
        for index, (kind, path, serial) in enumerate(self.disks):
            drive = "d%d" % index
            argv += ["-drive", "file=%s,if=none,id=%s,format=raw%s"
                     % (path, drive,
                        ",media=cdrom,readonly=on" if kind == "cdrom"
                        else ",readonly=on" if kind == "virtio-ro"
                        else "")]
            bootindex = self.bootindex_of(index, serial)
            if bootindex is not None:
                # The firmware's boot order (qemu's fw_cfg "bootorder").
                drive += ",bootindex=%d" % bootindex
            if kind in ("virtio", "virtio-ro"):
                argv += ["-device", "virtio-blk-pci,drive=%s,serial=%s"
                         % (drive, serial)]
            elif kind == "nvme":
                argv += ["-device", "nvme,drive=%s,serial=%s"
                         % (drive, serial)]
            elif kind == "nvme-ns":
                # One more namespace of a shared NVMe controller (the
                # first such disk's serial names the controller).
                if not namespaces:
                    argv += ["-device", "nvme,id=nvmens,serial=%s" % serial]
                namespaces.append(drive)
                argv += ["-device", "nvme-ns,drive=%s,bus=nvmens,nsid=%d"
                         % (drive, len(namespaces))]
            elif kind in ("sata", "cdrom"):
                # cdrom: read-only virtual media, as a BMC attaches it.
                if not ahci:
                    argv += ["-device", "ahci,id=ahci0"]
                    ahci = True
                argv += ["-device", "%s,drive=%s,bus=ahci0.%d,serial=%s"
                         % ("ide-hd" if kind == "sata" else "ide-cd",
                            drive, index, serial)]
            else:
                raise ValueError("unknown disk kind %r" % kind)
        return argv

    def start(self):
        with open(self.qemu_log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = transport.monotonic()
        return self

    def stop(self):
        """End qemu (if it still runs) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def console(self):
        try:
            with open(self.console_path, "rb") as stream:
                return stream.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines=60):
        return "\n".join(self.console().splitlines()[-lines:])

    def running(self):
        return self.process is not None and self.process.poll() is None

    def wait_for_console(self, pattern, timeout, start=0):
        """The first match of the regex ``pattern`` in the console output
        after offset ``start``; raises :class:`MachineError` on timeout or
        when qemu exits without printing it."""
        deadline = transport.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.console(), start)
            if match:
                return match
            if not self.running():
                raise MachineError(
                    "qemu exited (%s) before the console showed %r:\n%s"
                    % (self.process.returncode, pattern,
                       self.console_tail()))
            if transport.monotonic() > deadline:
                raise MachineError("the console did not show %r within "
                                   "%ss:\n%s" % (pattern, timeout,
                                                 self.console_tail()))
            transport.sleep(POLL)

    def wait_for_exit(self, timeout):
        """qemu's exit status; raises :class:`MachineError` on timeout."""
        deadline = transport.monotonic() + timeout
        while self.running():
            if transport.monotonic() > deadline:
                raise MachineError("qemu still runs after %ss:\n%s"
                                   % (timeout, self.console_tail()))
            transport.sleep(POLL)
        return self.process.returncode


def ramdisk_cmdline(endpoint_port, extra=()):
    """The kernel command line booting the ramdisk in the VM: serial
    console, static address, the endpoint behind ``guestfwd``."""
    words = ["console=ttyS0", "panic=-1", "loglevel=4",
             "ip=%s::%s:255.255.255.0:::off" % (GUEST_ADDRESS,
                                                GUEST_GATEWAY),
             "teeth_agent.endpoints=%s:%d" % (GUEST_SERVER, endpoint_port),
             "teeth_agent.reconnect_max_delay=2"]
    return " ".join(words + list(extra))
