"""Test fixtures for hardware managers: a faked machine, no hardware needed.

:class:`FakeMachine` writes a small sysfs, procfs and ``/dev`` tree under a
directory: DMI ids, block devices with their attributes, partitions,
holders, mounts, network interfaces, CPUs, memory, BIOS settings and EFI
variables. :class:`HardwareManagerTestCase` builds one per test, a config
pointing ``[hardware] sysfs_root/procfs_root/dev_root`` at it, and blocks
every external tool unless the test gives a canned answer::

    from teeth_agent.hardware import generic
    from teeth_agent.hardware import testing

    class TestMyManager(testing.HardwareManagerTestCase):
        def test_selected_on_my_chassis(self):
            self.machine.set_dmi(sys_vendor="ACME",
                                 product_name="Roadrunner 9000")
            self.machine.add_disk("sda", size_bytes=480 * 10**9)
            dispatcher = self.build_dispatcher([
                ("generic", generic.GenericHardwareManager),
                ("mine", MyManager)])
            self.assertEqual("mine",
                             dispatcher.implementers("update_firmware")[0])

The tree only holds what the generic manager reads; it is not a complete
sysfs. Paths reported for devices are under the fake ``dev`` directory (use
:meth:`FakeMachine.dev_path`).

"Blocks every external tool" means every way Python has of starting a
program, not only :mod:`teeth_agent.processes`: :func:`block_processes`
makes ``subprocess.Popen`` (and so ``subprocess.run``, ``call``,
``check_output``, ``os.popen`` and asyncio subprocesses), ``os.system``,
``os.spawn*``, ``os.exec*``, ``os.posix_spawn*``, ``pty.spawn`` and the
interpreter's own ``fork_exec`` raise :class:`BlockedProcess`, naming the
call and how to fake it.
"""

# Size: 723 lines, over the ~500 guideline: test support shipped with the
# package for vendor plugins: the fake machine (FakeMachine, 340 lines) and
# the fakes it works with are one fixture.

import http.server
import os
import pty
import shutil
import subprocess
import tempfile
import threading
import unittest
from unittest import mock

from oslo_config import cfg

from teeth_agent import conf as teeth_conf
from teeth_agent import hardware
from teeth_agent import processes

_MAJORS = {"sata": 8, "sas": 8, "scsi": 8, "usb": 8, "nvme": 259,
           "virtio": 252, "loop": 7, "mmc": 179, None: 240}


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as stream:
        stream.write(content)


def _symlink(target, link):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


