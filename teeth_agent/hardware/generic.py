"""The generic Linux hardware manager: sysfs, procfs, DMI and a few tools.

It supports every Linux machine at level ``GENERIC``, so vendor managers
override only what their chassis does differently. Everything is read below
``[hardware] sysfs_root``, ``procfs_root`` and ``dev_root`` so tests and
vendor fixtures (:mod:`teeth_agent.hardware.testing`) point it at a faked
tree. A file or tool that is missing degrades the matching field to ``None``
(logged at debug level); it never fails the whole call.

udev is optional: when sysfs is the real ``/sys`` and the udev database has
properties (``ID_SERIAL_SHORT``, ``ID_WWN``, ``ID_PATH``...), they win over
the raw sysfs attributes; without udevd (the agent's ramdisk may run none)
the same fields come from sysfs alone.
"""

# Size: 821 lines, over the ~500 guideline: GenericHardwareManager is one
# manager class (566 lines): its dispatched methods are the interface of
# hardware/base.py, one by one.

import json
import logging
import os
import platform
import re
import threading

from teeth_agent.disk import blockdev
from teeth_agent.disk import esp
from teeth_agent.disk import partitions
from teeth_agent.disk import writer
from teeth_agent.hardware import base
from teeth_agent.hardware import efi
from teeth_agent.hardware import health
from teeth_agent.hardware import safety
from teeth_agent.hardware import sysfs
from teeth_agent.images import boot as boot_images
from teeth_agent.images import qcow2
from teeth_agent.images import uefi
from teeth_agent import processes

LOG = logging.getLogger(__name__)

SECTOR_BYTES = 512
GIB = 1024 ** 3

#: Devices smaller than this are never chosen as the OS install device
#: without hints: they are card readers, virtual media and the like.
MIN_INSTALL_DEVICE_BYTES = 4 * GIB

EFI_GLOBAL_GUID = efi.EFI_GLOBAL_GUID

# Kernel name prefixes of block devices that are never disks in their own
# right: RAM disks and compressed swap (ram, zram, brd's ram too), stacked
# devices, reported as holders of the disks they sit on (dm-, md, bcache,
# drbd: a DRBD device also replicates every write to its peer), devices
# whose blocks are on another machine (nbd, rbd: Ceph, etherd: ATA over
# Ethernet), devices with no blocks of their own (nullb: null_blk, ublkb:
# a user-space server, zd: a ZFS volume, its pool's disks are the disks),
# optical and floppy drives. Hidden disks (sysfs ``hidden``: the per-path
# nvmeXcYnZ of native NVMe multipath) have no device node and are left out
# too.
_NOT_DISK_PREFIXES = ("ram", "zram", "dm-", "md", "bcache", "drbd", "nbd",
                      "rbd", "etherd", "nullb", "ublkb", "zd", "sr", "fd")

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_PCI_ID = re.compile(r"^0x[0-9a-fA-F]+$")

HINT_TYPES = {
    "size_bytes": int, "size_gb": int, "model": str, "serial": str,
    "wwn": str, "vendor": str, "name": str, "by_path": str,
    "rotational": bool,
}


def _normalize_wwn(wwid):
    """``naa.``/``eui.`` identifiers as ``0x<hex>``; others unchanged."""
    if wwid is None:
        return None
    wwid = wwid.strip()
    for prefix in ("naa.", "eui."):
        if wwid.lower().startswith(prefix):
            return "0x" + wwid[len(prefix):].lower()
    return wwid or None


def _vpd_serial(path):
    # VPD page 0x80: 4-byte header (page code in byte 1, length in bytes
    # 2-3), then the unit serial number in ASCII.
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError:
        return None
    if len(data) < 4 or data[1] != 0x80:
        return None
    length = int.from_bytes(data[2:4], "big")
    serial = data[4:4 + length].decode("ascii", "replace").strip(" \x00")
    return serial or None


