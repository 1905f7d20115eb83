"""Quality control: the live inventory against a chassis model's spec.

The spec's shape is docs/protocol.md's (every key optional)::

    {"cpu": {"count": int, "model": regex},
     "memory": {"total_bytes": int, "tolerance": fraction (default 0.05)},
     "disks": [{"count": int, "size_bytes": int, "model": regex,
                "rotational": bool, "size_tolerance": fraction}],
     "nics": {"count": int, "min_speed_mbps": int},
     "smart": {...}, "memory_test": {...}, "stress": {...},
     "disk_read": {...}}

(the health keys, run by :mod:`.health_checks`; their shapes are there and
in docs/decom.md) plus vendor keys (any other top-level key) that hardware
managers check in ``run_qc_checks``. Unknown keys inside the core groups
are refused when the command is validated. Every check is ``{"name",
"expected", "actual", "pass"}``.
"""

import re

from teeth_agent.extensions.decom import health_checks
from teeth_agent import params

DEFAULT_MEMORY_TOLERANCE = 0.05
DEFAULT_SIZE_TOLERANCE = 0.0
CORE_KEYS = ("cpu", "memory", "disks", "nics") + health_checks.KEYS

DISK_GROUP = params.Object(fields={
    # Every key of the spec is optional (docs/protocol.md); a group without a
    # count asks for at least one matching disk.
    "count": params.Integer(minimum=0),
    "size_bytes": params.Integer(minimum=1),
    "size_tolerance": params.Number(minimum=0, maximum=1,
                                    default=DEFAULT_SIZE_TOLERANCE),
    "model": params.Regex(),
    "rotational": params.Boolean(),
})

#: The ``spec`` parameter of ``decom.qc``.
SPEC = params.Object(required=True, extra=True, fields={
    "cpu": params.Object(fields={
        "count": params.Integer(minimum=1),
        "model": params.Regex(),
    }),
    "memory": params.Object(fields={
        "total_bytes": params.Integer(minimum=1),
        "tolerance": params.Number(minimum=0, maximum=1,
                                   default=DEFAULT_MEMORY_TOLERANCE),
    }),
    "disks": params.List(DISK_GROUP),
    "nics": params.Object(fields={
        "count": params.Integer(minimum=0),
        "min_speed_mbps": params.Integer(minimum=0),
    }),
    **health_checks.SHAPES,
})


def check(name, expected, actual, passed):
    """One check in the result's shape."""
    return {"name": name, "expected": expected, "actual": actual,
            "pass": bool(passed)}


def vendor_keys(spec):
    """The spec's keys that no core check understands."""
    return sorted(key for key in spec if key not in CORE_KEYS)


def _cpu_checks(cpu, inventory):
    found = inventory.get("cpu") or {}
    checks = []
    if cpu.get("count") is not None:
        checks.append(check("cpu.count", cpu["count"], found.get("count"),
                            found.get("count") == cpu["count"]))
    if cpu.get("model") is not None:
        model = found.get("model")
        checks.append(check("cpu.model", cpu["model"], model,
                            model is not None
                            and re.search(cpu["model"], model)))
    return checks


def _memory_checks(memory, inventory):
    if memory.get("total_bytes") is None:
        return []
    expected = memory["total_bytes"]
    tolerance = memory.get("tolerance")
    if tolerance is None:
        tolerance = DEFAULT_MEMORY_TOLERANCE
    actual = (inventory.get("memory") or {}).get("total_bytes")
    passed = actual is not None and \
        abs(actual - expected) <= tolerance * expected
    return [check("memory.total_bytes",
                  {"total_bytes": expected, "tolerance": tolerance},
                  actual, passed)]


