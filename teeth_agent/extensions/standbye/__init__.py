"""The ``standbye`` command group: cache_images, prepare_image, run_image.

A chassis on standby holds tenant images in its cache; ``prepare_image``
writes one to the install device, ``run_image`` adds the config drive,
makes sure the disk can boot, and kexecs into the image (or reboots) once
the server knows the outcome. Parameters, formats and rules are described
in ``docs/standbye.md``; the pieces live in :mod:`teeth_agent.images` and
:mod:`teeth_agent.fetch.download`.

The extension decides and checks; the hardware managers write
(``write_image``, ``convert_qcow2_image``, ``add_config_drive_partition``,
``write_config_drive``, ``install_boot_loader``, ``wipe_metadata``). The
safety checks stay here, around each of those calls, so that a vendor
manager overriding one cannot skip them: the device is accepted by
:func:`safety.ensure_writable` before it is written, pinned to the device
number that check saw, and checked again after each write and after the
partition table is edited (see :meth:`StandbyeExtension._pin`).
"""

# Size: 911 lines, over the ~500 guideline: StandbyeExtension is one command
# group (811 lines) whose commands share one image cache and one write path;
# the image and disk work itself lives in teeth_agent.images and
# teeth_agent.disk.

import contextlib
import functools
import json
import logging
import os
import shutil
import time

from teeth_agent.disk import blockdev
from teeth_agent.disk import esp
from teeth_agent.disk import partitions
from teeth_agent.disk import writer
from teeth_agent.extensions import base
from teeth_agent.extensions.standbye import results as result_schemas
from teeth_agent.extensions.standbye import uefi_boot
from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.fetch import proxy
from teeth_agent import hardware
from teeth_agent.hardware import boot_entries
from teeth_agent.hardware import efi
from teeth_agent.hardware import inventory
from teeth_agent.hardware import power as power_mod
from teeth_agent.hardware import safety
from teeth_agent.images import boot
from teeth_agent.images import cache as cache_mod
from teeth_agent.images import configdrive
from teeth_agent.images import formats
from teeth_agent.images import qcow2
from teeth_agent.images import uefi
from teeth_agent import params
from teeth_agent import processes
from teeth_agent import protocol
from teeth_agent import tasks

LOG = logging.getLogger(__name__)

_MAX_TEXT = 128 * 1024 * 1024


def _image_param(required_source):
    return params.Object(fields={
        "id": params.UUID(required=True),
        "urls": params.List(params.URL(max_length=8192),
                            min_items=1 if required_source else 0,
                            max_items=64, required=required_source),
        "hashes": params.Map(params.String(max_length=256),
                             required=required_source),
        "size": params.Integer(minimum=1, nullable=True),
    })


CONFIG_DRIVE_FIELDS = {
    "meta_data": params.Object(extra=True, required=True),
    "user_data": params.String(max_length=_MAX_TEXT),
    "network_data": params.Object(extra=True),
    "vendor_data": params.Object(extra=True),
    "files": params.Map(params.String(max_length=_MAX_TEXT),
                        key=params.String(max_length=1024, min_length=1)),
}

# Exceptions that end a standbye task with their message as the reason.
_EXPECTED_ERRORS = (
    errors.DownloadError, writer.ImageTooLarge, writer.CorruptImage,
    formats.UnsupportedFormat, qcow2.UnsafeImage, processes.ProcessError,
    partitions.PartitionError, configdrive.InvalidConfigDrive,
    boot.UnsafePath, safety.DeviceNotEligible, hardware.HardwareManagerError,
    uefi.EspError, OSError)


