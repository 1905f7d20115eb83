"""The hardware-manager interface: the contract vendor plugins implement.

Every touch of the machine goes through a :class:`HardwareManager`. A manager
says how well it supports the machine it runs on
(:meth:`HardwareManager.evaluate_hardware_support`); the agent orders the
supporting managers by that level and, for each call, asks them in turn: the
first that implements the method answers. A manager that does not implement a
method, or cannot serve it for this particular argument, raises
:class:`IncompatibleHardwareMethodError` and the next manager is asked. Every
method below except ``evaluate_hardware_support`` declines by default, so a
vendor manager derives from :class:`HardwareManager`, implements only what
its chassis needs and leaves the rest to the generic Linux manager, which is
asked next.

This module is the one place the interface is documented. Methods may be
added in later versions, always declining by default, and existing methods
may gain optional keyword parameters (with a default); an implementation
may take any subset of those, so existing plugins keep working. A public
method of a manager that is not part of this interface is refused when the
manager is loaded (see :func:`teeth_agent.hardware.check_manager`); helpers
are private, with a leading underscore.

Shapes used below (every key is present; a value that cannot be read is
``None``):

``BlockDevice``
    ``{"path", "name", "size_bytes", "model", "serial", "wwn", "vendor",
    "rotational", "logical_sector_size", "physical_sector_size",
    "removable", "read_only", "transport", "partitions" (list of paths),
    "holders" (list of names), "mounted" (bool), "mountpoints" (list),
    "is_agent_root" (bool), "by_path" (str or None)}``

``NetworkInterface``
    ``{"name", "mac", "link" (bool), "speed_mbps", "driver", "pci_address"}``

``Pin``
    ``{"devnum" ("major:minor" of the device the safety check examined),
    "recheck" (a callable)}``, or ``None`` (only unit tests write without
    one). A method that opens a device it is given a pin for opens it
    with ``O_EXCL``, compares the device number of what it opened with
    ``devnum`` and calls ``recheck()`` while it holds that descriptor, so
    the check holds for the whole write:
    :class:`teeth_agent.disk.writer.DeviceWriter` does all three
    (``DeviceWriter(path, devnum=pin["devnum"], recheck=pin["recheck"])``).

Safety is not the managers' part. The methods under "writing images and
boot loaders" and :meth:`HardwareManager.wipe_metadata` are called only
for a device that :func:`teeth_agent.hardware.safety.ensure_writable` has
just accepted, and the command group checks again itself, around the
dispatch where an override cannot skip it: after ``write_image``,
``convert_qcow2_image`` (while it holds the device ``O_EXCL``),
``add_config_drive_partition`` (before anything is written into the new
partition) and ``write_config_drive``. The read-back after an erase is
the agent's own too (:func:`teeth_agent.hardware.erase.verify_erased`),
so a vendor erase and wipe are verified like the generic ones
(``docs/hardware-managers.md`` has the table). An implementation writes
only to the device it is given.
"""

import enum


class HardwareSupport(enum.IntEnum):
    """How well a manager supports this machine; higher wins dispatch."""

    NONE = 0
    GENERIC = 1
    MAINLINE = 2
    SERVICE_PROVIDER = 3


class IncompatibleHardwareMethodError(Exception):
    """Raised by a manager to decline a call, letting the next one try."""


class HardwareManagerError(Exception):
    """A manager failed while serving a call (not a decline)."""