def validate_hints(hints):
    """Check root-device hints; raise :class:`base.HardwareManagerError`
    naming an unknown hint or a value of the wrong type."""
    unknown = sorted(set(hints) - set(HINT_TYPES))
    if unknown:
        raise base.HardwareManagerError(
            "unknown root device hint(s): %s (known: %s)"
            % (", ".join(unknown), ", ".join(sorted(HINT_TYPES))))
    for key, value in hints.items():
        expected = HINT_TYPES[key]
        # bool is an int subclass: a size of True is a mistake.
        if not isinstance(value, expected) or (
                expected is int and isinstance(value, bool)):
            raise base.HardwareManagerError(
                "root device hint %s must be %s, not %r"
                % (key, expected.__name__, value))


def device_matches_hints(device, hints):
    """Whether ``device`` (a ``BlockDevice``) satisfies every hint.

    ``name`` matches the kernel name or the path (``sda`` and
    ``/dev/sda`` are the same hint); ``by_path`` matches the full link or
    its last component; ``size_gb`` matches the size in whole GiB
    (rounded down); other hints compare for equality.
    """
    for key, wanted in hints.items():
        if key == "name":
            if wanted not in (device.get("name"), device.get("path")) and \
                    os.path.basename(wanted) != device.get("name"):
                return False
        elif key == "by_path":
            actual = device.get("by_path")
            if actual is None or wanted not in (
                    actual, os.path.basename(actual)):
                return False
        elif key == "size_gb":
            size = device.get("size_bytes")
            if size is None or size // GIB != wanted:
                return False
        else:
            actual = device.get(key)
            if isinstance(actual, str):
                actual = actual.strip()
            if isinstance(wanted, str):
                wanted = wanted.strip()
            if actual != wanted:
                return False
    return True


