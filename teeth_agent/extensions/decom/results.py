"""What the ``decom`` tasks hold in ``result`` (and in ``details`` when
they fail): the declarations their ``@base.task_command(result=...)``
names, written to ``docs/schema/agent/decom.*.task-result.json`` (see
:mod:`teeth_agent.extensions.results`). docs/decom.md and
docs/protocol.md describe the fields.
"""

from teeth_agent.extensions import results as r
from teeth_agent.hardware import erase
from teeth_agent.hardware import evidence

_CATEGORY = r.enum(erase.CLEAR, erase.PURGE)
_TEXT_OR_NULL = r.nullable(r.STRING)
_INTEGER_OR_NULL = r.nullable({"type": "integer"})

#: A disk the erase did not touch: refused by the safety rules
#: (``skipped``) or out of scope by configuration (``excluded``).
_ACCOUNTED = r.strict({
    "path": r.STRING,
    "outcome": r.enum("skipped", "excluded"),
    "reason": r.STRING, "detail": r.STRING,
    # A namespace deleted by the reset shares the entry of the one that
    # replaced it.
    "covered_by": r.STRING, "namespaces": {},
}, required=["path", "outcome", "reason", "detail"],
    description="A disk nothing was written to: skipped (in scope, refused "
                "by the safety rules; reason is one word) or excluded (by "
                "[hardware] device_include / device_exclude).")

_NAMESPACES = r.strict({
    "controller": r.STRING, "namespaces": r.COUNT,
    "reset": r.BOOLEAN, "detail": r.STRING,
    "steps": r.array(r.open_object(description=(
        "A step of the hardware manager's namespace reset (open: the "
        "manager's own report)."))),
    "namespace": r.STRING, "size_bytes": _INTEGER_OR_NULL,
    # Not reset: why nothing was deleted (a namespace in use).
    "refused": r.STRING,
    # Erased namespace by namespace: the capacity outside them stays.
    "note": r.STRING,
    # A reset that failed after it started: the namespaces left.
    "left_with": r.array(r.STRING),
}, required=["controller", "namespaces", "reset"],
    description="An NVMe drive with several namespaces: whether they were "
                "reset to one covering the drive, and how.")

#: The erase evidence record of one device (``erased`` or ``failed``).
EVIDENCE_RECORD = {
    "type": "object",
    "description": "The erase evidence record of one device (docs/decom.md "
                   "\"Erasure evidence\"). Strict: the extension builds it "
                   "whatever hardware manager erased; the manager's answer "
                   "only fills in values.",
    "properties": {
        "path": r.STRING,
        "outcome": r.enum("erased", "failed"),
        "method": _TEXT_OR_NULL,
        "nist_category": r.nullable(_CATEGORY),
        "required_nist_category": r.nullable(_CATEGORY),
        "purge_offered": r.nullable(r.BOOLEAN),
        "category_note": r.STRING,
        "duration_s": r.nullable({"type": "number", "minimum": 0}),
        "bytes": r.COUNT,
        "verified": r.BOOLEAN,
        "blocks_checked": r.COUNT,
        "verify_problems": r.array(r.STRING),
        "skipped_methods": r.array(r.strict(
            {"method": r.STRING, "reason": r.STRING},
            required=["method", "reason"])),
        "downgraded_from": r.STRING,
        "error": r.STRING,
        "serial": _TEXT_OR_NULL, "model": _TEXT_OR_NULL,
        "wwn": _TEXT_OR_NULL, "firmware": _TEXT_OR_NULL,
        "size_bytes": _INTEGER_OR_NULL,
        "logical_sector_size": _INTEGER_OR_NULL,
        "verification": r.strict({
            "read_back": _TEXT_OR_NULL, "samples": r.COUNT,
            "result": r.enum("passed", "failed", "not_run"),
        }, required=["read_back", "samples", "result"]),
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": r.nullable({"type": "string", "format": "date-time"}),
        "tool": _TEXT_OR_NULL, "tool_version": _TEXT_OR_NULL,
        "agent_version": r.STRING, "agent_id": _TEXT_OR_NULL,
        "teardown": r.array(r.open_object(description=(
            "A layer dismantled before the erase, as the hardware manager "
            "reports it (open): layer, kind, command, result."))),
        "namespaces": _NAMESPACES,
        "covered_by": r.STRING,
        evidence.FINGERPRINT: r.STRING,
        evidence.SIGNATURE: r.STRING,
    },
    "required": ["path", "outcome", "method", "nist_category",
                 "required_nist_category", "purge_offered", "duration_s",
                 "bytes", "verified", "skipped_methods", "serial", "model",
                 "wwn", "firmware", "size_bytes", "logical_sector_size",
                 "verification", "started_at", "ended_at", "tool",
                 "tool_version", "agent_version", "agent_id", "teardown"],
    "additionalProperties": False,
    "allOf": [{"if": {"properties": {"outcome": {"const": "failed"}}},
               "then": {"required": ["error"]}},
              {"if": {"required": [evidence.SIGNATURE]},
               "then": {"required": [evidence.FINGERPRINT]}}],
}