def _sync_directory(path):
    """Make a rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StandbyeExtension(base.Extension):
    """Caches, writes and boots tenant images."""

    def __init__(self, context):
        super().__init__(context)
        options = self.conf.standbye
        self.cache = cache_mod.ImageCache(options.image_cache_dir,
                                          options.cache_reserve,
                                          options.allow_md5)
        self.work_dir = options.work_dir
        self._prepared = self._load_prepared()

    def start(self):
        """Wipe the device a killed agent was writing, then clean the
        cache; the agent calls it once, before it serves commands."""
        self._recover_interrupted_write()
        # What a crash left in the cache must not count as cached, nor
        # take space, until the next cache_images.
        self.cache.cleanup()

    # -- helpers --------------------------------------------------------------

    def _fetch_options(self):
        options = self.conf.standbye
        return {"retries": options.download_retries,
                "backoff": options.download_backoff,
                "timeout": options.download_timeout,
                "buffer_size": options.write_buffer_size,
                "buffer_count": options.write_buffer_count,
                "pin_hash": options.pin_checksum_thread,
                "redirects": http_source.RedirectPolicy(
                    options.allowed_redirect_networks,
                    proxies=proxy.Proxies.configured(
                        options.proxy, options.no_proxy)),
                "attempt_timeout": options.download_attempt_timeout,
                "min_rate": options.download_min_rate}

    def _pin(self, path, devnum):
        """What pins a write to the device the safety check examined:
        ``devnum`` and a re-check, the ``Pin`` of
        :mod:`teeth_agent.hardware.base`. The extension runs the re-check
        itself after every manager call that writes ``path`` and after
        partition-table edits; a manager runs it once it holds its
        ``O_EXCL`` descriptor. The ``_write_*`` helpers take it as ``pin``;
        only unit tests call them without one."""
        def recheck():
            device = safety.ensure_writable(path, self.conf, self.hardware)
            if device.get("devnum") != devnum:
                raise writer.DeviceChanged(
                    path, "it was device %s when it was checked and is %s "
                    "now" % (devnum, device.get("devnum")))
            node = blockdev.path_devnum(path)
            if devnum is not None and node != devnum:
                raise writer.DeviceChanged(
                    path, "the node names device %s, not the %s that was "
                    "checked" % (node, devnum))
        return {"devnum": devnum, "recheck": recheck}

    def _wipe_after_failure(self, path):
        """Wipe the signatures of ``path`` (``wipe_metadata``) while
        another failure is being handled: an error here is logged, not
        raised, so the first one is what is reported."""
        try:
            self.hardware.call("wipe_metadata", {"path": path})
        except Exception as exc:
            LOG.error("wiping the signatures of %s failed: %s", path, exc)

    def _write_image(self, path, source, hasher, progress, size, pin):
        """``write_image`` through the managers; an image that must be
        staged (a qcow2 layout beyond ``qcow2_stream_buffer``) raises
        :class:`writer.NeedsStaging`, with what was written undone."""
        written = self.hardware.call("write_image", path, source, hasher,
                                     progress, pin, size=size)
        if not isinstance(written, dict) or "format" not in written:
            raise hardware.HardwareManagerError(
                "write_image returned %r, not what was written" % (written,))
        if written.get("needs_staging"):
            raise writer.NeedsStaging(written["format"])
        return written

    def _check_hashes(self, hashes, path):
        try:
            http_source.select_hash(hashes, self.conf.standbye.allow_md5)
        except ValueError as exc:
            raise params.invalid(path, str(exc)) from None

    def _prepared_path(self):
        return os.path.join(self.work_dir, "prepared.json")

    def _load_prepared(self):
        try:
            with open(self._prepared_path()) as stream:
                record = json.load(stream)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _set_prepared(self, record):
        self._prepared = record
        path = self._prepared_path()
        try:
            if record is None:
                if os.path.exists(path):
                    os.unlink(path)
                return
            os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
            with open(path + ".tmp", "w") as stream:
                json.dump(record, stream)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            LOG.warning("cannot record the prepared image in %s: %s", path,
                        exc)

    # -- writes the agent may not live to finish ------------------------------

    def _writing_path(self):
        return os.path.join(self.work_dir, "write-in-progress.json")

    @contextlib.contextmanager
    def _writing(self, device, command, image_id):
        """Record that ``device`` is being written while the block runs.

        The record (``work_dir/write-in-progress.json``, written
        atomically and synced) exists from before the first write until
        the block ends, however it ends: an exception here means the
        failure was seen and handled (a failed image write wipes the
        device itself). Only an agent killed mid-write leaves it, and
        :meth:`_recover_interrupted_write` acts on it at the next start.
        Raises ``OSError`` when the record cannot be written: nothing is
        written to a device without it.
        """
        path = self._writing_path()
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        partial = path + ".partial"
        with open(partial, "w") as stream:
            json.dump({"device": device, "command": command,
                       "image_id": image_id, "started_at": time.time()},
                      stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
        _sync_directory(self.work_dir)
        try:
            yield
        finally:
            try:
                os.unlink(path)
                _sync_directory(self.work_dir)
            except OSError as exc:
                LOG.error("cannot remove %s: %s; the next start of the "
                          "agent will wipe %s", path, exc, device)

    def _recover_interrupted_write(self):
        """Wipe the device an earlier agent was killed while writing.

        A half-written image may still boot, or boot into something the
        tenant never asked for; its signatures are wiped so it cannot.
        A device that is not eligible any more (mounted, excluded, gone)
        is left alone, with an error in the log. Either way the record
        and any prepared image on that device are forgotten.
        """
        path = self._writing_path()
        try:
            with open(path) as stream:
                record = json.load(stream)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            LOG.error("cannot read %s (%s); a device may hold a half-written "
                      "image", path, exc)
            record = None
        device = record.get("device") if isinstance(record, dict) else None
        if isinstance(device, str) and device:
            LOG.error("the agent stopped while %s was writing image %s to %s;"
                      " wiping it so the partial image cannot boot",
                      record.get("command"), record.get("image_id"), device)
            try:
                safety.ensure_writable(device, self.conf, self.hardware)
            except (safety.DeviceNotEligible, hardware.HardwareManagerError,
                    OSError) as exc:
                LOG.error("NOT wiping %s, which may hold a partial image: %s",
                          device, exc)
            else:
                self._wipe_after_failure(device)
                LOG.error("wiped %s after the interrupted %s", device,
                          record.get("command"))
            if self._prepared is not None and \
                    self._prepared.get("device") == device:
                self._set_prepared(None)
        try:
            os.unlink(path)
        except OSError as exc:
            LOG.error("cannot remove %s: %s", path, exc)

    # -- cache_images ---------------------------------------------------------

    def validate_cache_images(self, task_id, images):
        seen = set()
        for index, image in enumerate(images):
            self._check_hashes(image["hashes"], "images[%d].hashes" % index)
            image_id = cache_mod.normalise_id(image["id"])
            if image_id in seen:
                raise params.invalid("images[%d].id" % index,
                                     "is listed twice")
            seen.add(image_id)
        return {"task_id": task_id, "images": images}

    # Exclusive: it competes with prepare_image for the disk and the cache
    # directory, and two at once would race over the same space budget.
    @base.task_command(exclusive=True, params={
        "images": params.List(_image_param(True), required=True,
                              max_items=256),
    }, validator=validate_cache_images, result=result_schemas.CACHE_IMAGES)
    def cache_images(self, task, images):
        """Cache as many of ``images`` as fit, in priority order.

        The result lists every image with ``status`` cached,
        already_cached, skipped (with the reason) or failed; any failed
        image ends the task in error with that list in the details.
        """
        self.cache.prepare()
        keep = {cache_mod.normalise_id(image["id"]) for image in images}
        results = []
        for index, image in enumerate(images):
            def progress(done, total, index=index):
                fraction = min(done / total, 1.0) if total else 0.0
                task.progress(percent=100.0 * (index + fraction)
                              / len(images))
            result = self.cache.add(image, progress=progress, keep=keep,
                                    **self._fetch_options())
            LOG.info("image %s: %s %s", result["id"], result["status"],
                     result.get("reason", ""))
            results.append(result)
            task.progress(percent=100.0 * (index + 1) / len(images))
        failed = [r for r in results if r["status"] == cache_mod.FAILED]
        if failed:
            raise tasks.TaskFailed(
                "could not cache %d image(s): %s" % (len(failed), "; ".join(
                    "%s: %s" % (r["id"], r["reason"]) for r in failed)),
                {"images": results})
        return {"images": results}

    # -- prepare_image --------------------------------------------------------

    def validate_prepare_image(self, task_id, image, root_device_hints):
        if isinstance(image, str):
            image = {"id": image}
        image = _image_param(False).validate(image, "image")
        image["id"] = cache_mod.normalise_id(image["id"])
        if image.get("hashes"):
            self._check_hashes(image["hashes"], "image.hashes")
        if not image.get("urls"):
            if self.cache.lookup(image["id"], image.get("hashes")) is None:
                raise params.invalid(
                    "image", "image %s is not cached (with these "
                    "checksums); give its urls and hashes" % image["id"])
        elif not image.get("hashes"):
            raise params.invalid("image.hashes", "is required with urls")
        return {"task_id": task_id, "image": image,
                "root_device_hints": root_device_hints}

    @base.task_command(exclusive=True, params={
        "image": params.Any(required=True),
        "root_device_hints": params.Map(params.Any()),
    }, validator=validate_prepare_image, result=result_schemas.PREPARE_IMAGE)
    def prepare_image(self, task, image, root_device_hints):
        """Write ``image`` (from the cache, else its URLs) to the install
        device; the result names the device and what was written.
        """
        try:
            device = inventory.choose_install_device(
                self.hardware, self.conf, root_device_hints or {})
            path = device["path"]
            self._set_prepared(None)
            pin = self._pin(path, safety.ensure_writable(
                path, self.conf, self.hardware).get("devnum"))
            record = self.cache.lookup(image["id"], image.get("hashes"))
            with self._writing(path, "prepare_image", image["id"]):
                if record is not None:
                    with self.cache.using(record["id"]):
                        written = self._write_cached(task, record, path, pin)
                else:
                    written = self._write_downloaded(task, image, path, pin)
                partitions.tell_kernel(path)
                pin["recheck"]()
        except _EXPECTED_ERRORS as exc:
            raise tasks.TaskFailed("prepare_image failed: %s"
                                   % writer.describe_failure(exc)) from exc
        result = {"image_id": image["id"], "device": path, **written}
        self._set_prepared(result)
        LOG.info("image %s written to %s (%s)", image["id"], path,
                 written["format"])
        return result

    def _progress(self, task):
        def progress(done, total):
            if total:
                task.progress(done=done, total=total)
        return progress

    def _write_cached(self, task, record, path, pin=None):
        options = self._fetch_options()
        try:
            with open(record["path"], "rb") as stream:
                written = self._write_image(
                    path, stream,
                    http_source.Hasher(
                        record["algorithm"], record["hexdigest"]),
                    self._progress(task), record["size"], pin)
        except writer.NeedsStaging:
            # Re-verify: the bytes qemu-img reads must be the ones whose
            # checksum the server gave, whatever happened on this disk.
            hasher = http_source.Hasher(record["algorithm"],
                                        record["hexdigest"])
            with open(record["path"], "rb") as stream:
                download.stream(stream, lambda chunk: None, hasher,
                                buffer_size=options["buffer_size"],
                                buffer_count=options["buffer_count"],
                                pin_hash=options["pin_hash"])
            hasher.verify()
            written = self._write_staged(task, record["path"], path,
                                         record["algorithm"],
                                         record["hexdigest"], pin)
        return {"source": "cache", **written}

    def _write_downloaded(self, task, image, path, pin=None):
        """Stream ``image`` from its URLs to ``path``; a qcow2 image that
        cannot be written as it streams is downloaded again into
        ``work_dir`` and converted from there."""
        options = self._fetch_options()
        algorithm, expected = http_source.select_hash(
            image["hashes"], self.conf.standbye.allow_md5)
        source = http_source.HTTPSource(
            image["urls"], expected_size=image.get("size"),
            retries=options["retries"], backoff=options["backoff"],
            timeout=options["timeout"], redirects=options["redirects"],
            attempt_timeout=options["attempt_timeout"],
            min_rate=options["min_rate"])
        try:
            written = self._write_image(
                path, source, http_source.Hasher(algorithm, expected),
                lambda done, total: self._progress(task)(
                    done, total or source.size),
                image.get("size"), pin)
        except writer.NeedsStaging as staging:
            LOG.info("image %s is %s: staging it in %s", image["id"],
                     staging.format, self.work_dir)
        else:
            return {"source": "download", **written}
        finally:
            source.close()
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        local = os.path.join(self.work_dir, "%s.staged" % image["id"])
        try:
            download.download_to_file(
                image["urls"], image["hashes"], local,
                progress=lambda done, total: total and task.progress(
                    percent=50.0 * done / total),
                expected_size=image.get("size"), durable=False,
                allow_md5=self.conf.standbye.allow_md5,
                max_size=self._staging_room(), **options)
            written = self._write_staged(task, local, path, algorithm,
                                         expected, pin)
        finally:
            if os.path.exists(local):
                os.unlink(local)
        return {"source": "download", **written}

    def _write_staged(self, task, image_path, path, algorithm, expected,
                      pin=None):
        """Write the verified image file ``image_path`` to ``path``.

        Its format is detected again from the file itself: qcow2 is
        inspected and converted, anything else streams like a download.
        """
        with open(image_path, "rb") as stream:
            fmt = formats.detect(stream.read(formats.HEAD_SIZE))
        if fmt == formats.QCOW2:
            return {"format": fmt,
                    **self._convert_qcow2(task, image_path, path, pin)}
        with open(image_path, "rb") as stream:
            return self._write_image(
                path, stream, http_source.Hasher(algorithm, expected),
                self._progress(task), os.path.getsize(image_path), pin)

    def _staging_room(self):
        """Bytes a qcow2 image may take in ``work_dir``: its file system's
        free space minus ``[standbye] cache_reserve`` (in the ramdisk that
        is RAM the agent itself needs)."""
        stats = os.statvfs(self.work_dir)
        room = stats.f_bavail * stats.f_frsize - \
            self.conf.standbye.cache_reserve
        if room <= 0:
            raise errors.NoSpace(
                "no room to stage the qcow2 image in %s: %d bytes free, "
                "%d reserved" % (self.work_dir,
                                 stats.f_bavail * stats.f_frsize,
                                 self.conf.standbye.cache_reserve))
        return room

    def _convert_qcow2(self, task, image_path, path, pin=None):
        virtual_size = qcow2.inspect(image_path)
        if virtual_size > blockdev.device_size(path):
            raise writer.ImageTooLarge(
                "the image's virtual size (%d bytes) is larger than %s"
                % (virtual_size, path))
        # The manager's converter (qemu-img) opens the device itself; an
        # O_EXCL descriptor held here meanwhile keeps it from being mounted
        # or claimed, and its identity is compared before and after.
        holder = None if pin is None else writer.DeviceWriter(
            path, devnum=pin["devnum"], recheck=pin["recheck"])
        try:
            self.hardware.call("convert_qcow2_image", path, image_path)
        except Exception:
            if holder is not None:
                holder.abort()
            self._wipe_after_failure(path)
            raise
        finally:
            if holder is not None:
                holder.abort()
        if pin is not None:
            pin["recheck"]()
        task.progress(percent=99.0)
        return {"bytes_written": virtual_size}

    # -- run_image ------------------------------------------------------------

    def _refuse_when_busy(self):
        """Raise :class:`protocol.Busy` as the task registry would, before
        any costly check of a command that could not start anyway."""
        for task in self.context.tasks.running():
            if task.exclusive:
                raise protocol.Busy(
                    "task %s (%s) is running and changes disks; wait for it "
                    "to finish" % (task.task_id, task.method),
                    details={"task_id": task.task_id,
                             "method": task.method})

    def validate_run_image(self, task_id, image_id, config_drive,
                           boot_mode=None):
        # Cheap checks first: decompressing a prebuilt drive costs CPU, and
        # a command the agent cannot start now must not cost anything.
        self._refuse_when_busy()
        image_id = cache_mod.normalise_id(image_id)
        prepared = self._prepared
        if prepared is None or prepared.get("image_id") != image_id:
            raise params.invalid(
                "image_id", "image %s is not the prepared image (%s)"
                % (image_id, "none is prepared" if prepared is None else
                   "prepared: %s" % prepared.get("image_id")))
        max_size = self.conf.standbye.max_config_drive_size
        try:
            if isinstance(config_drive, str):
                # Checked in chunks, not kept: many commands validated at
                # once must not each hold a decompressed drive.
                configdrive.check_prebuilt(config_drive, max_size)
            elif isinstance(config_drive, dict):
                config_drive = params.validate_fields(
                    CONFIG_DRIVE_FIELDS, config_drive, "config_drive")
                configdrive.decode_files(config_drive.get("files"))
            else:
                raise params.invalid("config_drive", "must be an object or "
                                     "a gzip+base64 string")
        except configdrive.InvalidConfigDrive as exc:
            raise protocol.InvalidParams(
                "config_drive: %s" % exc,
                details={"param": "config_drive"}) from None
        return {"task_id": task_id, "image_id": image_id,
                "config_drive": config_drive, "boot_mode": boot_mode}

    @base.task_command(exclusive=True, params={
        "image_id": params.UUID(required=True),
        "config_drive": params.Any(required=True),
        "boot_mode": params.String(choices=efi.BOOT_MODES, nullable=True),
    }, validator=validate_run_image, result=result_schemas.RUN_IMAGE)
    def run_image(self, task, image_id, config_drive, boot_mode=None):
        """Write the config drive, make the disk bootable, then kexec.

        ``boot_mode`` (``uefi`` or ``bios``, default: how the ramdisk was
        booted) says which firmware the disk is set up for. Completes with
        ``boot = {method, reason, mode, entry, kernel, initrd, cmdline,
        ...}`` (docs/standbye.md) and only after the server acknowledged
        it (or the timeout passed) kexecs or reboots through the power
        interface.
        """
        prepared = self._prepared
        if prepared is None or prepared.get("image_id") != image_id:
            raise tasks.TaskFailed("image %s is not the prepared image"
                                   % image_id)
        path = prepared["device"]
        try:
            with self._writing(path, "run_image", image_id):
                result, action = self._run(task, path, config_drive,
                                           boot_mode)
        except _EXPECTED_ERRORS as exc:
            raise tasks.TaskFailed("run_image failed: %s" % exc) from exc
        result["image_id"] = image_id
        return tasks.AfterDelivery(result, action,
                                   self.conf.power.final_status_timeout)

    def _node_of(self, path):
        def node_of(number):
            return partitions.partition_node(
                path, number, self.conf.hardware.sysfs_root,
                self.conf.hardware.dev_root)
        return node_of

    def _run(self, task, path, config_drive, boot_mode=None):
        safety.ensure_writable(path, self.conf, self.hardware)
        state = boot_entries.current_state(self.hardware)
        mode = boot_mode or state["boot_mode"]
        partitions.tell_kernel(path)
        table = partitions.read_table(path)
        if table is None:
            raise partitions.PartitionError(
                "%s has no partition table; the image must be a whole-disk "
                "image" % path)
        node_of = self._node_of(path)
        if mode == efi.UEFI:
            loader = self._efi_loader(table, node_of)
            if loader is None:
                for tool in (uefi.SHIM_PATH, uefi.GRUB_PATH):
                    if not os.path.isfile(tool):
                        raise processes.ToolNotFound([tool])
        else:
            loader = boot.has_boot_loader(path, table, node_of)
            if loader is None and not processes.which("grub-install"):
                raise processes.ToolNotFound(["grub-install"])
        check = None
        if mode == efi.UEFI and loader is None and not uefi.find_esps(table):
            # The ESP the agent will create must fit next to the config
            # drive: refused now, before the disk changes at all.
            check = functools.partial(esp.check_room, path, table)
        task.progress(percent=10.0)
        drive = self._write_config_drive(path, config_drive,
                                         before_change=check)
        task.progress(percent=40.0)
        found = self._find_boot(path, table, node_of,
                                exclude=drive["partition"])
        task.progress(percent=70.0)
        if loader is None:
            if found is None or found.get("fs_uuid") is None:
                raise boot.UnsafePath("the image has no boot loader and no "
                                      "kernel to configure grub for")
            pin = self._pin(path, safety.ensure_writable(
                path, self.conf, self.hardware).get("devnum"))
            if mode == efi.UEFI:
                installed = self.hardware.call(
                    "install_uefi_boot_loader", path, found["node"],
                    found["fs_type"], found)
                # The ESP may be new: the table changed and was written.
                pin["recheck"]()
                partitions.tell_kernel(path)
                loader = {"loader": installed["loader"],
                          "partition": installed["partition"]}
                # "loader" names what was installed, as in BIOS mode
                # ("grub"); "path" is where the boot entry points.
                loader_result = {
                    "action": "installed",
                    "loader": installed.get("name") or "shim+grub",
                    "path": installed["loader"],
                    "partition": installed["partition"],
                    "esp_created": bool(installed.get("esp_created")),
                    "removable": bool(installed.get("removable"))}
            else:
                installed = self.hardware.call(
                    "install_boot_loader", path, found["node"],
                    found["fs_type"], found)
                loader_result = {"action": "installed", "loader": installed}
            pin["recheck"]()
        elif mode == efi.UEFI:
            loader_result = {"action": "left alone", "found": loader["loader"],
                             "partition": loader["partition"]}
        else:
            loader_result = {"action": "left alone", "found": loader}
        entry = None
        if mode == efi.UEFI and state["boot_mode"] == efi.UEFI:
            label = (found or {}).get("label") or "Linux"
            entry = boot_entries.set_up_entry(
                self.hardware, self.conf, path, loader["partition"],
                loader["loader"], label)
            loader_result["entry"] = entry["entry"]
        boot_result, action = self._stage_kexec(found, state, mode, entry)
        result = {"device": path, "config_drive": drive,
                  "boot_loader": loader_result, "boot": boot_result,
                  "boot_entries": entry}
        return result, action

    def _efi_loader(self, table, node_of):
        """The loader the image's ESPs hold (``{"loader", "vendor",
        "partition"}``), or None."""
        for partition in uefi.find_esps(table):
            found = uefi.find_loader(node_of(partition["number"]))
            if found is not None:
                found["partition"] = partition["number"]
                return found
        return None

    def _write_config_drive(self, path, config_drive, before_change=None):
        """Build and write the config drive; ``before_change(size,
        replaced)``, when given, is called once its size and the old
        drives it replaces are known, before the table is changed (it
        raises to refuse)."""
        max_size = self.conf.standbye.max_config_drive_size
        # ISO 9660 cannot be mounted on sectors over 2048 bytes: such
        # disks get a VFAT drive (cloud-init reads both by label).
        sector = blockdev.sector_size(path, default=4096)
        if isinstance(config_drive, str):
            data = configdrive.fit_to_sector_size(
                configdrive.decode_prebuilt(config_drive, max_size), sector,
                max_size)
        else:
            os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
            image = os.path.join(self.work_dir, "config-drive.img")
            try:
                configdrive.build(config_drive, image, max_size, sector)
                with open(image, "rb") as stream:
                    data = stream.read()
            finally:
                if os.path.exists(image):
                    os.unlink(image)
        old = self._old_config_drives(path)
        if before_change is not None:
            before_change(len(data), old)
        pin = self._pin(path, safety.ensure_writable(
            path, self.conf, self.hardware).get("devnum"))
        added = self.hardware.call("add_config_drive_partition", path,
                                   len(data), old)
        # sgdisk/sfdisk opened the device by its name: it must still be
        # the one checked, and still be eligible.
        pin["recheck"]()
        if added["size"] < len(data):
            raise partitions.PartitionError(
                "the config drive partition %s of %s holds %d bytes, not "
                "the %d needed" % (added["number"], path, added["size"],
                                   len(data)))
        self.hardware.call("write_config_drive", path, added, data, pin)
        pin["recheck"]()
        partitions.tell_kernel(path)
        node = self._node_of(path)(added["number"])
        props = boot.probe(node)
        label = props.get("LABEL")
        if (label or "").lower() != configdrive.LABEL:
            raise configdrive.InvalidConfigDrive(
                "the config drive partition %s reads back with label %r"
                % (node, label))
        LOG.info("config drive written to %s (%s, %d bytes)", node,
                 props.get("TYPE"), len(data))
        return {"partition": added["number"], "node": node,
                "size": len(data), "type": props.get("TYPE")}

    def _old_config_drives(self, path):
        """The numbers of the config-drive partitions an earlier run_image
        (or the image) left, highest first: ``add_config_drive_partition``
        deletes them, so cloud-init finds exactly one ``config-2``."""
        table = partitions.read_table(path)
        node_of = self._node_of(path)
        old = []
        for partition in reversed(table["partitions"]):
            number = partition["number"]
            if number is None:
                continue
            named = (partition.get("name") or "") == configdrive.LABEL
            try:
                label = boot.probe(node_of(number)).get("LABEL") or ""
            except partitions.PartitionError as exc:
                LOG.warning("cannot probe partition %d of %s: %s", number,
                            path, exc)
                label = ""
            if named or label.lower() == configdrive.LABEL:
                LOG.info("replacing the config drive in partition %d of %s",
                         number, path)
                old.append(number)
        return old

    def _find_boot(self, path, table, node_of, exclude):
        """The kernel to boot, copied out, or None.

        A file system that cannot be mounted or read, or whose boot files
        are unsafe (links that loop, files that are not regular or too
        large), counts as holding no kernel: the caller then reboots into
        the image instead of failing.
        """
        found = None
        root_uuid = label = None
        for partition in table["partitions"]:
            if partition["number"] in (exclude, None):
                continue
            node = node_of(partition["number"])
            props = boot.probe(node)
            fs_type = props.get("TYPE")
            if fs_type not in boot.MOUNTABLE:
                continue
            try:
                with boot.mounted_read_only(node, fs_type) as root:
                    if root_uuid is None and self._has_etc(root, node):
                        root_uuid = props.get("UUID")
                        label = uefi.os_release_label(root)
                    if found is None:
                        found = self._kernel_in(root, node)
                        if found is not None:
                            found.update(node=node, fs_type=fs_type,
                                         fs_uuid=props.get("UUID"),
                                         partition=partition["number"])
            except (processes.ProcessError, OSError) as exc:
                LOG.warning("cannot look into %s (%s): %s", node, fs_type,
                            exc)
        if found is not None:
            options = found["options"]
            if not any(word.startswith("root=") for word in options.split()):
                if root_uuid is None:
                    LOG.warning("found %s but no root file system to pass "
                                "to it", found["kernel"])
                    return None
                options = ("root=UUID=%s ro %s" % (root_uuid, options)).strip()
            found["cmdline"] = options
            found["label"] = label
        return found

    @staticmethod
    def _has_etc(root, node):
        try:
            return boot.resolve_inside(root, "/etc") is not None
        except (boot.UnsafePath, OSError) as exc:
            LOG.warning("cannot resolve /etc on %s: %s", node, exc)
            return False

    def _kernel_in(self, root, node):
        """The kernel of the file system at ``root``, copied out, or None
        when it has none that can be read safely."""
        try:
            entry = boot.find_kernel(root)
            if entry is None:
                return None
            return self._copy_boot_files(root, entry)
        except (boot.UnsafePath, OSError) as exc:
            LOG.warning("no usable kernel on %s: %s", node, exc)
            shutil.rmtree(os.path.join(self.work_dir, "kexec"),
                          ignore_errors=True)
            return None

    def _copy_boot_files(self, root, entry):
        options = self.conf.standbye
        directory = os.path.join(self.work_dir, "kexec")
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)
        kernel = boot.copy_out(root, entry["kernel"],
                               os.path.join(directory, "kernel"),
                               limit=options.max_kernel_size)
        initrd = None
        if entry["initrds"]:
            # kexec takes one initrd; initramfs archives concatenate. Their
            # total is bounded: the copy lives in RAM in the ramdisk. Each
            # is appended straight from the image, never staged twice.
            initrd = os.path.join(directory, "initrd")
            remaining = options.max_initrd_size
            with open(initrd, "wb") as output:
                for part in entry["initrds"]:
                    with boot.open_boot_file(root, part,
                                             remaining) as source:
                        remaining -= boot.copy_stream(source, output,
                                                      remaining)
        return {"kernel": entry["kernel"], "initrd": (
            entry["initrds"][0] if len(entry["initrds"]) == 1
            else entry["initrds"] or None),
            "options": entry["options"], "source": entry["source"],
            "kernel_copy": kernel, "initrd_copy": initrd}

    def _stage_kexec(self, found, state=None, mode=efi.BIOS, entry=None):
        """``(boot result, power action)``: the decision table of
        :func:`uefi_boot.kexec_plan`, then the kexec load itself."""
        power = self.context.power
        state = state or {"boot_mode": efi.BIOS, "secure_boot": None,
                          "setup_mode": None, "lockdown": None}
        signed = None
        file_load = efi.signed_load_required(state)
        if found is not None and file_load:
            signed = uefi.kernel_signed(found["kernel_copy"])
        method, file_load, reason = uefi_boot.kexec_plan(found, state,
                                                         signed)
        boot_result = {"method": method, "mode": mode,
                       "firmware_mode": state["boot_mode"],
                       "secure_boot": state.get("secure_boot"),
                       "lockdown": state.get("lockdown"),
                       "entry": entry["entry"] if entry else None,
                       "kexec_syscall": None, "kernel_signed": signed,
                       **uefi_boot.reason_fields(reason)}
        if found is None:
            LOG.warning("no kernel found in the image; rebooting into it")
            boot_result.update(kernel=None, initrd=None, cmdline=None)
            return boot_result, self._reboot_into(boot_result)
        boot_result.update(kernel=found["kernel"], initrd=found["initrd"],
                           cmdline=found["cmdline"],
                           partition=found["partition"],
                           source=found["source"])
        if method == uefi_boot.REBOOT:
            LOG.warning("%s", boot_result["reason_text"])
            return boot_result, self._reboot_into(boot_result)
        boot_result["kexec_syscall"] = "kexec_file_load" if file_load \
            else "kexec_load"
        try:
            power.load_kexec(found["kernel_copy"], found["initrd_copy"],
                             found["cmdline"], **(
                                 {"file_load": True} if file_load else {}))
        except power_mod.KexecRejected as exc:
            LOG.warning("the kernel refused to load %s (%s); rebooting "
                        "instead", found["kernel"], exc)
            boot_result.update(method=uefi_boot.REBOOT, kexec_error=str(exc),
                               **uefi_boot.reason_fields(
                                   "signature_rejected"))
            return boot_result, self._reboot_into(boot_result)
        except processes.ProcessError as exc:
            LOG.warning("kexec cannot load %s (%s); rebooting instead",
                        found["kernel"], exc)
            boot_result.update(method=uefi_boot.REBOOT, kexec_error=str(exc),
                               **uefi_boot.reason_fields("kexec_failed"))
            return boot_result, self._reboot_into(boot_result)
        return boot_result, power.kexec

    def _reboot_into(self, boot_result):
        """The reboot action; in UEFI mode BootNext names the new entry
        first, so the next boot is the image's whatever the firmware does
        with BootOrder. A failure to set it is noted, not fatal: the
        entry is first in BootOrder already."""
        if boot_result.get("entry"):
            try:
                self.hardware.call("set_boot_next", boot_result["entry"])
                boot_result["boot_next"] = boot_result["entry"]
            except hardware.HardwareManagerError as exc:
                LOG.warning("cannot set BootNext to %s: %s",
                            boot_result["entry"], exc)
                boot_result["boot_next_error"] = str(exc)
        return self.context.power.reboot