class HardwareManager:
    """Base class of every hardware manager.

    The constructor receives the agent's oslo.config object (``self.conf``).
    Keep it cheap: work that needs the other managers to be evaluated first
    belongs in :meth:`initialize`.
    """

    #: Set by the loader from the entry-point name.
    name = None

    def __init__(self, conf):
        self.conf = conf

    # -- selection ------------------------------------------------------------

    def evaluate_hardware_support(self):
        """Return a :class:`HardwareSupport` level for this machine.

        ``NONE`` drops the manager. A vendor manager usually reads the DMI
        vendor/product and returns ``SERVICE_PROVIDER`` for its models.
        """
        raise NotImplementedError(
            "%s must implement evaluate_hardware_support()"
            % type(self).__name__)

    def initialize(self):
        """Called once, after every manager was evaluated and only for the
        managers that support the machine. May raise to refuse to load."""

    # -- what the machine is --------------------------------------------------

    def get_system_info(self):
        """Return ``{"vendor", "product", "serial", "uuid", "bios_version",
        "bios_date"}`` from DMI (values may be None)."""
        raise IncompatibleHardwareMethodError()

    def get_cpus(self):
        """Return ``{"count" (logical CPUs), "model", "arch", "sockets",
        "cores", "threads", "flags" (list)}``."""
        raise IncompatibleHardwareMethodError()

    def get_memory(self):
        """Return ``{"total_bytes", "dimms" (list of {"size_bytes",
        "locator", "type", "speed_mts"}, or None when unknown)}``."""
        raise IncompatibleHardwareMethodError()

    def list_block_devices(self):
        """Return every block device as a list of ``BlockDevice`` dicts.

        Return them all, including ones the agent must not touch: the
        agent applies ``[hardware] device_include/device_exclude`` and its
        safety rules itself, after this call.
        """
        raise IncompatibleHardwareMethodError()

    def list_network_interfaces(self):
        """Return physical network interfaces as ``NetworkInterface``
        dicts (loopback and virtual interfaces left out)."""
        raise IncompatibleHardwareMethodError()

    # -- firmware and BIOS ----------------------------------------------------

    def get_firmware_versions(self):
        """Return ``{component: version}`` for the components this manager
        knows. Dispatched to every manager and merged (higher levels win)."""
        raise IncompatibleHardwareMethodError()

    def update_firmware(self, component, image_path, version):
        """Flash ``image_path`` (already downloaded and checksum-verified)
        onto ``component``, which should then report ``version``.

        Return a dict of details for the task result. Raise
        :class:`IncompatibleHardwareMethodError` for a component this manager
        cannot update; any other exception fails the update.
        """
        raise IncompatibleHardwareMethodError()

    def get_bios_settings(self):
        """Return ``{name: value}`` of the current BIOS settings."""
        raise IncompatibleHardwareMethodError()

    def apply_bios_settings(self, settings):
        """Apply ``{name: value}`` (only the differences are passed).
        Return ``{name: value}`` as applied (pending values included)."""
        raise IncompatibleHardwareMethodError()

    def get_secure_boot_state(self):
        """Return ``{"supported": bool, "enabled": bool or None,
        "setup_mode": bool or None}``."""
        raise IncompatibleHardwareMethodError()

    def get_boot_mode(self):
        """Return ``{"boot_mode" ("uefi" or "bios": how the ramdisk was
        booted), "secure_boot", "setup_mode" (bool or None), "lockdown"
        ("none", "integrity", "confidentiality" or None)}``."""
        raise IncompatibleHardwareMethodError()

    # -- UEFI boot entries ----------------------------------------------------
    # Called only when the ramdisk was booted in UEFI mode. Which entries to
    # remove and where a new one goes in BootOrder is the command group's
    # policy (teeth_agent.hardware.efi.stale_entries); these only act.

    def list_boot_entries(self):
        """Return the firmware's boot configuration: ``{"boot_current",
        "boot_next", "timeout", "boot_order" (list of 4-digit hex),
        "entries": [{"entry", "label", "active", "device_path", "kind"
        ("disk", "network", "firmware" or "other"), "partition",
        "partition_uuid", "mbr_signature", "loader"}]}`` (the shape of
        :func:`teeth_agent.hardware.efi.parse_efibootmgr`)."""
        raise IncompatibleHardwareMethodError()

    def create_boot_entry(self, path, partition, loader, label):
        """Create a boot entry booting ``loader`` (a UEFI path such as
        ``\\EFI\\debian\\shimx64.efi``) from partition number
        ``partition`` of the disk ``path``, shown as ``label``. Return the
        new entry's number (4-digit upper-case hex)."""
        raise IncompatibleHardwareMethodError()

    def delete_boot_entry(self, entry):
        """Delete boot entry ``entry`` (4-digit hex). Return nothing."""
        raise IncompatibleHardwareMethodError()

    def set_boot_order(self, order):
        """Set BootOrder to ``order`` (list of 4-digit hex). Return
        nothing."""
        raise IncompatibleHardwareMethodError()

    def set_boot_next(self, entry):
        """Boot ``entry`` (4-digit hex) once at the next reset (BootNext).
        Return nothing."""
        raise IncompatibleHardwareMethodError()

    # -- disks ----------------------------------------------------------------

    def get_erase_capabilities(self, device):
        """Return the erase methods ``device`` (a ``BlockDevice``) supports,
        strongest first, as a list of method names such as
        ``"nvme_sanitize_crypto"`` or ``"overwrite"``."""
        raise IncompatibleHardwareMethodError()

    def erase_block_device(self, device, method, progress):
        """Erase ``device`` (a ``BlockDevice``) with ``method``.

        ``progress(done, total)`` may be called from this thread at any rate.
        Return ``{"method", "nist_category" ("Clear" or "Purge"), "bytes"}``
        and, for the erase evidence, ``"tool"`` and ``"tool_version"``
        (what erased; left out, the evidence says ``null``).
        Raise :class:`IncompatibleHardwareMethodError` when this manager
        cannot apply ``method`` to ``device``.
        """
        raise IncompatibleHardwareMethodError()

    def dismantle_stack(self, stack):
        """Take apart what is stacked on disks that are about to be erased.

        ``stack`` is ``{"disks": [paths], "layers": [{"name" (kernel
        name), "kind" ("md", "lvm", "crypt", "multipath", "dm", "bcache"
        or "other"), "dm_name", "lower" (kernel names)}] (top first, the
        order to stop them in; the volumes of one LVM volume group, hidden
        ones included, are next to each other), "members": [{"path",
        "name", "kind"}] (the disks and partitions the bottom layers sit
        on, whose labels to wipe)}``. The agent has already refused a
        stack that is in use or reaches beyond the disks being erased
        (every volume of a volume group counts as part of the stack), and
        re-reads sysfs afterwards. Return the steps, each ``{"layer",
        "kind", "command", "result" ("done" or "failed"), "error"?}``;
        raise :class:`HardwareManagerError` when a step fails.
        """
        raise IncompatibleHardwareMethodError()

    def reset_nvme_namespaces(self, controller):
        """Delete every namespace of an NVMe controller and create one that
        covers the drive (``[decom] nvme_reset_namespaces``).

        ``controller`` is ``{"path" ("/dev/nvme0"), "name", "namespaces"
        (the namespace device paths, all being erased)}``. Return
        ``{"steps": [{"command", "result", "error"?}], "namespace" (kernel
        name of the new namespace), "size_bytes"}``; raise
        :class:`HardwareManagerError` when it cannot be done or a step
        fails. The agent erases the new namespace afterwards.
        """
        raise IncompatibleHardwareMethodError()

    def get_os_install_device(self, hints):
        """Choose the device the OS image is written to.

        ``hints`` is a dict of root-device hints (``size_bytes``, ``model``,
        ``serial``, ``wwn``, ``name``, ``rotational``, ``by_path``), possibly
        empty. Return a ``BlockDevice``; raise
        :class:`HardwareManagerError` when nothing eligible matches.
        """
        raise IncompatibleHardwareMethodError()

    def wipe_metadata(self, device):
        """Make ``device`` unrecognisable: remove its partition tables
        (both GPT copies and the MBR) and file-system signatures.

        ``device`` is a ``BlockDevice`` or a dict with at least ``path``;
        the kernel's partitions of it are forgotten too unless its
        ``partitions`` is an empty list. Every step is tried; raise when one
        fails (the agent logs and goes on where it is cleaning up after
        another error, and fails the erase otherwise). Used after an erase,
        after a failed image write and for a write an earlier agent did not
        finish.
        """
        raise IncompatibleHardwareMethodError()

    # -- writing images and boot loaders --------------------------------------

    def write_image(self, path, source, hasher, progress, pin, size=None):
        """Write the image read from ``source`` onto the device ``path``.

        ``source`` has ``read(n)`` (a file or an HTTP download); the image
        may be raw or gzip/xz/zstd compressed, told from its own first
        bytes. ``hasher`` (:class:`teeth_agent.fetch.http_source.Hasher`) must
        see
        every byte read, in order, and be verified (``hasher.verify()``)
        before this returns; ``progress(done, total)`` counts bytes read;
        ``size`` is the image's size as served, when known; ``pin`` is a
        ``Pin``. Return ``{"format", "bytes_read", "bytes_written"}``.

        A qcow2 image is written as it arrives unless its layout cannot
        be (more than ``[standbye] qcow2_stream_buffer`` would have to be
        kept): then undo what was written and return ``{"format": name,
        "needs_staging": True}``; the agent stages the verified file and
        calls :meth:`convert_qcow2_image`. On any failure after writing began,
        zero what was written and wipe the signatures before raising; a
        raised exception keeps its type (the agent reports its message,
        with ``__notes__``, as the task's reason).
        """
        raise IncompatibleHardwareMethodError()

    def convert_qcow2_image(self, path, image_path):
        """Write the qcow2 file ``image_path`` (checksum-verified and
        inspected: no backing file, virtual size fits) onto ``path``
        as raw.

        The agent holds ``path`` open with ``O_EXCL`` meanwhile (so it
        cannot be mounted), checks it again afterwards and wipes it when
        this raises: open it without ``O_EXCL``. Return nothing.
        """
        raise IncompatibleHardwareMethodError()

    def add_config_drive_partition(self, path, size, replaced):
        """Delete the partitions numbered in ``replaced`` (older config
        drives, possibly none), then add a partition of at least ``size``
        bytes named ``config-2`` at the end of the disk ``path``, and make
        the kernel see it. Return ``{"number", "offset", "size"}`` (byte
        offset and length of the new partition)."""
        raise IncompatibleHardwareMethodError()

    def write_config_drive(self, path, partition, data, pin):
        """Write ``data`` (a config drive file system image, bytes) at the
        start of ``partition`` (as returned by
        :meth:`add_config_drive_partition`) of the disk ``path``, zero the
        rest of the partition and sync; ``pin`` is a ``Pin``. Never write
        outside the partition. Return nothing."""
        raise IncompatibleHardwareMethodError()

    def install_boot_loader(self, path, root, fs_type, boot):
        """Make the disk ``path`` boot the image's kernel.

        Called only when the image brings no boot loader. ``root`` is the
        node of the partition holding the kernel (file system ``fs_type``),
        ``boot`` what was found there: ``{"kernel", "initrd", "cmdline",
        "fs_uuid", ...}`` (paths inside that file system). Return the name
        of the boot loader installed (``"grub"``).
        """
        raise IncompatibleHardwareMethodError()

    def install_uefi_boot_loader(self, path, root, fs_type, boot):
        """Make the disk ``path`` boot the image's kernel in UEFI mode.

        Called only when the image's EFI system partition holds no loader
        (or it has none). ``root``, ``fs_type`` and ``boot`` are as for
        :meth:`install_boot_loader`. Install signed loaders that never
        come from the image into its ESP, creating one when the table has
        room, and a grub.cfg booting ``boot``. Return ``{"loader" (the
        UEFI path a boot entry should point at), "partition" (the ESP's
        number), "esp_created" (bool), "removable" (bool: the removable
        path was written too)}``, optionally with ``"name"`` (what was
        installed, reported as ``boot_loader.loader``; default
        ``"shim+grub"``). Raise
        :class:`HardwareManagerError` when it cannot (no room for an
        ESP, an MBR table, ...).
        """
        raise IncompatibleHardwareMethodError()

    # -- quality control ------------------------------------------------------

    def run_qc_checks(self, spec, inventory):
        """Return a list of ``{"name", "expected", "actual", "pass"}`` checks
        for the keys of ``spec`` this manager understands (vendor keys).
        Dispatched to every manager and concatenated."""
        raise IncompatibleHardwareMethodError()

    # -- health (decom.qc's smart, memory_test, stress, disk_read) ---------
    #
    # Each returns *readings* (the shapes of teeth_agent.hardware.health);
    # decom.qc compares them with the spec's thresholds, so a manager that
    # reads the same facts another way returns the same keys. ``progress``
    # takes a fraction (0..1) of this run.

    def get_smart_report(self, device, self_test, progress):
        """Return ``device``'s SMART readings: ``{"available", "reason",
        "protocol", "model", "serial", "health_passed",
        "reallocated_sectors", "pending_sectors", "uncorrectable_sectors",
        "media_errors", "percentage_used", "temperature_c",
        "power_on_hours", "tool", "self_test"}`` where ``self_test`` (when
        asked, else None) is ``{"supported", "passed", "status",
        "seconds"}``. ``device`` is a ``BlockDevice``."""
        raise IncompatibleHardwareMethodError()

    def run_memory_test(self, size_bytes, free_fraction, loops, progress):
        """Test ``size_bytes`` of memory, or when that is None the
        ``free_fraction`` (0..1) of the memory available now, ``loops``
        times; return
        ``{"size_bytes", "loops", "tests" ({name: "ok" | "failed"}),
        "failures" (lines), "locked", "exit_status", "seconds", "tool"}``.
        """
        raise IncompatibleHardwareMethodError()

    def run_stress_test(self, seconds, memory_bytes, cpu_workers, progress):
        """Load every CPU (``cpu_workers`` 0: one per CPU) and
        ``memory_bytes`` of memory for ``seconds``; return ``{"stressors"
        ([{"stressor", "bogo_ops", "seconds"}]), "exit_status", "seconds",
        "failures", "max_temperature_c" (None when the platform exposes
        no temperature), "throttle_events" (None when not exposed),
        "thermal_zones", "tool"}``."""
        raise IncompatibleHardwareMethodError()

    def run_disk_read_test(self, device, size_bytes, seconds, progress):
        """Read ``size_bytes`` of ``device`` (a ``BlockDevice``)
        sequentially, for at most ``seconds`` when given, without writing;
        return ``{"bytes", "seconds", "mbps", "errors", "exit_status",
        "tool"}``."""
        raise IncompatibleHardwareMethodError()
