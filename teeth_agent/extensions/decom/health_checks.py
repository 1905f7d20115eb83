"""decom.qc's health checks: ``smart``, ``memory_test``, ``stress`` and
``disk_read`` in the spec, run through the hardware managers, judged here.

Each key is optional; a spec without any of them runs none (qc stays the
quick inventory comparison it was). The managers return readings
(:mod:`teeth_agent.hardware.base`, "health"); the thresholds are applied
here so that every manager's readings are judged the same way. Every
check is ``{"name", "expected", "actual", "pass"}`` and its name starts
with its key; the readings themselves go into the result's ``health``.
"""

import logging

from teeth_agent import hardware
from teeth_agent.hardware import health
from teeth_agent import params

MIB = 1024 * 1024

SELF_TEST_MODES = ("required", "if_supported", "skip")

#: The spec's health keys and their shapes (docs/decom.md).
SHAPES = {
    "smart": params.Object(fields={
        "devices": params.List(params.DevicePath(), unique=True),
        "self_test": params.String(choices=SELF_TEST_MODES,
                                   default="required"),
        "max_reallocated_sectors": params.Integer(minimum=0, default=0),
        "max_pending_sectors": params.Integer(minimum=0, default=0),
        "max_uncorrectable_sectors": params.Integer(minimum=0, default=0),
        "max_media_errors": params.Integer(minimum=0, default=0),
        "max_percentage_used": params.Integer(minimum=0, maximum=255,
                                              default=90),
        "max_temperature_c": params.Integer(minimum=0, maximum=150),
    }),
    "memory_test": params.Object(fields={
        "size_bytes": params.Integer(minimum=MIB),
        "free_fraction": params.Number(minimum=0.001, maximum=0.95),
        "loops": params.Integer(minimum=1, maximum=1000, default=1),
    }),
    "stress": params.Object(fields={
        "seconds": params.Integer(minimum=1, maximum=7 * 86400,
                                  required=True),
        "memory_bytes": params.Integer(minimum=MIB, default=256 * MIB),
        "cpu_workers": params.Integer(minimum=0, maximum=4096, default=0),
        "max_temperature_c": params.Number(minimum=0, maximum=150),
        "max_throttle_events": params.Integer(minimum=0),
    }),
    "disk_read": params.Object(fields={
        "min_mbps": params.Number(minimum=0, required=True),
        "devices": params.List(params.DevicePath(), unique=True),
        "size_bytes": params.Integer(minimum=MIB),
        "seconds": params.Integer(minimum=1, maximum=7 * 86400),
    }),
}

KEYS = tuple(SHAPES)

LOG = logging.getLogger(__name__)

#: Rough durations (s) for the progress plan, before a run says more.
SELF_TEST_ESTIMATE = health.DEFAULT_SELF_TEST_SECONDS
READ_RATE_ESTIMATE = 150e6
MEMTEST_SECONDS_PER_MIB = 0.3


def check(name, expected, actual, passed):
    return {"name": name, "expected": expected, "actual": actual,
            "pass": bool(passed)}


def validate(spec):
    """Refuse what the shapes cannot say: ``memory_test`` needs exactly one
    of ``size_bytes`` and ``free_fraction``."""
    memory = spec.get("memory_test")
    if memory is not None:
        given = [key for key in ("size_bytes", "free_fraction")
                 if memory.get(key) is not None]
        if len(given) != 1:
            raise params.invalid("spec.memory_test",
                                 "needs exactly one of size_bytes and "
                                 "free_fraction")


class Plan:
    """The progress of a qc run: phases weighted by their expected
    seconds, reported to the task as one percent."""

    def __init__(self, task, weights):
        self.task = task
        self.weights = list(weights)
        self.total = float(sum(self.weights)) or 1.0
        self.done = 0.0
        self.index = 0

    def phase(self):
        """The progress callable of the next phase (a fraction of it)."""
        weight = self.weights[self.index]
        base = self.done
        self.index += 1
        self.done += weight

        def progress(fraction):
            fraction = min(max(fraction, 0.0), 1.0)
            self.task.progress(percent=100.0 * (base + weight * fraction)
                               / self.total)
        return progress


def _selected(devices, disks):
    """``[(path, BlockDevice or None)]``: the spec's ``devices`` (or every
    inventory disk), each with its inventory entry."""
    by_path = {disk["path"]: disk for disk in disks}
    if devices is None:
        return [(disk["path"], disk) for disk in disks]
    return [(path, by_path.get(path)) for path in devices]


