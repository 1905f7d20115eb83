"""The ``decom`` command group: make a used chassis safe for the next tenant.

``decom.disk_erase`` erases block devices with the strongest method each
supports and config allows, wipes their signatures and reads them back;
``decom.firmware_secure`` brings firmware to given versions and BIOS
settings to given values; ``decom.qc`` compares the chassis with its
model's spec. Parameters, methods and result shapes: ``docs/decom.md``.

The extension decides and verifies; the hardware managers touch the
machine (``get_erase_capabilities``, ``erase_block_device``,
``wipe_metadata``, ``update_firmware``, ...). The safety re-check before
each erase method and the read-back after the erase are done here,
through :mod:`teeth_agent.hardware.safety` and
:mod:`teeth_agent.hardware.erase`, whatever manager erased and wiped the
device, so a vendor manager's erase is checked the same way as the
generic one and cannot skip the check.
"""

# Size: 813 lines, over the ~500 guideline: DecomExtension is one command
# group (561 lines) whose commands share the erase plan and its result
# entries; qc, firmware and what is done before an erase (preparation:
# teardown, NVMe namespaces) are their own modules.

import concurrent.futures
import dataclasses
import logging
import os
import tempfile
import threading
import time

from teeth_agent.disk import blockdev
from teeth_agent.extensions import base
from teeth_agent.extensions.decom import firmware as firmware_images
from teeth_agent.extensions.decom import health_checks
from teeth_agent.extensions.decom import preparation
from teeth_agent.extensions.decom import qc
from teeth_agent.extensions.decom import results as result_schemas
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.fetch import proxy
from teeth_agent import hardware
from teeth_agent.hardware import boot_entries
from teeth_agent.hardware import erase
from teeth_agent.hardware import evidence
from teeth_agent.hardware import inventory
from teeth_agent.hardware import safety
from teeth_agent.hardware import teardown
from teeth_agent import params
from teeth_agent import protocol
from teeth_agent import tasks

LOG = logging.getLogger(__name__)


class NoEraseMethod(Exception):
    """No allowed method can erase a device; ``skipped`` says why not."""

    def __init__(self, msg, skipped):
        super().__init__(msg)
        self.skipped = skipped


#: ``[decom] minimum_nist_category`` values and the categories they name.
_MINIMUM = {"clear": erase.CLEAR, "purge": erase.PURGE}


def _category(method):
    known = erase.METHODS.get(method)
    return known.nist_category if known else None


@dataclasses.dataclass
class ErasePlan:
    """The methods to try on one device, in order, and why.

    ``skipped`` lists ``{"method", "reason"}`` for every allowed method
    before the first candidate that is not used; ``downgraded_from`` is the
    requested method when the device cannot do it (else None);
    ``required`` the NIST category the erase must reach; ``purge_offered``
    the Purge methods the device supports (allowed or not).
    """

    candidates: list
    skipped: list
    downgraded_from: str
    required: str
    purge_offered: list