class GenericHardwareManager(base.HardwareManager):
    """Any Linux machine, from sysfs, procfs, DMI and standard tools."""

    #: The pyudev context :meth:`_udev_disks` makes on first use (one per
    #: manager) and the lock every use of one is made under.
    _udev_context = None
    _udev_lock = threading.Lock()

    def evaluate_hardware_support(self):
        return base.HardwareSupport.GENERIC

    # -- paths ----------------------------------------------------------------

    def _sys(self, *parts):
        return os.path.join(self.conf.hardware.sysfs_root, *parts)

    def _proc(self, *parts):
        return os.path.join(self.conf.hardware.procfs_root, *parts)

    def _dev(self, *parts):
        return os.path.join(self.conf.hardware.dev_root, *parts)

    def _uses_real_sysfs(self):
        return os.path.realpath(self.conf.hardware.sysfs_root) == "/sys"

    # -- DMI ------------------------------------------------------------------

    def _dmi(self, field):
        return sysfs.read_text(self._sys("class", "dmi", "id", field))

    def get_system_info(self):
        return {"vendor": self._dmi("sys_vendor"),
                "product": self._dmi("product_name"),
                "serial": self._dmi("product_serial"),
                "uuid": self._dmi("product_uuid"),
                "bios_version": self._dmi("bios_version"),
                "bios_date": self._dmi("bios_date")}

    # -- CPUs -----------------------------------------------------------------

    def _cpuinfo(self):
        text = sysfs.read_text(self._proc("cpuinfo")) or ""
        processors = []
        current = {}
        for line in text.splitlines():
            if not line.strip():
                if current:
                    processors.append(current)
                current = {}
                continue
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
        if current:
            processors.append(current)
        return processors

    def get_cpus(self):
        records = self._cpuinfo()
        logical = [r for r in records if "processor" in r
                   and r["processor"].isdigit()]
        first = logical[0] if logical else (records[0] if records else {})
        model = None
        for key in ("model name", "Processor", "cpu model", "cpu"):
            if first.get(key):
                model = first[key]
                break
        flags = (first.get("flags") or first.get("Features") or "").split()
        cpu_root = self._sys("devices", "system", "cpu")
        cpu_dirs = [d for d in sysfs.listdir(cpu_root)
                    if re.match(r"^cpu\d+$", d)]
        count = len(logical) or len(cpu_dirs) or None
        packages = set()
        cores = set()
        for cpu in cpu_dirs:
            topology = os.path.join(cpu_root, cpu, "topology")
            package = sysfs.read_text(os.path.join(topology,
                                                   "physical_package_id"))
            core = sysfs.read_text(os.path.join(topology, "core_id"))
            if package is not None:
                packages.add(package)
                if core is not None:
                    cores.add((package, core))
        if not packages:
            # No sysfs topology (some containers): cpuinfo has the same ids
            # on x86.
            for record in logical:
                if "physical id" in record:
                    packages.add(record["physical id"])
                    if "core id" in record:
                        cores.add((record["physical id"], record["core id"]))
        return {"count": count,
                "model": model,
                "arch": platform.machine() or None,
                "sockets": len(packages) or None,
                "cores": len(cores) or None,
                "threads": count,
                "flags": flags}

    # -- memory ---------------------------------------------------------------

    def _memory_block_bytes(self):
        root = self._sys("devices", "system", "memory")
        block_size = sysfs.read_int(os.path.join(root, "block_size_bytes"), 16)
        blocks = [d for d in sysfs.listdir(root)
                  if re.match(r"^memory\d+$", d)]
        if not block_size or not blocks:
            return None
        return block_size * len(blocks)

    def _meminfo_total(self):
        meminfo = sysfs.read_text(self._proc("meminfo")) or ""
        for line in meminfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "MemTotal":
                number, _, unit = value.strip().partition(" ")
                try:
                    return int(number) * (1024 if unit.strip() == "kB" else 1)
                except ValueError:
                    return None
        return None

    def _dimms(self):
        try:
            out, _ = processes.execute("dmidecode", "--type", "17")
        except processes.ToolNotFound:
            LOG.debug("dmidecode is not installed: DIMMs unknown")
            return None
        except processes.ProcessError as exc:
            LOG.debug("dmidecode failed, DIMMs unknown: %s", exc)
            return None
        return parse_dmidecode_memory(out)

    def get_memory(self):
        # Memory blocks count what is installed; MemTotal leaves out what
        # the kernel reserved at boot, so it is only the fallback.
        total = self._memory_block_bytes() or self._meminfo_total()
        return {"total_bytes": total, "dimms": self._dimms()}

    # -- block devices ------------------------------------------------------

    def _udev_disks(self):
        """``{kernel name: udev properties}`` from pyudev, or None when sysfs
        is faked or pyudev cannot enumerate."""
        if not self._uses_real_sysfs():
            return None
        try:
            import pyudev
            # One context per manager, used under a lock (libudev objects
            # are not thread-safe; the devices are dropped inside it too):
            # making one looks libudev up with ctypes.util.find_library,
            # which runs ``ldconfig -p``, a fork and exec at every safety
            # check of every write.
            with self._udev_lock:
                if self._udev_context is None:
                    self._udev_context = pyudev.Context()
                return {device.sys_name: dict(device.properties)
                        for device in self._udev_context.list_devices(
                            subsystem="block", DEVTYPE="disk")}
        except Exception as exc:
            LOG.debug("pyudev cannot enumerate block devices: %s", exc)
            return None

    def _disk_names(self, udev):
        block = self._sys("class", "block")
        names = set(sysfs.listdir(block))
        if udev is not None:
            names |= set(udev)
        disks = []
        for name in sorted(names):
            directory = os.path.join(block, name)
            if name.startswith(_NOT_DISK_PREFIXES):
                continue
            if sysfs.read_text(os.path.join(directory, "hidden")) == "1":
                continue
            if os.path.exists(os.path.join(directory, "partition")):
                continue
            if name.startswith("loop") and sysfs.read_text(
                    os.path.join(directory, "loop", "backing_file")) is None:
                continue  # a loop device with nothing attached
            if not sysfs.read_int(os.path.join(directory, "size")):
                continue  # no medium
            disks.append(name)
        return disks

    def _transport(self, name, directory):
        if name.startswith("loop"):
            return "loop"
        if name.startswith("nvme"):
            kind = sysfs.read_text(os.path.join(directory, "device",
                                                "transport"))
            return "nvme" if kind in (None, "pcie") else "nvme-%s" % kind
        if name.startswith("mmcblk"):
            return "mmc"
        device = os.path.join(directory, "device")
        if not os.path.exists(device):
            return None
        subsystem = os.path.basename(os.path.realpath(
            os.path.join(device, "subsystem")))
        if subsystem == "virtio" or name.startswith("vd"):
            return "virtio"
        # Only the part below sysfs says how the disk is attached.
        real = os.path.relpath(os.path.realpath(device), os.path.realpath(
            self.conf.hardware.sysfs_root))
        real = "/" + real
        if "/usb" in real:
            return "usb"
        if re.search(r"/ata\d+/", real):
            return "sata"
        if "/end_device-" in real or "/port-" in real:
            return "sas"
        if subsystem == "scsi":
            return "scsi"
        return subsystem or None

    def _by_path(self, name):
        links = self._dev("disk", "by-path")
        target = os.path.realpath(self._dev(name))
        for link in sysfs.listdir(links):
            full = os.path.join(links, link)
            if os.path.realpath(full) == target:
                return full
        return None

    def _sysfs_serial(self, directory):
        return (sysfs.read_text(os.path.join(directory, "device", "serial"))
                or sysfs.read_text(os.path.join(directory, "serial"))
                or _vpd_serial(os.path.join(directory, "device", "vpd_pg80")))

    def _block_device(self, name, udev_properties):
        directory = self._sys("class", "block", name)
        props = udev_properties or {}
        path = self._dev(name)
        device_dir = os.path.join(directory, "device")
        vendor = sysfs.read_text(os.path.join(device_dir, "vendor"))
        if vendor is not None and _PCI_ID.match(vendor):
            vendor = None  # a PCI vendor id, not a name
        wwid = (sysfs.read_text(os.path.join(directory, "wwid"))
                or sysfs.read_text(os.path.join(device_dir, "wwid")))
        by_path = None
        if props.get("ID_PATH"):
            by_path = "/dev/disk/by-path/%s" % props["ID_PATH"]
        else:
            by_path = self._by_path(name)
        sectors = sysfs.read_int(os.path.join(directory, "size"))
        partitions = [self._dev(entry) for entry in sysfs.listdir(directory)
                      if os.path.exists(os.path.join(directory, entry,
                                                     "partition"))]
        usage = safety.device_usage(name, self.conf)
        return {
            "path": path,
            "name": name,
            "size_bytes": None if sectors is None else sectors * SECTOR_BYTES,
            "model": sysfs.read_text(os.path.join(device_dir, "model"))
            or _clean(props.get("ID_MODEL")),
            "serial": _clean(props.get("ID_SERIAL_SHORT"))
            or self._sysfs_serial(directory)
            or _clean(props.get("ID_SERIAL")),
            "wwn": _normalize_wwn(props.get("ID_WWN_WITH_EXTENSION")
                                  or props.get("ID_WWN") or wwid),
            "vendor": _clean(props.get("ID_VENDOR")) or vendor,
            "rotational": sysfs.read_bool(os.path.join(
                directory, "queue", "rotational")),
            "logical_sector_size": sysfs.read_int(os.path.join(
                directory, "queue", "logical_block_size")),
            "physical_sector_size": sysfs.read_int(os.path.join(
                directory, "queue", "physical_block_size")),
            "removable": sysfs.read_bool(os.path.join(directory, "removable")),
            "read_only": sysfs.read_bool(os.path.join(directory, "ro")),
            "transport": self._transport(name, directory),
            "partitions": partitions,
            "holders": sysfs.listdir(os.path.join(directory, "holders")),
            "mounted": None if usage["mountpoints"] is None
            else bool(usage["mountpoints"]),
            "mountpoints": usage["mountpoints"],
            "is_agent_root": usage["is_agent_root"],
            "by_path": by_path,
        }

    def list_block_devices(self):
        udev = self._udev_disks()
        return [self._block_device(name, (udev or {}).get(name))
                for name in self._disk_names(udev)]

    # -- network --------------------------------------------------------------

    def _pci_address(self, device_link):
        real = os.path.realpath(device_link)
        while real and real != os.path.dirname(real):
            if _PCI_ADDRESS.match(os.path.basename(real)):
                return os.path.basename(real)
            real = os.path.dirname(real)
        return None

    def list_network_interfaces(self):
        root = self._sys("class", "net")
        interfaces = []
        for name in sysfs.listdir(root):
            directory = os.path.join(root, name)
            device = os.path.join(directory, "device")
            if name == "lo":
                continue
            if not os.path.exists(device) and \
                    not self.conf.hardware.include_virtual_nics:
                continue  # virtual: bridges, bonds, VLANs, tunnels
            carrier = sysfs.read_int(os.path.join(directory, "carrier"))
            if carrier is None:
                # carrier cannot be read while the interface is down.
                operstate = sysfs.read_text(os.path.join(directory,
                                                         "operstate"))
                link = None if operstate in (None, "unknown") else \
                    operstate == "up"
            else:
                link = carrier == 1
            speed = sysfs.read_int(os.path.join(directory, "speed"))
            driver = os.path.join(device, "driver")
            mac = sysfs.read_text(os.path.join(directory, "address"))
            interfaces.append({
                "name": name,
                "mac": mac.lower() if mac else None,
                "link": link,
                "speed_mbps": speed if speed and speed > 0 else None,
                "driver": os.path.basename(os.path.realpath(driver))
                if os.path.exists(driver) else None,
                "pci_address": self._pci_address(device),
            })
        return interfaces

    # -- firmware and BIOS ----------------------------------------------------

    def get_firmware_versions(self):
        bios = self._dmi("bios_version")
        return {"bios": bios} if bios else {}

    def _firmware_attribute_dirs(self):
        """``{setting name: attribute directory}`` from every driver under
        ``class/firmware-attributes``."""
        root = self._sys("class", "firmware-attributes")
        found = {}
        for driver in sysfs.listdir(root):
            attributes = os.path.join(root, driver, "attributes")
            for name in sysfs.listdir(attributes):
                directory = os.path.join(attributes, name)
                if os.path.exists(os.path.join(directory, "current_value")):
                    found.setdefault(name, directory)
        return found

    def get_bios_settings(self):
        attributes = self._firmware_attribute_dirs()
        if not attributes:
            raise base.IncompatibleHardwareMethodError(
                "no firmware-attributes in sysfs")
        return {name: sysfs.read_text(os.path.join(directory, "current_value"))
                for name, directory in sorted(attributes.items())}

    def apply_bios_settings(self, settings):
        attributes = self._firmware_attribute_dirs()
        if not attributes:
            raise base.IncompatibleHardwareMethodError(
                "no firmware-attributes in sysfs")
        unknown = sorted(set(settings) - set(attributes))
        if unknown:
            raise base.HardwareManagerError("unknown BIOS setting(s): %s"
                                            % ", ".join(unknown))
        applied = {}
        for name, value in sorted(settings.items()):
            current = os.path.join(attributes[name], "current_value")
            wanted = _setting_text(value)
            try:
                with open(current, "w", encoding="utf-8") as stream:
                    stream.write(wanted)
            except OSError as exc:
                raise base.HardwareManagerError(
                    "cannot set BIOS setting %s to %s: %s"
                    % (name, wanted, exc)) from exc
            now = sysfs.read_text(current)
            pending = sysfs.read_bool(os.path.join(
                os.path.dirname(attributes[name]), "pending_reboot"))
            if now != wanted and not pending:
                raise base.HardwareManagerError(
                    "BIOS setting %s reads back %r after writing %r"
                    % (name, now, wanted))
            LOG.info("BIOS setting %s set to %s", name, wanted)
            applied[name] = wanted
        return applied

    def _efi_variable(self, name):
        return efi.read_efi_bool(self.conf.hardware.sysfs_root, name)

    def get_secure_boot_state(self):
        if not os.path.isdir(self._sys("firmware", "efi")):
            return {"supported": False, "enabled": None, "setup_mode": None}
        return {"supported": True,
                "enabled": self._efi_variable("SecureBoot"),
                "setup_mode": self._efi_variable("SetupMode")}

    def get_boot_mode(self):
        """From ``firmware/efi``, the SecureBoot and SetupMode variables
        and ``kernel/security/lockdown`` below ``[hardware] sysfs_root``
        (:func:`teeth_agent.hardware.efi.boot_state`)."""
        return efi.boot_state(self.conf.hardware.sysfs_root)

    # -- UEFI boot entries ----------------------------------------------------

    def list_boot_entries(self):
        """``efibootmgr -v``, parsed
        (:func:`teeth_agent.hardware.efi.parse_efibootmgr`)."""
        return self._efi(efi.read_entries, self.conf.hardware.sysfs_root)

    def create_boot_entry(self, path, partition, loader, label):
        """``efibootmgr -c -d path -p partition -L label -l loader``.

        With ``[power] simulate`` (tests, the demo) the firmware's entries
        are never changed: this and the other changing calls log what
        they would do, and this returns None."""
        if self._simulated("create a boot entry %r for %s on partition %d "
                           "of %s", label, loader, partition, path):
            return None
        return self._efi(efi.create_entry, self.conf.hardware.sysfs_root,
                         path, partition, loader, label)

    def delete_boot_entry(self, entry):
        """``efibootmgr -b entry -B``."""
        if not self._simulated("delete boot entry %s", entry):
            self._efi(efi.delete_entry, entry)

    def set_boot_order(self, order):
        """``efibootmgr -o``."""
        if not self._simulated("set BootOrder to %s", ",".join(order)):
            self._efi(efi.set_boot_order, order)

    def set_boot_next(self, entry):
        """``efibootmgr -n``."""
        if not self._simulated("set BootNext to %s", entry):
            self._efi(efi.set_boot_next, entry)

    def _simulated(self, message, *args):
        # A test or demo host booted UEFI keeps its own boot entries.
        if not self.conf.power.simulate:
            return False
        LOG.warning("[power] simulate: would " + message, *args)
        return True

    @staticmethod
    def _efi(function, *args):
        try:
            return function(*args)
        except efi.EfiError as exc:
            raise base.HardwareManagerError(str(exc)) from exc

    # -- disks ----------------------------------------------------------------

    def get_erase_capabilities(self, device):
        from teeth_agent.hardware import erase
        return erase.get_capabilities(self, device)

    def erase_block_device(self, device, method, progress):
        from teeth_agent.hardware import erase
        return erase.erase_device(self, device, method, progress)

    def dismantle_stack(self, stack):
        """md, LVM, dm-crypt, multipath, dm and bcache through their tools
        (:func:`teeth_agent.hardware.teardown.dismantle`)."""
        from teeth_agent.hardware import teardown
        return teardown.dismantle(self, stack)

    def reset_nvme_namespaces(self, controller):
        """nvme-cli delete-ns, create-ns, attach-ns, ns-rescan
        (:func:`teeth_agent.hardware.erase.nvme.reset_namespaces`)."""
        from teeth_agent.hardware.erase import nvme
        return nvme.reset_namespaces(self, controller)

    def wipe_metadata(self, device):
        """``wipefs``, the first and last MiB zeroed, the kernel's
        partitions dropped
        (:func:`teeth_agent.disk.blockdev.wipe_signatures`)."""
        blockdev.wipe_signatures(
            device["path"],
            forget_partitions=bool(device.get("partitions", True)))

    # -- writing images and boot loaders --------------------------------------

    def write_image(self, path, source, hasher, progress, pin, size=None):
        """Streamed through the device's one ``O_EXCL`` descriptor, with
        ``[standbye]`` buffers, decompression memory limit and checksum
        thread pinning (:func:`teeth_agent.disk.writer.write_stream`)."""
        options = self.conf.standbye
        try:
            return writer.write_stream(
                source, path, hasher, progress, size,
                options.write_buffer_size, options.write_buffer_count,
                memory_limit=options.decompression_memory_limit,
                qcow2_buffer=options.qcow2_stream_buffer,
                pin_hash=options.pin_checksum_thread, **(pin or {}))
        except writer.NeedsStaging as staging:
            # The staged copy that follows needs the memory this attempt
            # held (its buffers, the qcow2 bytes it kept) back first.
            writer.release(staging)
            return {"format": staging.format, "needs_staging": True}

    def convert_qcow2_image(self, path, image_path):
        """``qemu-img convert`` under ``prlimit`` with ``[standbye]
        qemu_img_convert_cpu_limit`` (see
        :func:`teeth_agent.images.qcow2.convert`)."""
        qcow2.convert(image_path, path,
                      self.conf.standbye.qemu_img_convert_cpu_limit)

    def add_config_drive_partition(self, path, size, replaced):
        """``sgdisk`` (GPT) or ``sfdisk`` (MBR), see
        :mod:`teeth_agent.disk.partitions`."""
        for number in replaced:
            partitions.delete_partition(path, number)
        return partitions.add_partition_at_end(path, size)

    def write_config_drive(self, path, partition, data, pin):
        """One :class:`teeth_agent.disk.writer.DeviceWriter` bounded to
        the partition; the rest of it is zeroed so nothing of an older
        file system shows."""
        pin = pin or {}
        output = writer.DeviceWriter(
            path, start=partition["offset"],
            end=partition["offset"] + partition["size"],
            devnum=pin.get("devnum"), recheck=pin.get("recheck"))
        try:
            output.write(data)
            padding = partition["size"] - len(data)
            while padding > 0:
                chunk = min(padding, 4 * 1024 * 1024)
                output.write(bytes(chunk))
                padding -= chunk
            output.close()
        except BaseException:
            output.abort()
            raise

    def install_boot_loader(self, path, root, fs_type, boot):
        """The agent's own grub for BIOS boot (``i386-pc``), see
        :func:`teeth_agent.images.boot.install_grub`."""
        boot_images.install_grub(path, root, fs_type, "i386-pc", boot)
        return "grub"

    def install_uefi_boot_loader(self, path, root, fs_type, boot):
        """Debian's signed shim and grub, copied with mtools into the
        image's first ESP (one is created when the GPT table has room,
        :func:`teeth_agent.disk.esp.create_esp`) with a grub.cfg booting
        ``boot`` (:func:`teeth_agent.images.boot.grub_config`); see
        :func:`teeth_agent.images.uefi.install_signed_loader`."""
        def node_of(number):
            return partitions.partition_node(
                path, number, self.conf.hardware.sysfs_root,
                self.conf.hardware.dev_root)
        created = False
        try:
            table = partitions.read_table(path)
            found = uefi.find_esps(table) if table else []
            if found:
                number = found[0]["number"]
            else:
                number = esp.create_esp(path, node_of)
                created = True
            installed = uefi.install_signed_loader(
                node_of(number), boot_images.grub_config(boot))
        except (esp.NoRoomForEsp, uefi.EspError) as exc:
            raise base.HardwareManagerError(str(exc)) from exc
        return {"loader": installed["loader"], "partition": number,
                "esp_created": created, "removable": installed["removable"]}

    def get_os_install_device(self, hints):
        """Choose among the eligible devices (see
        :mod:`teeth_agent.hardware.safety`).

        With hints: the devices matching every hint. Without: the
        non-removable devices of at least 4 GiB. Among the candidates the
        smallest wins, ties broken by path, so the choice is the same on
        every boot.
        """
        hints = dict(hints or {})
        validate_hints(hints)
        devices = self.list_block_devices()
        eligible = [d for d in devices if safety.eligibility(d, self.conf)[0]]
        if hints:
            candidates = [d for d in eligible
                          if device_matches_hints(d, hints)]
            wanted = "matching root device hints %s" % json.dumps(
                hints, sort_keys=True)
        else:
            candidates = [d for d in eligible if not d["removable"]
                          and (d["size_bytes"] or 0)
                          >= MIN_INSTALL_DEVICE_BYTES]
            wanted = "non-removable of at least 4 GiB"
        if not candidates:
            raise base.HardwareManagerError(
                "no eligible block device %s (%d device(s), %d eligible)"
                % (wanted, len(devices), len(eligible)))
        return min(candidates, key=lambda d: (d["size_bytes"] or 0, d["path"]))

    # -- health (teeth_agent.hardware.health runs and reads the tools) -------

    def get_smart_report(self, device, self_test, progress):
        return health.smart_report(device["path"], self_test=self_test,
                                   progress=progress)

    def _available_memory(self):
        """``MemAvailable`` of /proc/meminfo, in bytes; a file that cannot
        be read or holds no such number is a HardwareManagerError (the
        check fails saying why, it never tests a guessed size)."""
        try:
            with open(self._proc("meminfo"), encoding="ascii",
                      errors="replace") as stream:
                lines = stream.read(1 << 20).splitlines()
        except OSError as exc:
            raise base.HardwareManagerError(
                "cannot read /proc/meminfo: %s" % (exc.strerror or exc))
        for line in lines:
            match = re.fullmatch(r"MemAvailable:\s*(\d+) kB\s*", line)
            if match:
                return int(match.group(1)) * 1024
        raise base.HardwareManagerError("/proc/meminfo has no MemAvailable")

    def run_memory_test(self, size_bytes, free_fraction, loops, progress):
        if size_bytes is None:
            size_bytes = int(self._available_memory() * free_fraction)
        return health.memory_test(size_bytes, loops=loops, progress=progress)

    def run_stress_test(self, seconds, memory_bytes, cpu_workers, progress):
        return health.stress(seconds, memory_bytes, cpu_workers=cpu_workers,
                             progress=progress, sys_root=self._sys())

    def run_disk_read_test(self, device, size_bytes, seconds, progress):
        return health.disk_read(device["path"], size_bytes, seconds=seconds,
                                progress=progress)