def disk_matches(group, disk):
    """Whether ``disk`` (inventory shape) fits a spec disk ``group``."""
    size = group.get("size_bytes")
    if size is not None:
        tolerance = group.get("size_tolerance") or 0.0
        actual = disk.get("size_bytes")
        if actual is None or abs(actual - size) > tolerance * size:
            return False
    if group.get("model") is not None:
        if disk.get("model") is None or not re.search(group["model"],
                                                      disk["model"]):
            return False
    if group.get("rotational") is not None:
        if disk.get("rotational") is not group["rotational"]:
            return False
    return True


def _describe_group(group):
    return {key: value for key, value in group.items()
            if value is not None and not (key == "size_tolerance"
                                          and not value)}


def _disk_checks(groups, inventory):
    """The disk checks: one per group, plus ``disks.unmatched``.

    Each disk counts for the first group it fits, in spec order, so
    overlapping groups (a catch-all after specific ones) work; disks that
    fit no group fail ``disks.unmatched``.
    """
    disks = list(inventory.get("disks") or [])
    assigned = [[] for _ in groups]
    unmatched = []
    for disk in disks:
        for index, group in enumerate(groups):
            if disk_matches(group, disk):
                assigned[index].append(disk["path"])
                break
        else:
            unmatched.append(disk["path"])
    checks = []
    for index, group in enumerate(groups):
        found = len(assigned[index])
        wanted = group.get("count")
        passed = found >= 1 if wanted is None else found == wanted
        checks.append(check("disks[%d].count" % index,
                            _describe_group(group),
                            {"count": found, "paths": assigned[index]},
                            passed))
    checks.append(check("disks.unmatched", [], unmatched, not unmatched))
    return checks


def _nic_checks(nics_spec, inventory):
    nics = list(inventory.get("nics") or [])
    checks = []
    if nics_spec.get("count") is not None:
        checks.append(check("nics.count", nics_spec["count"], len(nics),
                            len(nics) == nics_spec["count"]))
    minimum = nics_spec.get("min_speed_mbps")
    if minimum is not None:
        speeds = {nic.get("name"): nic.get("speed_mbps") for nic in nics}
        slow = {name: speed for name, speed in speeds.items()
                if speed is None or speed < minimum}
        checks.append(check("nics.min_speed_mbps", minimum, speeds,
                            bool(nics) and not slow))
    return checks


def core_checks(spec, inventory):
    """The checks of the spec's core keys against ``inventory``."""
    checks = []
    checks += _cpu_checks(spec.get("cpu") or {}, inventory)
    checks += _memory_checks(spec.get("memory") or {}, inventory)
    if spec.get("disks") is not None:
        checks += _disk_checks(spec["disks"], inventory)
    checks += _nic_checks(spec.get("nics") or {}, inventory)
    return checks


def _covers(check_name, key):
    return check_name == key or check_name.startswith((key + ".", key + "["))


def unchecked_vendor_keys(spec, checks):
    """Vendor keys that no manager's check is named after.

    A check covers key ``k`` when its name is ``k`` or starts with ``k.``
    or ``k[``; a key nobody checked fails, so a typo in the spec or a
    missing vendor manager cannot pass unnoticed.
    """
    return [check("%s" % key, spec[key],
                  "no hardware manager checks this key", False)
            for key in vendor_keys(spec)
            if not any(_covers(str(c.get("name")), key) for c in checks)]


def failed(checks):
    return [c for c in checks if not c.get("pass")]


def describe_failures(checks):
    """One line per failed check: ``name: expected X, found Y``."""
    return ["%s: expected %s, found %s" % (c.get("name"),
                                           _text(c.get("expected")),
                                           _text(c.get("actual")))
            for c in failed(checks)]


def _text(value):
    if isinstance(value, dict) and set(value) == {"total_bytes",
                                                  "tolerance"}:
        return "%s +/- %g%%" % (value["total_bytes"],
                                100 * value["tolerance"])
    if isinstance(value, dict) and set(value) == {"max"}:
        return "at most %s" % value["max"]
    if isinstance(value, dict) and set(value) == {"min_mbps"}:
        return "at least %s MB/s" % value["min_mbps"]
    return repr(value) if isinstance(value, str) else str(value)