def plan_erase(capabilities, allowed, requested=None, allow_fallback=False,
               minimum=erase.CLEAR):
    """Choose the methods to try on one device: an :class:`ErasePlan`.

    ``capabilities`` is what the managers answered for
    ``get_erase_capabilities`` (a list of names, possibly an
    :class:`erase.Capabilities` carrying reasons); ``allowed`` is
    ``[decom] erase_methods``. Without ``requested``, the candidates are
    the allowed methods the device supports, in config order. With it, the
    requested method alone, unless ``allow_fallback``: then the supported
    allowed methods after it in config order follow it.

    ``minimum`` is the weakest acceptable NIST category where the device
    offers a method of that category: with :data:`erase.PURGE`, a device
    that supports any Purge method may only get a Purge method (Clear ones
    are skipped, saying why), and a device that supports none gets its best
    Clear method. Raises :class:`NoEraseMethod` when there is no candidate.
    """
    supported = set(capabilities)
    reasons = getattr(capabilities, "unsupported", None) or {}
    purge_offered = [method for method in capabilities
                     if _category(method) == erase.PURGE]
    required = erase.PURGE if minimum == erase.PURGE and purge_offered \
        else erase.CLEAR

    def too_weak(method):
        return erase.category_rank(_category(method)) < \
            erase.category_rank(required)

    def usable(method):
        return method in supported and not too_weak(method)

    def reason(method):
        if method in supported:
            return ("it reaches only %s, and the device offers Purge (%s) "
                    "while [decom] minimum_nist_category is purge"
                    % (_category(method) or "an unknown NIST category",
                       ", ".join(purge_offered)))
        return reasons.get(method, "the device does not support it "
                           "(no hardware manager offers it)")

    if requested is not None and usable(requested):
        order = allowed[allowed.index(requested) + 1:] if \
            requested in allowed else []
        fallbacks = [m for m in order if usable(m)] if \
            allow_fallback else []
        return ErasePlan([requested] + fallbacks, [], None, required,
                         purge_offered)
    if requested is not None:
        skipped = [{"method": requested, "reason": reason(requested)}]
        if not allow_fallback:
            raise NoEraseMethod("the requested method %s is not possible: "
                                "%s" % (requested, reason(requested)),
                                skipped)
        order = allowed[allowed.index(requested) + 1:] if \
            requested in allowed else list(allowed)
    else:
        skipped = []
        order = list(allowed)
    candidates = [method for method in order if usable(method)]
    first = order.index(candidates[0]) if candidates else len(order)
    skipped += [{"method": method, "reason": reason(method)}
                for method in order[:first]]
    if not candidates:
        why = "; ".join("%s: %s" % (s["method"], s["reason"])
                        for s in skipped)
        forbidden = [m for m in purge_offered if m not in allowed]
        if required == erase.PURGE and forbidden:
            why += ("%sthe Purge methods %s are not in [decom] "
                    "erase_methods" % ("; " if why else "",
                                       ", ".join(forbidden)))
        raise NoEraseMethod("no allowed erase method is possible (%s)"
                            % (why or "[decom] erase_methods allows none"),
                            skipped)
    return ErasePlan(candidates, skipped, requested, required, purge_offered)


class CombinedProgress:
    """One monotonic percent over several devices erased in parallel.

    Each device reports ``(done, total)`` in its own units; they are
    scaled to the device's size so the task's ``done`` is bytes over all
    devices. A device's share never goes back (a method that fails and a
    weaker one that starts over do not lower it).
    """

    def __init__(self, task, sizes):
        self._task = task
        self._sizes = dict(sizes)
        self._done = {path: 0 for path in self._sizes}
        self._total = sum(self._sizes.values()) or 1
        self._lock = threading.Lock()
        self._reported = -1

    def device(self, path):
        """The ``progress(done, total)`` callable for one device."""
        def progress(done, total):
            size = self._sizes[path]
            scaled = size * done // total if total else 0
            self.update(path, scaled)
        return progress

    def update(self, path, done):
        with self._lock:
            done = min(max(done, self._done[path]), self._sizes[path])
            self._done[path] = done
            overall = sum(self._done.values())
            # At most ~1000 updates per task, whatever the write size.
            step = overall * 1000 // self._total
            if step == self._reported:
                return
            self._reported = step
        self._task.progress(done=overall, total=self._total)

    def finish(self, path):
        """Count the whole device as done (erased or given up)."""
        self.update(path, self._sizes[path])


#: ``outcome`` of a ``decom.disk_erase`` result entry.
ERASED = "erased"
FAILED = "failed"
SKIPPED = "skipped"
EXCLUDED = "excluded"
#: An accounted disk that is about to be erased (never in a result).
ERASE = "erase"


def _skipped_entry(path, refused):
    """The result entry of a disk refused by :mod:`safety` before any
    write (:class:`safety.DeviceNotEligible` ``refused``)."""
    return {"path": path, "outcome": SKIPPED, "reason": refused.kind,
            "detail": refused.reason}


def _failure_text(entry):
    """One device of a failed erase, as the task's ``msg`` lists it."""
    if entry["outcome"] == SKIPPED:
        return "%s: skipped (%s): %s" % (entry["path"], entry["reason"],
                                         entry["detail"])
    return "%s: %s" % (entry["path"], entry.get("error") or "not erased")