class FakeMachine:
    """A faked sysfs/procfs/dev tree under ``root``.

    ``sysfs_root``, ``procfs_root`` and ``dev_root`` are the directories to
    put in ``[hardware]``; :meth:`conf_overrides` gives them as a dict. A
    new machine has one CPU, 1 GiB of memory, the agent's root on a tmpfs
    and nothing else.
    """

    def __init__(self, root):
        self.root = root
        self.sysfs_root = os.path.join(root, "sys")
        self.procfs_root = os.path.join(root, "proc")
        self.dev_root = os.path.join(root, "dev")
        for directory in (self.sysfs_root, self.procfs_root, self.dev_root):
            os.makedirs(directory, exist_ok=True)
        self._next_minor = 0
        self._mounts = [("0:20", "/", "tmpfs", "rootfs")]
        self._swaps = []
        self._pci_slot = 0
        self._write_mounts()
        self.set_cpus()
        self.set_memory(1024 ** 3)

    def conf_overrides(self):
        """``{"hardware.sysfs_root": ..., ...}`` for ``make_conf``-style
        helpers and :meth:`HardwareManagerTestCase.set_config`."""
        return {"hardware.sysfs_root": self.sysfs_root,
                "hardware.procfs_root": self.procfs_root,
                "hardware.dev_root": self.dev_root}

    def sys(self, *parts):
        return os.path.join(self.sysfs_root, *parts)

    def dev_path(self, name):
        """The path the generic manager reports for the device ``name``."""
        return os.path.join(self.dev_root, name)

    # -- DMI, CPUs, memory ----------------------------------------------------

    def set_dmi(self, **fields):
        """Write ``/sys/class/dmi/id/<field>`` files, for example
        ``sys_vendor``, ``product_name``, ``product_serial``,
        ``product_uuid``, ``bios_version``, ``bios_date``. ``None`` removes
        a field."""
        for field, value in fields.items():
            path = self.sys("class", "dmi", "id", field)
            if value is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                _write(path, "%s\n" % value)

    def set_cpus(self, model="Fake CPU @ 2.00GHz", sockets=1, cores=1,
                 threads_per_core=1, flags=("fpu", "sse2")):
        """Write ``/proc/cpuinfo`` and the sysfs topology for
        ``sockets * cores * threads_per_core`` logical CPUs."""
        cpu_root = self.sys("devices", "system", "cpu")
        shutil.rmtree(cpu_root, ignore_errors=True)
        records = []
        number = 0
        for socket in range(sockets):
            for core in range(cores):
                for _ in range(threads_per_core):
                    records.append(
                        "processor\t: %d\nmodel name\t: %s\nphysical id\t: "
                        "%d\ncore id\t\t: %d\nflags\t\t: %s\n"
                        % (number, model, socket, core, " ".join(flags)))
                    topology = os.path.join(cpu_root, "cpu%d" % number,
                                            "topology")
                    _write(os.path.join(topology, "physical_package_id"),
                           "%d\n" % socket)
                    _write(os.path.join(topology, "core_id"), "%d\n" % core)
                    number += 1
        _write(os.path.join(self.procfs_root, "cpuinfo"),
               "\n".join(records))

    def set_memory(self, total_bytes, block_bytes=128 * 1024 ** 2,
                   memtotal_bytes=None):
        """Write memory blocks adding up to ``total_bytes`` (a multiple of
        ``block_bytes``; 0 blocks writes none) and ``/proc/meminfo``
        (``memtotal_bytes``, default a little less than the total)."""
        root = self.sys("devices", "system", "memory")
        shutil.rmtree(root, ignore_errors=True)
        if block_bytes and total_bytes // block_bytes:
            _write(os.path.join(root, "block_size_bytes"),
                   "%x\n" % block_bytes)
            for index in range(total_bytes // block_bytes):
                _write(os.path.join(root, "memory%d" % index, "state"),
                       "online\n")
        if memtotal_bytes is None:
            memtotal_bytes = total_bytes - total_bytes // 32
        _write(os.path.join(self.procfs_root, "meminfo"),
               "MemTotal:       %d kB\nMemFree:        1024 kB\n"
               % (memtotal_bytes // 1024))

    # -- block devices --------------------------------------------------------

    def _devnum(self, transport):
        self._next_minor += 16
        return "%d:%d" % (_MAJORS.get(transport, 240), self._next_minor)

    def _device_dir(self, name, transport, model, serial, vendor, wwid):
        """Create the sysfs parent device for ``transport``; return its
        directory (None for loop devices, which have none)."""
        self._pci_slot += 1
        pci = self.sys("devices", "pci0000:00",
                       "0000:00:%02x.0" % self._pci_slot)
        if transport == "loop":
            return None
        if transport == "nvme":
            directory = os.path.join(pci, "nvme", name.split("n1")[0])
            _write(os.path.join(directory, "transport"), "pcie\n")
            _symlink(self.sys("class", "nvme"),
                     os.path.join(directory, "subsystem"))
        elif transport == "virtio":
            directory = os.path.join(pci, "virtio%d" % self._pci_slot)
            _write(os.path.join(directory, "vendor"), "0x1af4\n")
            _symlink(self.sys("bus", "virtio"),
                     os.path.join(directory, "subsystem"))
        else:
            host = {"sata": "ata%d/host0" % self._pci_slot,
                    "sas": "host0/port-0:0/end_device-0:0",
                    "usb": "usb1/1-1/1-1:1.0/host2",
                    "scsi": "host0"}.get(transport, "host0")
            directory = os.path.join(pci, host, "target0:0:0", "0:0:0:0")
            _symlink(self.sys("bus", "scsi"),
                     os.path.join(directory, "subsystem"))
            if serial is not None:
                # SCSI disks expose their serial only in VPD page 0x80.
                data = serial.encode("ascii")
                _write(os.path.join(directory, "vpd_pg80"),
                       bytes([0, 0x80]) + len(data).to_bytes(2, "big")
                       + data)
            if wwid is not None:
                _write(os.path.join(directory, "wwid"), "%s\n" % wwid)
        if model is not None:
            _write(os.path.join(directory, "model"), "%s\n" % model)
        if vendor is not None:
            _write(os.path.join(directory, "vendor"), "%s\n" % vendor)
        if serial is not None and transport == "nvme":
            _write(os.path.join(directory, "serial"), "%s\n" % serial)
        return directory

    def add_disk(self, name, size_bytes, model=None, serial=None, wwid=None,
                 vendor=None, rotational=False, logical_sector_size=512,
                 physical_sector_size=None, removable=False,
                 read_only=False, transport="sata", by_path=None,
                 backing_file=None):
        """Add a whole block device ``name`` and return its reported path.

        ``transport`` is one of sata, sas, scsi, usb, nvme, virtio, loop
        and decides where sysfs keeps the model/serial/wwid (as the kernel
        does); ``wwid`` is the raw sysfs form such as
        ``"naa.5000c500a1b2c3d4"``. ``by_path`` adds a
        ``/dev/disk/by-path/<by_path>`` link. Loop devices get
        ``loop/backing_file`` (default: an empty file ``images/<name>.img`` in
        the fake root).
        """
        directory = self.sys("class", "block", name)
        os.makedirs(os.path.join(directory, "holders"), exist_ok=True)
        _write(os.path.join(directory, "dev"),
               "%s\n" % self._devnum(transport))
        _write(os.path.join(directory, "size"), "%d\n" % (size_bytes // 512))
        _write(os.path.join(directory, "ro"), "%d\n" % bool(read_only))
        _write(os.path.join(directory, "removable"), "%d\n" % bool(removable))
        queue = os.path.join(directory, "queue")
        _write(os.path.join(queue, "rotational"), "%d\n" % bool(rotational))
        _write(os.path.join(queue, "logical_block_size"),
               "%d\n" % logical_sector_size)
        _write(os.path.join(queue, "physical_block_size"),
               "%d\n" % (physical_sector_size or logical_sector_size))
        parent = self._device_dir(name, transport, model, serial, vendor,
                                  wwid)
        if parent is not None:
            _symlink(parent, os.path.join(directory, "device"))
        if transport == "virtio" and serial is not None:
            _write(os.path.join(directory, "serial"), "%s\n" % serial)
        if transport == "nvme" and wwid is not None:
            _write(os.path.join(directory, "wwid"), "%s\n" % wwid)
        if transport == "loop":
            if backing_file is None:
                # A real (empty) regular file: the safety rules stat it.
                backing_file = os.path.join(self.root, "images",
                                            "%s.img" % name)
                _write(backing_file, "")
            _write(os.path.join(directory, "loop", "backing_file"),
                   "%s\n" % backing_file)
        _write(self.dev_path(name), "")
        if by_path:
            _symlink(self.dev_path(name),
                     os.path.join(self.dev_root, "disk", "by-path", by_path))
        return self.dev_path(name)

    def add_unattached_loop(self, name):
        """A loop device node with nothing attached (size 0)."""
        directory = self.sys("class", "block", name)
        _write(os.path.join(directory, "dev"), "7:%d\n" % self._next_minor)
        _write(os.path.join(directory, "size"), "0\n")
        _write(os.path.join(directory, "ro"), "0\n")

    def add_partition(self, disk, name, size_bytes):
        """Add partition ``name`` of ``disk``; return its path."""
        directory = self.sys("class", "block", disk, name)
        number = len([entry for entry in os.listdir(
            self.sys("class", "block", disk))
            if os.path.exists(self.sys("class", "block", disk, entry,
                                       "partition"))]) + 1
        major = self.devnum(disk).split(":")[0]
        self._next_minor += 1
        _write(os.path.join(directory, "dev"),
               "%s:%d\n" % (major, self._next_minor))
        _write(os.path.join(directory, "partition"), "%d\n" % number)
        _write(os.path.join(directory, "size"), "%d\n" % (size_bytes // 512))
        _write(os.path.join(directory, "ro"), "0\n")
        os.makedirs(os.path.join(directory, "holders"), exist_ok=True)
        _symlink(directory, self.sys("class", "block", name))
        _write(self.dev_path(name), "")
        return self.dev_path(name)

    def add_holder(self, lower, holder, dm_name=None):
        """Stack ``holder`` (for example ``dm-0`` or ``md0``) on ``lower``
        (a disk or partition name). A holder already added gains another
        lower device. ``dm_name`` is its device-mapper name."""
        directory = self.sys("class", "block", holder)
        if not os.path.exists(os.path.join(directory, "dev")):
            self._next_minor += 1
            _write(os.path.join(directory, "dev"),
                   "253:%d\n" % self._next_minor)
            _write(os.path.join(directory, "size"), "2048\n")
            _write(os.path.join(directory, "ro"), "0\n")
            os.makedirs(os.path.join(directory, "holders"), exist_ok=True)
            _write(self.dev_path(holder), "")
        if dm_name:
            _write(os.path.join(directory, "dm", "name"), "%s\n" % dm_name)
        _symlink(directory, self.sys("class", "block", lower, "holders",
                                     holder))

    def devnum(self, name):
        """``"major:minor"`` of the block device ``name``."""
        with open(self.sys("class", "block", name, "dev")) as stream:
            return stream.read().strip()

    # -- mounts ---------------------------------------------------------------

    def _write_mounts(self):
        lines = []
        for index, (devnum, mountpoint, fstype, source) in enumerate(
                self._mounts):
            escaped = mountpoint.replace("\\", "\\134").replace(" ", "\\040")
            lines.append("%d 1 %s / %s rw,relatime shared:1 - %s %s rw"
                         % (20 + index, devnum, escaped, fstype, source))
        _write(os.path.join(self.procfs_root, "self", "mountinfo"),
               "\n".join(lines) + "\n")
        _write(os.path.join(self.procfs_root, "swaps"),
               "Filename\tType\tSize\tUsed\tPriority\n"
               + "".join("%s\tpartition\t1024\t0\t-2\n" % path
                         for path in self._swaps))

    def add_mount(self, name, mountpoint, fstype="ext4", source=None,
                  devnum=None):
        """Mount block device ``name`` on ``mountpoint``.

        ``name`` is a disk, partition or holder. Mounting on ``/`` makes it
        the agent's root (replacing the default tmpfs root). ``devnum``
        overrides the device number mountinfo shows, as btrfs does with an
        anonymous ``0:N``.
        """
        if mountpoint == "/":
            self._mounts = [m for m in self._mounts if m[1] != "/"]
        self._mounts.append((devnum or self.devnum(name), mountpoint, fstype,
                             source or "/dev/%s" % name))
        self._write_mounts()

    def remove_mount(self, mountpoint):
        self._mounts = [m for m in self._mounts if m[1] != mountpoint]
        self._write_mounts()

    def add_swap(self, name):
        """Make block device ``name`` an active swap area."""
        self._swaps.append("/dev/%s" % name)
        self._write_mounts()

    # -- network --------------------------------------------------------------

    def add_nic(self, name, mac, speed_mbps=None, carrier=True,
                operstate=None, driver="e1000e", pci_address=None,
                virtual=False):
        """Add ``/sys/class/net/<name>``. ``carrier=None`` leaves the
        carrier file unreadable (an interface that is down);
        ``speed_mbps=None`` writes -1; ``virtual`` interfaces have no
        ``device`` link."""
        directory = self.sys("class", "net", name)
        _write(os.path.join(directory, "address"), "%s\n" % mac)
        _write(os.path.join(directory, "speed"),
               "%d\n" % (speed_mbps if speed_mbps is not None else -1))
        if carrier is not None:
            _write(os.path.join(directory, "carrier"), "%d\n" % bool(carrier))
        _write(os.path.join(directory, "operstate"),
               "%s\n" % (operstate or ("up" if carrier else "down")))
        if virtual:
            return
        self._pci_slot += 1
        pci = self.sys("devices", "pci0000:00", pci_address
                       or "0000:00:%02x.0" % self._pci_slot)
        os.makedirs(pci, exist_ok=True)
        if driver:
            driver_dir = self.sys("bus", "pci", "drivers", driver)
            os.makedirs(driver_dir, exist_ok=True)
            _symlink(driver_dir, os.path.join(pci, "driver"))
        _symlink(pci, os.path.join(directory, "device"))

    # -- firmware -------------------------------------------------------------

    def add_bios_setting(self, name, value, driver="fake-bios",
                         pending_reboot=False):
        """A firmware-attributes setting ``name`` with ``current_value``."""
        attributes = self.sys("class", "firmware-attributes", driver,
                              "attributes")
        _write(os.path.join(attributes, name, "current_value"),
               "%s\n" % value)
        _write(os.path.join(attributes, "pending_reboot"),
               "%d\n" % bool(pending_reboot))

    def bios_setting(self, name, driver="fake-bios"):
        with open(self.sys("class", "firmware-attributes", driver,
                           "attributes", name, "current_value")) as stream:
            return stream.read().strip()

    def set_efi(self, secure_boot=None, setup_mode=None, lockdown=None):
        """Boot in UEFI mode; ``secure_boot``/``setup_mode`` (bools) write
        the EFI variables, ``None`` leaves a variable out; ``lockdown``
        (``"none"``, ``"integrity"``, ``"confidentiality"``) writes the
        kernel's ``kernel/security/lockdown``."""
        if lockdown is not None:
            _write(self.sys("kernel", "security", "lockdown"),
                   " ".join("[%s]" % mode if mode == lockdown else mode
                            for mode in ("none", "integrity",
                                         "confidentiality")) + "\n")
        efivars = self.sys("firmware", "efi", "efivars")
        os.makedirs(efivars, exist_ok=True)
        guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
        for name, value in (("SecureBoot", secure_boot),
                            ("SetupMode", setup_mode)):
            if value is not None:
                _write(os.path.join(efivars, "%s-%s" % (name, guid)),
                       b"\x06\x00\x00\x00" + bytes([int(value)]))


class BlockedProcess(AssertionError):
    """A unit test tried to start a program; the message says how to fake
    it instead."""


def _shown(value):
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(value)
    try:
        return " ".join(os.fsdecode(arg) for arg in value)
    except TypeError:
        return repr(value)


def _first(args, kwargs, name):
    return _shown(args[0] if args else kwargs.get(name, ""))


def _program_and_args(args, kwargs):
    # exec*/spawn*/posix_spawn*: an optional mode, the program, then its
    # arguments as one list or one by one, then perhaps an environment.
    args = [arg for arg in args if not isinstance(arg, (int, dict))]
    if len(args) >= 2 and not isinstance(args[1], (str, bytes)):
        return "%s, [%s]" % (_shown(args[0]), _shown(args[1]))
    return _shown(args)


def _os_exec_calls():
    suffixes = ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")
    names = ["spawn" + suffix for suffix in suffixes]
    names += ["exec" + suffix for suffix in suffixes]
    names += ["posix_spawn", "posix_spawnp"]
    return [name for name in names if hasattr(os, name)]


def _popen_args(args, kwargs):
    return _first(args[1:], kwargs, "args")  # Popen.__init__(self, args)


def _system_args(args, kwargs):
    return _first(args, kwargs, "command")


def _fork_exec_args(args, kwargs):
    return _first(args[:1], {}, "args")


#: Every way of starting a program that :func:`block_processes` closes, as
#: ``(owner, attribute, label, show-arguments)``. ``subprocess.Popen`` is
#: patched on the class, so references taken before the test (``from
#: subprocess import Popen``, asyncio's transports, ``os.popen``) are
#: blocked too.
BLOCKED_CALLS = (
    [(subprocess.Popen, "__init__", "subprocess.Popen", _popen_args),
     (os, "system", "os.system", _system_args)]
    + [(os, name, "os." + name, _program_and_args)
       for name in _os_exec_calls()]
    + [(pty, "spawn", "pty.spawn", _program_and_args)])

try:
    import _posixsubprocess
except ImportError:  # not CPython on POSIX: Popen is still blocked above
    pass
else:
    # Behind Popen, and called directly by multiprocessing's "spawn" and
    # "forkserver" start methods.
    BLOCKED_CALLS.append((_posixsubprocess, "fork_exec",
                          "_posixsubprocess.fork_exec", _fork_exec_args))


class ProcessBlock:
    """What :func:`block_processes` installed for one test.

    :attr:`refused` lists the message of every blocked attempt. The code
    under test may catch :class:`BlockedProcess` (an ``except Exception``
    around a tool call), so the test also fails when it ends with a
    refusal in this list; a test that expects a refusal clears the list
    (``self.process_block.refused.clear()``) after checking it.
    """

    def __init__(self, hint):
        self.hint = hint
        self.refused = []

    def refuse(self, message):
        """Record ``message`` and return the :class:`BlockedProcess` to
        raise."""
        self.refused.append(message)
        return BlockedProcess(message)

    def blocker(self, label, show):
        def blocked(*args, **kwargs):
            raise self.refuse(
                "unit tests must not run external programs: %s(%s) was "
                "blocked; %s" % (label, show(args, kwargs), self.hint))
        return blocked

    def check(self):
        """Fail when a refusal was swallowed by the code under test."""
        if self.refused:
            raise BlockedProcess(
                "the test tried to run %d external program(s), and the code "
                "under test caught the error: %s"
                % (len(self.refused), " / ".join(self.refused)))


def block_processes(test, hint):
    """Block every way of starting a program for the rest of ``test``.

    Each call in :data:`BLOCKED_CALLS` raises :class:`BlockedProcess`
    naming itself, its arguments and ``hint`` (how this kind of test fakes
    a tool), and the test fails at its end if it made any such call. The
    patches are undone by ``test``'s cleanups. Calling it again for the
    same test returns the block already installed, now giving the new
    hint (a subclass's ``setUp`` knows best how its tests fake tools).
    Returns the :class:`ProcessBlock`, also kept as
    ``test.process_block``.
    """
    block = getattr(test, "process_block", None)
    if block is not None:
        block.hint = hint
        return block
    block = test.process_block = ProcessBlock(hint)
    # Cleanups run last-in first-out: the check runs after the patches are
    # undone and after every cleanup of the test itself.
    test.addCleanup(block.check)
    test.addCleanup(delattr, test, "process_block")
    for owner, attribute, label, show in BLOCKED_CALLS:
        patcher = mock.patch.object(owner, attribute,
                                    block.blocker(label, show))
        patcher.start()
        test.addCleanup(patcher.stop)
    return block


_TOOLS_HINT = ("answer the tool with self.tools.answer([...], stdout=...) "
               "or mark it missing with self.tools.missing(program)")


class ToolCalls:
    """Canned answers for external tools, in place of running them.

    A call whose argument list starts with a registered prefix gets that
    answer (the latest registered wins); otherwise a program registered as
    missing raises :class:`~teeth_agent.processes.ToolNotFound`; anything
    else fails the test. ``dmidecode``, which the generic manager only
    reads optional DIMM details from, starts out missing. Every call is
    recorded in :attr:`calls`. With a :class:`ProcessBlock` (``block``), a
    refused call also fails the test at its end, even if the code under
    test caught the error.
    """

    def __init__(self, block=None):
        self.calls = []
        self.block = block
        self._answers = []
        self._missing = {"dmidecode"}

    def answer(self, argv_prefix, stdout="", stderr="", returncode=0):
        self._answers.insert(0, (list(argv_prefix), stdout, stderr,
                                 returncode))

    def missing(self, program):
        self._missing.add(program)

    def spawn(self, argv, input_data, timeout, env, binary):
        self.calls.append(list(argv))
        for prefix, stdout, stderr, returncode in self._answers:
            if argv[:len(prefix)] == prefix:
                return subprocess.CompletedProcess(argv, returncode, stdout,
                                                   stderr)
        if argv[0] in self._missing:
            raise FileNotFoundError(argv[0])
        raise self._refuse("hardware manager tests must not run external "
                           "tools: %s (give an answer with "
                           "self.tools.answer())" % " ".join(argv))

    def open(self, argv, stdin, stdout, stderr):
        raise self._refuse(
            "hardware manager tests must not run external tools: "
            "processes.open_pipe(%s) was blocked; self.tools answers only "
            "processes.execute/run, so mock teeth_agent.processes.open_pipe "
            "for a streaming tool" % " ".join(argv))

    def _refuse(self, message):
        if self.block is not None:
            return self.block.refuse(message)
        return BlockedProcess(message)


def make_conf(**overrides):
    """A parsed config with every agent and endpoint option registered, at
    defaults but for ``overrides``, which maps ``"group.name"`` (or
    ``"name"`` for DEFAULT) to a value. The one config factory of the tests.

    Each call gets option groups of its own (:mod:`teeth_agent.conf.group`
    registers a fresh group object every time): oslo.config keeps overrides
    in the group object, so an override made in one test is not seen by
    the next.
    """
    conf = cfg.ConfigOpts()
    teeth_conf.register_agent_opts(conf)
    teeth_conf.register_endpoint_opts(conf)
    conf([], project="teeth-agent", default_config_files=[],
         default_config_dirs=[])
    # Tests never create the default /var/lib/teeth-endpoint.
    overrides.setdefault("endpoint.state_dir", "")
    for key, value in overrides.items():
        group, _, name = key.rpartition(".")
        conf.set_override(name, value, group=group or None)
    return conf


class HardwareManagerTestCase(unittest.TestCase):
    """A test case with a :class:`FakeMachine` and a config pointing at it.

    Attributes: ``machine`` (the :class:`FakeMachine`), ``conf`` (an
    oslo.config object with every agent option registered), ``tools`` (a
    :class:`ToolCalls`: external tools are blocked unless answered; every
    other way of starting a program raises :class:`BlockedProcess`).
    """

    def setUp(self):
        super().setUp()
        root = tempfile.mkdtemp(prefix="teeth-fake-machine-")
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.machine = FakeMachine(root)
        self.tools = ToolCalls(block_processes(self, _TOOLS_HINT))
        original = processes._spawn
        processes._spawn = self.tools.spawn
        self.addCleanup(setattr, processes, "_spawn", original)
        original_open = processes._open
        processes._open = self.tools.open
        self.addCleanup(setattr, processes, "_open", original_open)
        self.conf = make_conf()
        self.set_config(**self.machine.conf_overrides())

    def set_config(self, **overrides):
        """Override options: ``set_config(**{"hardware.device_include":
        ["/dev/sd*"]})``."""
        for key, value in overrides.items():
            group, _, name = key.rpartition(".")
            self.conf.set_override(name, value, group=group or None)

    def build_dispatcher(self, plugins):
        """A :class:`~teeth_agent.hardware.Dispatcher` from ``(name,
        class)`` pairs, checked, evaluated and initialised as the agent
        does at start-up."""
        return hardware.build_dispatcher(plugins, self.conf)


class FileServer:
    """An HTTP server on 127.0.0.1 serving ``files`` ({path: bytes}).

    For tests of firmware updates and other downloads: the agent accepts
    only http(s) URLs, and tests must not leave the machine.

    ``status`` ({path: code}) makes a path answer with an error code.
    Requests are recorded in ``requests``.
    """

    def __init__(self, files=None, status=None):
        self.files = dict(files or {})
        self.status = dict(status or {})
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                code = server.status.get(self.path)
                if code:
                    self.send_error(code)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self._httpd.server_address[1],
                                          path)

    def start(self):
        """Serve without a ``with`` block (pair with :meth:`stop`)."""
        return self.__enter__()

    def stop(self):
        self.__exit__(None, None, None)
