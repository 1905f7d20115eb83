"""What the ``standbye`` tasks hold in ``result`` (and ``cache_images`` in
``details`` when it fails): the declarations their
``@base.task_command(result=...)`` names, written to
``docs/schema/agent/standbye.*.task-result.json`` (see
:mod:`teeth_agent.extensions.results`). docs/standbye.md and
docs/protocol.md describe the fields.
"""

from teeth_agent.extensions import results as r
from teeth_agent.extensions.standbye import uefi_boot
from teeth_agent.hardware import efi
from teeth_agent.images import cache
from teeth_agent.images import formats

_FORMAT = r.enum(formats.RAW, formats.GZIP, formats.XZ, formats.ZSTD,
                 formats.QCOW2)
_TEXT_OR_NULL = r.nullable(r.STRING)
_MODE = r.enum(*efi.BOOT_MODES)

CACHE_IMAGES = r.strict({
    "images": r.array(r.strict({
        "id": r.STRING,
        "status": r.enum(cache.CACHED, cache.ALREADY_CACHED, cache.SKIPPED,
                         cache.FAILED),
        "reason": r.STRING,
        "size": r.COUNT,
        "format": _FORMAT,
    }, required=["id", "status"], description=None) | {"allOf": [
        {"if": {"properties": {"status": {"const": cache.CACHED}}},
         "then": {"required": ["size", "format"]}},
        {"if": {"properties": {"status": {"enum": [cache.SKIPPED,
                                                   cache.FAILED]}}},
         "then": {"required": ["reason"]}}]}),
}, required=["images"], description=(
    "The result of standbye.cache_images, and the details of its error: "
    "every image of the list, in its order. Strict: the agent is the only "
    "producer."))

PREPARE_IMAGE = r.open_object({
    "image_id": r.STRING, "device": r.STRING,
    "source": r.enum("cache", "download"),
    "format": _FORMAT,
    "bytes_read": r.COUNT, "bytes_written": r.COUNT,
}, required=["image_id", "device", "source", "format"], description=(
    "The result of standbye.prepare_image (an error carries no details). "
    "Open: besides image_id, device and source, the keys are what the "
    "hardware manager's write_image answered (the generic one: format, "
    "bytes_read, bytes_written; bytes_read is absent for a staged qcow2 "
    "image)."))

_ENTRY = r.strict({"entry": r.STRING, "label": _TEXT_OR_NULL,
                   "partition_uuid": _TEXT_OR_NULL,
                   # An MBR partition's entry: the disk identifier (hex).
                   "mbr_signature": _TEXT_OR_NULL},
                  required=["entry", "label", "partition_uuid"])

_BOOT_LOADER = r.strict({
    "action": r.enum("left alone", "installed"),
    "found": r.STRING,
    "loader": r.REPORTED,
    "path": r.STRING,
    "partition": {"type": "integer"},
    "esp_created": r.BOOLEAN, "removable": r.BOOLEAN,
    "entry": _TEXT_OR_NULL,
}, required=["action"], description=(
    "BIOS: {action: \"left alone\", found: a sentence} or {action: "
    "\"installed\", loader: what install_boot_loader answered (\"grub\")}. "
    "UEFI: {action: \"left alone\", found: the loader's UEFI path, "
    "partition} or {action: \"installed\", loader, path, partition, "
    "esp_created, removable}; entry when a boot entry was set up.")) | {
    "allOf": [{"if": {"properties": {"action": {"const": "installed"}}},
               "then": {"required": ["loader"]},
               "else": {"required": ["found"]}}]}

_BOOT = r.strict({
    "method": r.enum(uefi_boot.KEXEC, uefi_boot.REBOOT),
    "reason": r.nullable(r.enum(*sorted(uefi_boot.REASONS))),
    "reason_text": _TEXT_OR_NULL,
    "mode": _MODE, "firmware_mode": _MODE,
    "secure_boot": r.nullable(r.BOOLEAN),
    "lockdown": _TEXT_OR_NULL,
    "entry": _TEXT_OR_NULL,
    "kexec_syscall": r.nullable(r.enum("kexec_file_load", "kexec_load")),
    "kernel_signed": r.nullable(r.BOOLEAN),
    "kernel": _TEXT_OR_NULL,
    "initrd": {"anyOf": [r.STRING, r.array(r.STRING), {"type": "null"}]},
    "cmdline": _TEXT_OR_NULL,
    "partition": {"type": "integer"},
    "source": r.STRING,
    "kexec_error": r.STRING,
    "boot_next": r.STRING, "boot_next_error": r.STRING,
}, required=["method", "reason", "reason_text", "mode", "firmware_mode",
             "secure_boot", "lockdown", "entry", "kexec_syscall",
             "kernel_signed", "kernel", "initrd", "cmdline"])

RUN_IMAGE = r.strict({
    "image_id": r.STRING, "device": r.STRING,
    "config_drive": r.strict({
        "partition": {"type": "integer"}, "node": r.STRING,
        "size": r.COUNT, "type": _TEXT_OR_NULL,
    }, required=["partition", "node", "size", "type"]),
    "boot_loader": _BOOT_LOADER,
    "boot": _BOOT,
    "boot_entries": r.nullable(r.strict({
        "entry": _TEXT_OR_NULL, "label": r.STRING, "loader": r.STRING,
        "removed": r.array(_ENTRY), "boot_order": r.array(r.STRING),
    }, required=["entry", "label", "loader", "removed", "boot_order"])),
}, required=["image_id", "device", "config_drive", "boot_loader", "boot",
             "boot_entries"], description=(
    "The result of standbye.run_image (an error carries no details). "
    "Strict: the extension builds every object; boot_loader.loader in BIOS "
    "mode is what the hardware manager's install_boot_loader answered."))