def _weights(spec, found, device_lists):
    weights = [1.0]  # the inventory
    smart = spec.get("smart")
    if smart is not None:
        each = 2.0 + (0 if smart["self_test"] == "skip"
                      else SELF_TEST_ESTIMATE)
        weights += [each] * len(device_lists["smart"])
    read = spec.get("disk_read")
    if read is not None:
        for _, disk in device_lists["disk_read"]:
            size = read.get("size_bytes") or (disk or {}).get("size_bytes") \
                or MIB
            seconds = size / READ_RATE_ESTIMATE
            if read.get("seconds"):
                seconds = min(seconds, read["seconds"])
            weights.append(max(seconds, 1.0))
    memory = spec.get("memory_test")
    if memory is not None:
        size = memory.get("size_bytes") or int(
            ((found.get("memory") or {}).get("total_bytes") or 0)
            * memory["free_fraction"])
        weights.append(max(size / MIB * MEMTEST_SECONDS_PER_MIB
                           * memory["loops"], 1.0))
    if spec.get("stress") is not None:
        weights.append(float(spec["stress"]["seconds"]))
    return weights


def _ask(dispatcher, method, *args):
    """``(readings, None)`` or ``(None, one line saying why not)``."""
    LOG.info("qc: %s %s", method, " ".join(
        str(arg.get("path") if isinstance(arg, dict) else arg)
        for arg in args if not callable(arg)))
    try:
        return dispatcher.dispatch(method, *args), None
    except hardware.NoManagerError:
        return None, "no hardware manager runs this check (%s)" % method
    except hardware.DispatchError as exc:
        original = exc.original
        if isinstance(original, health.HealthCheckError):
            return None, str(original)
        return None, str(exc)


def _limit_checks(prefix, readings, limits):
    checks = []
    for key, reading in limits:
        value = readings.get(reading)
        if value is None:
            continue  # the drive does not report it (ATA vs NVMe)
        checks.append(check("%s.%s" % (prefix, reading), {"max": key},
                            value, value <= key))
    return checks


def smart_checks(path, disk, readings, error, spec):
    """The checks of one drive's SMART readings."""
    prefix = "smart[%s]" % path
    if disk is None:
        return [check(prefix + ".health", "PASSED",
                      "not a disk of this machine's inventory", False)]
    if error is not None:
        return [check(prefix + ".health", "PASSED", error, False)]
    if not readings.get("available"):
        return [check(prefix + ".health", "PASSED",
                      "SMART not available: %s" % readings.get("reason"),
                      False)]
    passed = readings.get("health_passed")
    checks = [check(prefix + ".health", "PASSED",
                    {True: "PASSED", False: "FAILED"}.get(passed,
                                                          "not reported"),
                    passed is True)]
    mode = spec["self_test"]
    if mode != "skip":
        test = readings.get("self_test") or {}
        supported = test.get("supported")
        checks.append(check(
            prefix + ".self_test", "completed without error",
            {"status": test.get("status"), "seconds": test.get("seconds"),
             "supported": bool(supported)},
            test.get("passed") is True or
            (not supported and mode == "if_supported")))
    checks += _limit_checks(prefix, readings, (
        (spec["max_reallocated_sectors"], "reallocated_sectors"),
        (spec["max_pending_sectors"], "pending_sectors"),
        (spec["max_uncorrectable_sectors"], "uncorrectable_sectors"),
        (spec["max_media_errors"], "media_errors"),
        (spec["max_percentage_used"], "percentage_used"),
    ))
    if spec.get("max_temperature_c") is not None:
        value = readings.get("temperature_c")
        checks.append(check(prefix + ".temperature_c",
                            {"max": spec["max_temperature_c"]}, value,
                            value is not None and
                            value <= spec["max_temperature_c"]))
    return checks


def memory_checks(spec, readings, error):
    expected = {key: spec[key] for key in ("size_bytes", "free_fraction",
                                           "loops")
                if spec.get(key) is not None}
    if error is not None:
        return [check("memory_test", expected, error, False)]
    failed = sorted(name for name, state in readings["tests"].items()
                    if state != "ok")
    actual = {"size_bytes": readings.get("size_bytes"),
              "tests": len(readings["tests"]), "failed_tests": failed,
              "failures": len(readings["failures"]),
              "locked": readings.get("locked"),
              "exit_status": readings.get("exit_status"),
              "seconds": readings.get("seconds")}
    return [check("memory_test", expected, actual,
                  readings.get("exit_status") == 0 and readings["tests"]
                  and not failed and not readings["failures"])]