_TRUE_TEXTS = ("enabled", "true", "on", "1", "yes")
_FALSE_TEXTS = ("disabled", "false", "off", "0", "no")


def _same_setting(current, wanted):
    """Whether a BIOS setting read as ``current`` has the value ``wanted``.

    Firmware reports text; a boolean wanted value matches the usual
    spellings of on and off.
    """
    if current is None:
        return False
    text = str(current).strip().lower()
    if isinstance(wanted, bool):
        return text in (_TRUE_TEXTS if wanted else _FALSE_TEXTS)
    return text == str(wanted).strip().lower()


#: Outcomes whose entries are erase evidence records (signed with
#: ``[decom] evidence_key``).
_EVIDENCE_OUTCOMES = (ERASED, FAILED)


class DecomExtension(base.Extension):
    """``decom.disk_erase``, ``decom.firmware_secure``, ``decom.qc``."""

    #: The :class:`evidence.Signer` of ``[decom] evidence_key`` (None: the
    #: records are not signed).
    _signer = None

    def start(self):
        """Load ``[decom] evidence_key`` so that a bad key file stops the
        agent at start-up rather than at the first erase."""
        self._evidence_signer()

    def _evidence_signer(self):
        """The signer of ``[decom] evidence_key``, loaded once; None when
        the option is empty. Raises :class:`evidence.EvidenceKeyError`."""
        path = self.conf.decom.evidence_key
        if not path:
            return None
        if self._signer is None:
            self._signer = evidence.Signer.from_file(path)
        return self._signer

    # -- disk_erase ----------------------------------------------------------

    @base.task_command(exclusive=True, params={
        "devices": params.List(params.DevicePath(), min_items=1,
                               unique=True),
        "method": params.String(choices=erase.KNOWN_METHODS),
        "allow_fallback": params.Boolean(default=False),
    }, validator="validate_disk_erase", result=result_schemas.DISK_ERASE)
    def disk_erase(self, task, devices, method, allow_fallback):
        """Erase ``devices`` (default: every disk of the machine in scope).

        Each device gets the strongest method it supports among ``[decom]
        erase_methods`` (or ``method``) that reaches ``[decom]
        minimum_nist_category``, then its signatures are wiped and it is
        read back. Devices run in parallel; a failed device does not stop
        the others, and the task ends in error listing each failure.
        Without ``devices`` the result accounts for every disk: erased,
        skipped (and why) or excluded by config; a disk in scope that could
        not be erased fails the task after the others are done.
        """
        try:
            signer = self._evidence_signer()
        except evidence.EvidenceKeyError as exc:
            # Before anything is written: an erase without the evidence the
            # operator configured is not what was asked for.
            raise tasks.TaskFailed("disk erase not started: %s" % exc)
        if devices is None:
            accounted = self._account_disks()
            targets = [entry["path"] for entry in accounted
                       if entry["outcome"] == ERASE]
        else:
            accounted = None
            targets = list(devices)
        remove_entries = self.conf.decom.remove_boot_entries
        if remove_entries:
            uuids = boot_entries.before_erase(self.hardware, targets)
        results = self._erase_all(task, targets, method, allow_fallback)
        if remove_entries:
            removed, entries_error = boot_entries.after_erase(
                self.hardware, uuids, [path for path in targets
                                       if results[path]["outcome"] == ERASED])
        if accounted is None:
            ordered = [results[path] for path in targets]
        else:
            ordered = [results.get(entry["path"], entry)
                       for entry in accounted]
        if signer is not None:
            ordered = [signer.sign(entry) if entry["outcome"] in
                       _EVIDENCE_OUTCOMES else entry for entry in ordered]
        in_scope = [entry for entry in ordered
                    if entry["outcome"] != EXCLUDED]
        failures = [entry for entry in in_scope
                    if entry["outcome"] != ERASED]
        result = {"devices": ordered}
        if remove_entries:
            result["boot_entries_removed"] = removed
            if entries_error:
                result["boot_entries_error"] = entries_error
        if failures:
            result["not_erased"] = [entry["path"] for entry in failures]
            raise tasks.TaskFailed(
                "disk erase failed on %d of %d device(s): %s"
                % (len(failures), len(in_scope),
                   "; ".join(_failure_text(entry) for entry in failures)),
                result)
        return result

    def validate_disk_erase(self, devices, method, allow_fallback):
        """Check the erase against config and the machine, before any work.

        Refuses a method config forbids and any listed device that is not
        eligible. Without ``devices``, refuses a machine where no disk can
        be erased; which disks are erased is decided again when the task
        starts.
        """
        allowed = list(self.conf.decom.erase_methods)
        if method is not None and method not in allowed:
            raise params.invalid("method", "%s is not allowed by [decom] "
                                 "erase_methods (%s)"
                                 % (method, ", ".join(allowed) or "empty"))
        if not allowed:
            raise protocol.InvalidParams(
                "[decom] erase_methods allows no erase method",
                details={"param": "method"})
        if devices is None:
            accounted = self._account_disks()
            if not any(entry["outcome"] == ERASE for entry in accounted):
                refused = [entry for entry in accounted
                           if entry["outcome"] == SKIPPED]
                raise protocol.InvalidParams(
                    "devices: no eligible block device to erase on this "
                    "machine%s" % ("".join(
                        "; %s" % _failure_text(entry) for entry in refused)),
                    details={"param": "devices", "devices": refused})
            return {"devices": None, "method": method,
                    "allow_fallback": allow_fallback}
        resolved = []
        for index, path in enumerate(devices):
            try:
                device = safety.ensure_writable(path, self.conf,
                                                self.hardware)
            except safety.DeviceNotEligible as exc:
                raise protocol.InvalidParams(
                    "devices[%d]: %s is not eligible for erase: %s"
                    % (index, path, exc.reason),
                    details={"param": "devices[%d]" % index,
                             "device": path, "reason": exc.reason,
                             "kind": exc.kind}) from None
            if device["path"] in resolved:
                raise params.invalid("devices[%d]" % index,
                                     "%s is listed twice" % path)
            resolved.append(device["path"])
        # A stack (md, LVM, ...) that also sits on a disk not listed would
        # be left alone at erase time: refuse it now, before any work.
        refused = teardown.plan([os.path.basename(path) for path in resolved],
                                self.conf).refused
        for index, path in enumerate(resolved):
            reason = refused.get(os.path.basename(path))
            if reason:
                raise protocol.InvalidParams(
                    "devices[%d]: %s is not eligible for erase: %s"
                    % (index, path, reason),
                    details={"param": "devices[%d]" % index, "device": path,
                             "reason": reason, "kind": safety.HOLDER})
        return {"devices": resolved, "method": method,
                "allow_fallback": allow_fallback}

    def _account_disks(self):
        """Every disk the managers list, sorted by path, with what the
        erase will do to it.

        Each entry has ``path`` and ``outcome``: :data:`ERASE` (to be
        erased), :data:`EXCLUDED` (by ``[hardware] device_include`` /
        ``device_exclude``) or :data:`SKIPPED` (refused by the safety rules:
        mounted, holder, read-only, agent root, ...), the latter two with
        ``reason`` (a word) and ``detail`` (a sentence).
        """
        try:
            listed = self.hardware.dispatch("list_block_devices") or []
        except hardware.NoManagerError:
            listed = []
        entries = {}
        for device in listed:
            path = device["path"]
            if path in entries:
                continue
            included, why = safety.inclusion(path, self.conf)
            if not included:
                entries[path] = {"path": path, "outcome": EXCLUDED,
                                 "reason": safety.EXCLUDED, "detail": why}
                continue
            try:
                safety.check_live(device, self.conf)
            except safety.DeviceNotEligible as exc:
                entries[path] = _skipped_entry(path, exc)
                continue
            entries[path] = {"path": path, "outcome": ERASE}
        return [entries[path] for path in sorted(entries)]

    def _erase_all(self, task, targets, method, allow_fallback):
        """Erase ``targets`` in parallel; ``{path: result entry}``."""
        prepared = preparation.tear_down(self.conf, self.hardware, targets)
        namespaces, covered = preparation.prepare_namespaces(
            self.conf, self.hardware, targets, prepared)
        for path, info in namespaces.items():
            prepared.setdefault(path, {"teardown": []})["namespaces"] = info
        targets = [path for path in targets if path not in covered]
        targets += [path for path in dict.fromkeys(covered.values())
                    if path not in targets]
        sizes = {}
        for path in targets:
            try:
                sizes[path] = blockdev.device_size(path)
            except OSError:
                # The device's own erase reports the failure; it just
                # weighs nothing in the combined percent.
                sizes[path] = 0
        combined = CombinedProgress(task, sizes)
        workers = max(1, min(self.conf.decom.erase_concurrency,
                             len(targets) or 1))
        results = {}
        with concurrent.futures.ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix="erase-%s" % task.task_id) as pool:
            futures = {pool.submit(self._erase_one, path, method,
                                   allow_fallback, combined,
                                   prepared[path]): path
                       for path in targets}
            for future in concurrent.futures.as_completed(futures):
                path = futures[future]
                results[path] = future.result()
                combined.finish(path)
        for path, into in covered.items():
            # The namespace is gone; its blocks are part of the one that
            # replaced it, and share its outcome and evidence.
            results[path] = dict(results[into], path=path, covered_by=into,
                                 namespaces=namespaces.get(path))
        return results

    def _erase_one(self, path, requested, allow_fallback, combined,
                   prepared=None):
        """Erase, wipe and verify one device; never raises.

        Returns the device's result entry: ``outcome`` is :data:`ERASED`,
        :data:`FAILED` (with ``error``) or :data:`SKIPPED` (the device was
        refused before anything was written to it).
        """
        started = time.monotonic()
        prepared = prepared or {"teardown": []}
        try:
            # Re-checked right before the first write: a device mounted
            # since the command was accepted is refused now.
            device = safety.ensure_writable(path, self.conf, self.hardware)
        except safety.DeviceNotEligible as exc:
            if not (prepared.get("error") and prepared.get("device")):
                LOG.error("not erasing %s: %s", path, exc.reason)
                return _skipped_entry(path, exc)
            # What was done before the erase failed it and removed it (a
            # namespace reset that stopped after delete-ns): nothing is
            # written, and its record says what happened to the drive.
            device = prepared["device"]
        if prepared.get("refused"):
            LOG.error("not erasing %s: %s", path, prepared["refused"])
            return _skipped_entry(path, safety.DeviceNotEligible(
                path, prepared["refused"], safety.HOLDER))
        entry = {"path": path, "outcome": FAILED, "method": None,
                 "nist_category": None, "required_nist_category": None,
                 "purge_offered": None, "duration_s": None, "bytes": 0,
                 "verified": False, "skipped_methods": []}
        entry.update(erase.device_identity(self, device))
        entry.update({"verification": {"read_back": None, "samples": 0,
                                       "result": "not_run"},
                      "started_at": evidence.utc_timestamp(),
                      "ended_at": None, "tool": None, "tool_version": None,
                      "agent_version": erase.agent_version(),
                      "agent_id": self.context.agent_id,
                      "teardown": prepared["teardown"]})
        if prepared.get("namespaces"):
            entry["namespaces"] = prepared["namespaces"]
        try:
            if prepared.get("error"):
                raise erase.EraseError(prepared["error"])
            self._erase_verified(device, requested, allow_fallback,
                                 combined.device(path), entry)
        except NoEraseMethod as exc:
            entry["skipped_methods"] = exc.skipped
            entry["error"] = str(exc)
        except safety.DeviceNotEligible as exc:
            entry["error"] = "no longer eligible: %s" % exc.reason
        except (hardware.HardwareManagerError, erase.EraseError,
                OSError) as exc:
            entry["error"] = str(exc)
        except Exception as exc:
            LOG.exception("erasing %s failed unexpectedly", path)
            entry["error"] = "%s: %s" % (type(exc).__name__, exc)
        entry["duration_s"] = round(time.monotonic() - started, 3)
        entry["ended_at"] = evidence.utc_timestamp()
        if entry.get("error"):
            LOG.error("erase of %s failed: %s", path, entry["error"])
        else:
            entry["outcome"] = ERASED
        return entry

    def _erase_verified(self, device, requested, allow_fallback, progress,
                        entry):
        path = device["path"]
        capabilities = self.hardware.dispatch("get_erase_capabilities",
                                              device)
        plan = plan_erase(
            capabilities, list(self.conf.decom.erase_methods), requested,
            allow_fallback,
            minimum=_MINIMUM[self.conf.decom.minimum_nist_category])
        entry["required_nist_category"] = plan.required
        entry["purge_offered"] = bool(plan.purge_offered)
        if self.conf.decom.minimum_nist_category == "purge" and \
                not plan.purge_offered:
            entry["category_note"] = ("the device offers no Purge method; "
                                      "its best allowed Clear method is used")
        skipped = entry["skipped_methods"] = plan.skipped
        downgraded_from = plan.downgraded_from
        markers = erase.write_markers(path)
        outcome = None
        failures = []
        for method in plan.candidates:
            # Once more right before each method: device-level tools (nvme,
            # hdparm, sg_sanitize) do not claim the device the way the
            # O_EXCL opens of the marker and overwrite code do, so this keeps
            # the window for a mount to slip in as short as it can be.
            device = safety.ensure_writable(path, self.conf, self.hardware)
            try:
                outcome = self.hardware.dispatch("erase_block_device",
                                                 device, method, progress)
                break
            except hardware.HardwareManagerError as exc:
                LOG.error("%s failed on %s: %s", method, path, exc)
                failures.append("%s: %s" % (method, exc))
                skipped.append({"method": method,
                                "reason": "failed: %s" % exc})
                downgraded_from = downgraded_from or method
        if outcome is None:
            raise erase.EraseError("every possible method failed: %s"
                                   % "; ".join(failures))
        used = outcome.get("method") or method
        entry["method"] = used
        entry["nist_category"] = outcome.get(
            "nist_category") or erase.METHODS[used].nist_category
        entry["bytes"] = outcome.get("bytes") or 0
        # A vendor manager that does not say which tool erased leaves both
        # None: the evidence never names a tool that did not run.
        entry["tool"] = outcome.get("tool")
        entry["tool_version"] = outcome.get("tool_version")
        if downgraded_from and downgraded_from != used:
            entry["downgraded_from"] = downgraded_from
        self.hardware.call("wipe_metadata", device)
        verification = erase.verify_erased(
            path, used, markers, self.conf.decom.erase_verify_samples)
        entry["verified"] = verification["verified"]
        entry["blocks_checked"] = verification["blocks_checked"]
        entry["verification"] = {
            "read_back": verification["read_back"],
            "samples": verification["blocks_checked"],
            "result": "passed" if verification["verified"] else "failed"}
        if not verification["verified"]:
            entry["verify_problems"] = verification["problems"]
            entry["error"] = ("read-back verification failed after %s: %s"
                              % (used, "; ".join(verification["problems"])))
        elif erase.category_rank(entry["nist_category"]) < \
                erase.category_rank(plan.required):
            # A manager's own answer is checked too: it may have done less
            # than the method promises.
            entry["error"] = ("%s reached only %s, below the required %s"
                              % (used, entry["nist_category"],
                                 plan.required))

    # -- firmware_secure -----------------------------------------------------

    @base.task_command(exclusive=True, params={
        "firmware": params.List(params.Object(fields={
            "component": params.String(required=True, min_length=1,
                                       max_length=128),
            "version": params.String(required=True, min_length=1,
                                     max_length=256),
            "url": params.URL(required=True),
            "hashes": params.Map(params.String(max_length=256),
                                 required=True),
        }), required=True),
        "bios_settings": params.Map(params.Any()),
    }, validator="validate_firmware_secure",
        result=result_schemas.FIRMWARE_SECURE)
    def firmware_secure(self, task, firmware, bios_settings):
        """Bring firmware and BIOS settings to the given values.

        Also reports the Secure Boot state.
        """
        failures = []
        components = self._update_firmware(task, firmware, failures)
        settings = self._apply_bios_settings(bios_settings or {}, failures)
        try:
            secure_boot = self.hardware.dispatch("get_secure_boot_state")
        except hardware.NoManagerError:
            secure_boot = None
        except hardware.HardwareManagerError as exc:
            # The firmware work is done; keep its results and say why the
            # Secure Boot state is missing.
            secure_boot = None
            failures.append("reading the Secure Boot state failed: %s" % exc)
        result = {"firmware": components, "bios_settings": settings,
                  "secure_boot": secure_boot}
        if failures:
            raise tasks.TaskFailed("firmware_secure failed: "
                                   + "; ".join(failures), result)
        return result

    def validate_firmware_secure(self, firmware, bios_settings):
        """Refuse bad checksums, repeated components, odd setting values."""
        seen = set()
        for index, entry in enumerate(firmware):
            path = "firmware[%d]" % index
            entry["hashes"] = firmware_images.check_hashes(
                entry["hashes"], path + ".hashes")
            if entry["component"] in seen:
                raise params.invalid(path + ".component", "%s is listed "
                                     "twice" % entry["component"])
            seen.add(entry["component"])
        for name, value in (bios_settings or {}).items():
            if isinstance(value, (dict, list)) or value is None:
                raise params.invalid("bios_settings.%s" % name,
                                     "must be a string, number or boolean")
        return {"firmware": firmware, "bios_settings": bios_settings}

    def _fetch_policy(self):
        """The download policy firmware shares with tenant images: where
        redirects may lead and the attempt deadline ([standbye])."""
        options = self.conf.standbye
        redirects = http_source.RedirectPolicy(
            options.allowed_redirect_networks,
            proxies=proxy.Proxies.configured(options.proxy,
                                             options.no_proxy))
        return {"redirects": redirects,
                "attempt_timeout": options.download_attempt_timeout,
                "min_rate": options.download_min_rate}

    def _update_firmware(self, task, wanted, failures):
        before = inventory.firmware_versions(self.hardware)
        entries = []
        pending = []
        for item in wanted:
            entry = {"component": item["component"],
                     "before": before.get(item["component"]),
                     "target": item["version"], "after": None,
                     "action": None}
            entries.append(entry)
            if entry["before"] == item["version"]:
                entry["action"] = "skipped"
                entry["after"] = entry["before"]
            else:
                pending.append((item, entry))
        # A component no manager reports can never be verified after an
        # update: refuse it before anything is flashed.
        updatable = bool(self.hardware.implementers("update_firmware"))
        blocked = [item["component"] for item, _ in pending
                   if not updatable or item["component"] not in before]
        if blocked:
            for item, entry in pending:
                if item["component"] in blocked:
                    entry["action"] = "failed"
                    entry["reason"] = ("no hardware manager can update "
                                       "component %s" % item["component"])
                    failures.append(entry["reason"])
                else:
                    entry["action"] = "not_attempted"
                    entry["reason"] = ("not updated because another "
                                       "component cannot be")
            return entries
        steps = 2 * len(pending) + 1
        done = 0
        with tempfile.TemporaryDirectory(prefix="teeth-firmware-") as tmp:
            images = {}
            for index, (item, entry) in enumerate(pending):
                image = os.path.join(tmp, "image-%d" % index)
                try:
                    firmware_images.download(
                        item["url"], item["hashes"], image,
                        timeout=self.conf.decom.firmware_download_timeout,
                        attempts=self.conf.decom.firmware_download_attempts,
                        max_bytes=self.conf.decom.firmware_max_bytes,
                        **self._fetch_policy())
                    images[item["component"]] = image
                except (errors.DownloadError, OSError) as exc:
                    entry["action"] = "failed"
                    entry["reason"] = str(exc)
                    failures.append("component %s: %s"
                                    % (item["component"], exc))
                done += 1
                task.progress(done=done, total=steps)
            if failures:
                # Nothing is flashed unless every image is good.
                for item, entry in pending:
                    if entry["action"] is None:
                        entry["action"] = "not_attempted"
                        entry["reason"] = ("not updated because another "
                                           "image failed to download")
                return entries
            for item, entry in pending:
                component = item["component"]
                try:
                    details = self.hardware.dispatch(
                        "update_firmware", component, images[component],
                        item["version"])
                    entry["action"] = "updated"
                    if details:
                        entry["details"] = details
                except hardware.NoManagerError:
                    entry["action"] = "failed"
                    entry["reason"] = ("no hardware manager can update "
                                       "component %s" % component)
                    failures.append(entry["reason"])
                except hardware.HardwareManagerError as exc:
                    entry["action"] = "failed"
                    entry["reason"] = str(exc)
                    failures.append("component %s: %s" % (component, exc))
                done += 1
                task.progress(done=done, total=steps)
        after = inventory.firmware_versions(self.hardware)
        for item, entry in pending:
            entry["after"] = after.get(item["component"])
            if entry["action"] == "updated" and \
                    entry["after"] != item["version"]:
                entry["action"] = "failed"
                entry["reason"] = ("component %s reports version %s after the "
                                   "update, expected %s"
                                   % (item["component"], entry["after"],
                                      item["version"]))
                failures.append(entry["reason"])
        return entries

    def _apply_bios_settings(self, wanted, failures):
        if not wanted:
            return {}
        try:
            current = self.hardware.dispatch("get_bios_settings")
        except hardware.NoManagerError:
            failures.append("no hardware manager can read BIOS settings")
            return {}
        except hardware.HardwareManagerError as exc:
            failures.append("reading BIOS settings failed: %s" % exc)
            return {}
        changes = {name: value for name, value in wanted.items()
                   if not _same_setting(current.get(name), value)}
        applied = {}
        if changes:
            try:
                applied = self.hardware.dispatch("apply_bios_settings",
                                                 changes) or {}
            except hardware.NoManagerError:
                failures.append("no hardware manager can change BIOS "
                                "settings (%s)" % ", ".join(sorted(changes)))
            except hardware.HardwareManagerError as exc:
                failures.append("applying BIOS settings failed: %s" % exc)
        try:
            after = self.hardware.dispatch("get_bios_settings")
        except hardware.HardwareManagerError as exc:
            failures.append("reading BIOS settings back failed: %s" % exc)
            after = {}
        report = {}
        for name, value in sorted(wanted.items()):
            now = after.get(name)
            pending = name in applied and not _same_setting(now, value)
            report[name] = {"before": current.get(name),
                            "requested": value, "after": now,
                            "changed": name in changes,
                            "pending": pending}
            if not _same_setting(now, value) and not (
                    pending and _same_setting(applied[name], value)):
                failures.append("BIOS setting %s reads %r, expected %r"
                                % (name, now, value))
        return report

    # -- qc ------------------------------------------------------------------

    @base.task_command(params={"spec": qc.SPEC}, validator="validate_qc",
                       result=result_schemas.QC)
    def qc(self, task, spec):
        """Compare the live inventory with ``spec`` and run the spec's
        health checks (SMART, memory, stress, disk read); fail on a
        difference."""
        found = inventory.collect_inventory(self.hardware, self.conf)
        checks = qc.core_checks(spec, found)
        health, readings = health_checks.run(self.hardware, task, spec,
                                             found)
        checks.extend(health)
        # Every manager may add checks (managers without any decline).
        for _, answer in self.hardware.dispatch_all("run_qc_checks", spec,
                                                    found):
            checks.extend(answer or [])
        checks.extend(qc.unchecked_vendor_keys(spec, checks))
        result = {"inventory": found, "checks": checks}
        if readings:
            result["health"] = readings
        differences = qc.describe_failures(checks)
        if differences:
            raise tasks.TaskFailed("qc found %d difference(s): %s"
                                   % (len(differences),
                                      "; ".join(differences)), result)
        return result

    def validate_qc(self, spec):
        """Refuse a health spec the shapes cannot: see
        :func:`health_checks.validate`."""
        health_checks.validate(spec)
        return {"spec": spec}