DISK_ERASE = r.strict({
    "devices": r.array({"anyOf": [EVIDENCE_RECORD, _ACCOUNTED]}),
    "boot_entries_removed": r.array(r.strict({
        "entry": r.STRING, "label": _TEXT_OR_NULL,
        "partition_uuid": _TEXT_OR_NULL,
        # An entry of an MBR partition: the disk's identifier (hex).
        "mbr_signature": _TEXT_OR_NULL,
    }, required=["entry", "label", "partition_uuid"])),
    "boot_entries_error": r.STRING,
    "not_erased": r.array(r.STRING),
}, required=["devices"], description=(
    "The result of decom.disk_erase, and the details of its error (which "
    "add not_erased). Strict: the extension is the only producer."))

_SETTING = r.strict({
    "before": r.REPORTED, "requested": r.ANY, "after": r.REPORTED,
    "changed": r.BOOLEAN, "pending": r.BOOLEAN,
}, required=["before", "requested", "after", "changed", "pending"])

FIRMWARE_SECURE = r.strict({
    "firmware": r.array(r.strict({
        "component": r.STRING, "before": r.REPORTED,
        "target": r.STRING, "after": r.REPORTED,
        "action": r.enum("updated", "skipped", "failed", "not_attempted"),
        "reason": r.STRING,
        "details": r.open_object(description=(
            "What the hardware manager's update_firmware answered (open).")),
    }, required=["component", "before", "target", "after", "action"])),
    "bios_settings": {"type": "object", "additionalProperties": _SETTING},
    "secure_boot": r.nullable(r.open_object(description=(
        "The hardware manager's get_secure_boot_state (open); null when no "
        "manager can read it."))),
}, required=["firmware", "bios_settings", "secure_boot"], description=(
    "The result of decom.firmware_secure, and the details of its error. "
    "Strict at the top and per component; what the hardware managers "
    "report (versions, settings, the Secure Boot state) is passed on."))

_CHECK = r.open_object({
    "name": r.STRING, "expected": r.ANY, "actual": r.ANY,
    "pass": r.BOOLEAN,
}, required=["name"], description=(
    "One check: the core and health checks have exactly name, expected, "
    "actual and pass; a hardware manager's run_qc_checks may add keys "
    "(open)."))

QC = r.strict({
    "inventory": r.open_object({
        "system": r.ANY, "cpu": r.ANY, "memory": r.ANY,
        "disks": r.ANY, "nics": r.ANY,
    }, required=["system", "cpu", "memory", "disks", "nics"],
        description="The inventory (docs/protocol.md \"Inventory\"); its "
                    "values are what the hardware managers report (open)."),
    "checks": r.array(_CHECK),
    "health": r.strict({
        "smart": {"type": "object", "additionalProperties": r.REPORTED},
        "disk_read": {"type": "object",
                      "additionalProperties": r.REPORTED},
        "memory_test": r.REPORTED, "stress": r.REPORTED,
    }, description="The readings of the spec's health checks, by key "
                   "(each reading as the hardware manager reports it, "
                   "null when it could not be read)."),
}, required=["inventory", "checks"], description=(
    "The result of decom.qc, and the details of its error."))