def _clean(value):
    if value is None:
        return None
    value = value.strip()
    return value or None


def _setting_text(value):
    if isinstance(value, bool):
        return "Enabled" if value else "Disabled"
    return str(value)


def _size_bytes(text):
    number, _, unit = text.partition(" ")
    multipliers = {"bytes": 1, "kB": 1024, "KB": 1024, "MB": 1024 ** 2,
                   "GB": 1024 ** 3, "TB": 1024 ** 4}
    try:
        return int(number) * multipliers[unit.strip()]
    except (ValueError, KeyError):
        return None


def parse_dmidecode_memory(text):
    """The installed DIMMs from ``dmidecode --type 17`` output, as
    ``[{"size_bytes", "locator", "type", "speed_mts"}]`` (empty slots left
    out)."""
    dimms = []
    for record in re.split(r"\n(?=Handle )", text):
        if "Memory Device" not in record:
            continue
        fields = {}
        for line in record.splitlines():
            key, sep, value = line.strip().partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        size = _size_bytes(fields.get("Size", ""))
        if size is None:
            continue  # "No Module Installed" or unreadable
        speed = re.match(r"^(\d+)\s*(MT/s|MHz)$", fields.get("Speed", ""))
        dimm_type = fields.get("Type")
        dimms.append({
            "size_bytes": size,
            "locator": fields.get("Locator") or None,
            "type": None if dimm_type in (None, "", "Unknown") else dimm_type,
            "speed_mts": int(speed.group(1)) if speed else None,
        })
    return dimms