def stress_checks(spec, readings, error):
    expected = {"seconds": spec["seconds"]}
    if error is not None:
        return [check("stress", expected, error, False)]
    ops = {row["stressor"]: row["bogo_ops"] for row in readings["stressors"]}
    actual = {"exit_status": readings["exit_status"],
              "seconds": readings["seconds"], "bogo_ops": ops,
              "failures": readings.get("failures") or [],
              "max_temperature_c": readings.get("max_temperature_c"),
              "throttle_events": readings.get("throttle_events")}
    checks = [check("stress", expected, actual,
                    readings["exit_status"] == 0 and ops and
                    all((value or 0) > 0 for value in ops.values()))]
    if spec.get("max_temperature_c") is not None:
        value = readings.get("max_temperature_c")
        checks.append(check("stress.max_temperature_c",
                            {"max": spec["max_temperature_c"]},
                            value if value is not None else
                            "no temperature is exposed by this platform",
                            value is not None and
                            value <= spec["max_temperature_c"]))
    if spec.get("max_throttle_events") is not None:
        value = readings.get("throttle_events")
        checks.append(check("stress.throttle_events",
                            {"max": spec["max_throttle_events"]},
                            value if value is not None else
                            "no throttle counter is exposed by this "
                            "platform",
                            value is not None and
                            value <= spec["max_throttle_events"]))
    return checks


def disk_read_checks(path, disk, spec, readings, error):
    name = "disk_read[%s]" % path
    expected = {"min_mbps": spec["min_mbps"]}
    if disk is None:
        return [check(name, expected,
                      "not a disk of this machine's inventory", False)]
    if error is not None:
        return [check(name, expected, error, False)]
    actual = {"mbps": readings["mbps"], "bytes": readings["bytes"],
              "seconds": readings["seconds"], "errors": readings["errors"]}
    return [check(name, expected, actual,
                  readings.get("exit_status") == 0 and not readings["errors"]
                  and readings["bytes"] > 0
                  and readings["mbps"] >= spec["min_mbps"])]


def run(dispatcher, task, spec, found):
    """Run the spec's health checks; return ``(checks, readings)``.

    The inventory (``found``) is already collected; progress over the whole
    qc run is reported to ``task``.
    """
    disks = list(found.get("disks") or [])
    device_lists = {
        key: _selected((spec.get(key) or {}).get("devices"), disks)
        for key in ("smart", "disk_read")}
    plan = Plan(task, _weights(spec, found, device_lists))
    plan.phase()(1.0)  # the inventory, done by the caller
    checks = []
    readings = {}
    smart = spec.get("smart")
    if smart is not None:
        readings["smart"] = {}
        for path, disk in device_lists["smart"]:
            progress = plan.phase()
            reading, error = (None, None)
            if disk is not None:
                reading, error = _ask(dispatcher, "get_smart_report", disk,
                                      smart["self_test"] != "skip", progress)
            readings["smart"][path] = reading
            checks += smart_checks(path, disk, reading, error, smart)
    read = spec.get("disk_read")
    if read is not None:
        readings["disk_read"] = {}
        for path, disk in device_lists["disk_read"]:
            progress = plan.phase()
            reading, error = (None, None)
            if disk is not None:
                size = read.get("size_bytes") or disk.get("size_bytes")
                if size is None:
                    error = "the device's size cannot be read"
                else:
                    reading, error = _ask(dispatcher, "run_disk_read_test",
                                          disk, min(size, disk.get(
                                              "size_bytes") or size),
                                          read.get("seconds"), progress)
            readings["disk_read"][path] = reading
            checks += disk_read_checks(path, disk, read, reading, error)
    memory = spec.get("memory_test")
    if memory is not None:
        reading, error = _ask(dispatcher, "run_memory_test",
                              memory.get("size_bytes"),
                              memory.get("free_fraction"), memory["loops"],
                              plan.phase())
        readings["memory_test"] = reading
        checks += memory_checks(memory, reading, error)
    stress = spec.get("stress")
    if stress is not None:
        reading, error = _ask(dispatcher, "run_stress_test",
                              stress["seconds"], stress["memory_bytes"],
                              stress["cpu_workers"], plan.phase())
        readings["stress"] = reading
        checks += stress_checks(stress, reading, error)
    return checks, readings
