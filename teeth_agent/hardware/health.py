"""Health checks of a machine going back into the pool: SMART, a memory test,
a CPU and memory stress run and a disk read test.

The generic hardware manager runs the tools (``smartctl``, ``memtester``,
``stress-ng``, ``fio``) through :mod:`teeth_agent.processes` and reads their
machine-readable output (``smartctl -j``, ``fio --output-format=json``,
``stress-ng --yaml``; memtester has none, its report lines are parsed). This
module turns that output into *readings*, plain dicts; the thresholds that
make a reading pass or fail belong to :mod:`teeth_agent.extensions.decom.qc`,
so a vendor manager that reads the same facts another way (a BMC, a vendor
tool) only has to return readings of the same shape
(``docs/hardware-managers.md``).

Long runs report progress as a fraction through a ``progress`` callable; a
run is watched from the calling thread while the tool works, so progress
and the agent's link keep going.
"""

import json
import os
import re
import tempfile
import threading
import time

import yaml

from teeth_agent import processes

#: How often a long tool run reports progress (seconds).
TICK = 1.0

#: SMART attribute ids read from ATA drives.
ATA_REALLOCATED = 5
ATA_PENDING = 197
ATA_UNCORRECTABLE = 198

#: smartctl's exit status is a bit mask (smartctl(8), "RETURN VALUES"):
#: bits 0-2 mean the command line, the device open or a command failed,
#: so the rest of the output cannot be trusted.
SMARTCTL_FATAL_BITS = 0x07

#: Self-test results in smartctl's JSON: ATA status values 0 and NVMe
#: result 0 mean "completed without error".
SELF_TEST_OK = 0

#: The short self-test's usual length when the drive does not say (s).
DEFAULT_SELF_TEST_SECONDS = 120


class HealthCheckError(Exception):
    """A health tool could not be run or its output not be read."""


def _watch(work, expected_seconds, progress, timeout):
    """Run ``work()`` in a thread; report elapsed/expected as progress.

    Returns what ``work`` returned and re-raises what it raised. The
    fraction reported never reaches 1 before the work ends (an estimate
    that is too short stays at 0.99).
    """
    outcome = {}

    def run():
        try:
            outcome["value"] = work()
        except Exception as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="health-check", daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(TICK)
        if progress is not None and expected_seconds:
            elapsed = time.monotonic() - started
            progress(min(elapsed / expected_seconds, 0.99))
        if timeout is not None and time.monotonic() - started > timeout \
                and thread.is_alive():
            # The tool itself has the same timeout (processes.run kills it);
            # this only guards against a wedged reader.
            thread.join(TICK * 5)
            if thread.is_alive():
                raise HealthCheckError("the check did not end within %ds"
                                       % timeout)
    if "error" in outcome:
        raise outcome["error"]
    if progress is not None:
        progress(1.0)
    return outcome.get("value")


def _require(program):
    if processes.which(program) is None:
        raise HealthCheckError("%s is not installed in this ramdisk"
                               % program)


# -- SMART ----------------------------------------------------------------

def _smartctl_json(*args, timeout=120):
    _require("smartctl")
    returncode, stdout, stderr = processes.run("smartctl", "-j", *args,
                                               timeout=timeout)
    try:
        document = json.loads(stdout or "{}")
    except ValueError:
        raise HealthCheckError("smartctl printed no JSON: %s"
                               % (stderr or stdout or "").strip()[:200]) \
            from None
    if not isinstance(document, dict):
        raise HealthCheckError("smartctl printed JSON that is not an object")
    return returncode, document


def smartctl_messages(document):
    """The error messages smartctl put in its JSON, as one line."""
    messages = (document.get("smartctl") or {}).get("messages") or []
    texts = [str(m.get("string")) for m in messages
             if isinstance(m, dict) and m.get("severity") == "error"]
    return "; ".join(texts)


def smartctl_version(document):
    version = (document.get("smartctl") or {}).get("version")
    if isinstance(version, list) and version:
        return "smartctl %s" % ".".join(str(part) for part in version)
    return "smartctl"


def _ata_attribute(document, attribute_id):
    table = (document.get("ata_smart_attributes") or {}).get("table") or []
    for row in table:
        if isinstance(row, dict) and row.get("id") == attribute_id:
            raw = row.get("raw") or {}
            value = raw.get("value")
            return value if isinstance(value, int) else None
    return None


def _number(value):
    return value if isinstance(value, (int, float)) and \
        not isinstance(value, bool) else None


def parse_smart(document, returncode=0):
    """Readings from ``smartctl -j -H -A -i`` output.

    ``{"available", "reason", "protocol", "model", "serial",
    "health_passed", "reallocated_sectors", "pending_sectors",
    "uncorrectable_sectors", "media_errors", "percentage_used",
    "temperature_c", "power_on_hours", "tool"}``; a value the drive does not
    report is None. ``available`` is False (with ``reason``) when smartctl
    could not talk to the device or the device has no SMART.
    """
    device = document.get("device") or {}
    support = document.get("smart_support") or {}
    reason = None
    if returncode & SMARTCTL_FATAL_BITS and "smart_status" not in document:
        reason = smartctl_messages(document) or \
            "smartctl exited with status %d" % returncode
    elif support and not (support.get("available") and
                          support.get("enabled", True)):
        reason = "SMART is not available or not enabled on this device"
    elif "smart_status" not in document:
        reason = smartctl_messages(document) or \
            "smartctl reported no SMART health status"
    status = document.get("smart_status") or {}
    nvme = document.get("nvme_smart_health_information_log") or {}
    temperature = (document.get("temperature") or {}).get("current")
    return {
        "available": reason is None,
        "reason": reason,
        "protocol": device.get("protocol"),
        "model": document.get("model_name"),
        "serial": document.get("serial_number"),
        "health_passed": status.get("passed") if reason is None else None,
        "reallocated_sectors": _ata_attribute(document, ATA_REALLOCATED),
        "pending_sectors": _ata_attribute(document, ATA_PENDING),
        "uncorrectable_sectors": _ata_attribute(document, ATA_UNCORRECTABLE),
        "media_errors": _number(nvme.get("media_errors")),
        "percentage_used": _number(nvme.get("percentage_used")),
        "temperature_c": _number(temperature),
        "power_on_hours": _number(
            (document.get("power_on_time") or {}).get("hours")),
        "tool": smartctl_version(document),
    }


def self_test_state(document):
    """``(running, fraction_done, result)`` from ``smartctl -j -c -l
    selftest`` output: ``result`` is None while a test runs or when no test
    was logged, else ``{"passed", "status"}`` of the newest test."""
    nvme_log = document.get("nvme_self_test_log")
    if isinstance(nvme_log, dict):
        current = (nvme_log.get("current_self_test_operation") or {})
        if current.get("value"):
            done = _number(nvme_log.get("current_self_test_completion_"
                                        "percent")) or 0
            return True, done / 100.0, None
        table = nvme_log.get("table") or []
        if not table:
            return False, 1.0, None
        newest = table[0].get("self_test_result") or {}
        return False, 1.0, {"passed": newest.get("value") == SELF_TEST_OK,
                            "status": newest.get("string")}
    ata = (document.get("ata_smart_data") or {}).get("self_test") or {}
    status = ata.get("status") or {}
    value = status.get("value")
    if isinstance(value, int) and value >> 4 == 0x0f:
        remaining = _number(status.get("remaining_percent")) or 0
        return True, 1.0 - remaining / 100.0, None
    log = ((document.get("ata_smart_self_test_log") or {})
           .get("standard") or {}).get("table") or []
    if log:
        newest = log[0].get("status") or {}
        return False, 1.0, {"passed": bool(newest.get("passed")),
                            "status": newest.get("string")}
    if isinstance(value, int):
        return False, 1.0, {"passed": value == SELF_TEST_OK,
                            "status": status.get("string")}
    return False, 1.0, None


def expected_self_test_seconds(document):
    """The drive's own estimate of its short self-test, in seconds."""
    minutes = (((document.get("ata_smart_data") or {}).get("self_test")
                or {}).get("polling_minutes") or {}).get("short")
    if isinstance(minutes, int) and minutes > 0:
        return minutes * 60
    return DEFAULT_SELF_TEST_SECONDS


def run_self_test(path, progress=None, timeout=900, poll=5.0,
                  sleep=time.sleep, clock=time.monotonic):
    """Start a short self-test on ``path`` and wait for its result.

    Returns ``{"supported", "passed", "status", "seconds"}``; a drive that
    refuses the test gives ``supported`` False and the reason in
    ``status``.
    """
    returncode, started_doc = _smartctl_json("-t", "short", path)
    if returncode & SMARTCTL_FATAL_BITS:
        return {"supported": False, "passed": None,
                "status": smartctl_messages(started_doc) or
                "the drive refused to start a self-test",
                "seconds": None}
    expected = expected_self_test_seconds(started_doc)
    started = clock()
    while True:
        sleep(poll)
        _, document = _smartctl_json("-c", "-l", "selftest", path)
        running, fraction, result = self_test_state(document)
        elapsed = clock() - started
        if not running:
            if result is None:
                return {"supported": False, "passed": None,
                        "status": "the drive logged no self-test result",
                        "seconds": round(elapsed, 1)}
            return dict(result, supported=True, seconds=round(elapsed, 1))
        if progress is not None:
            progress(min(max(fraction, elapsed / expected), 0.99))
        if elapsed > timeout:
            # Leave the drive as it was found: abort the test.
            processes.run("smartctl", "-X", path, timeout=60)
            return {"supported": True, "passed": False,
                    "status": "the self-test did not end within %ds"
                    % timeout, "seconds": round(elapsed, 1)}


def smart_report(path, self_test=True, progress=None, timeout=900):
    """Everything the ``smart`` checks need about one drive: the readings
    of :func:`parse_smart` plus ``self_test`` (see :func:`run_self_test`,
    or None when not asked or SMART is unavailable)."""
    returncode, document = _smartctl_json("-H", "-A", "-i", path)
    readings = parse_smart(document, returncode)
    readings["self_test"] = None
    if self_test and readings["available"]:
        readings["self_test"] = run_self_test(path, progress=progress,
                                              timeout=timeout)
    return readings


# -- memory test -----------------------------------------------------------

_BACKSPACES = re.compile(r".\x08|\x08")
_RESULT_LINE = re.compile(r"^\s*(?P<name>[A-Za-z0-9 -]+?)\s*:\s*(?P<rest>.*)$")


def _strip_backspaces(text):
    previous = None
    while previous != text:
        previous = text
        text = _BACKSPACES.sub("", text)
    return text


def parse_memtester(output, returncode):
    """Readings from memtester's report: ``{"tests": {name: "ok" |
    "failed"}, "failures": [lines], "locked", "exit_status"}``."""
    tests = {}
    failures = []
    locked = None
    for raw in output.splitlines():
        line = _strip_backspaces(raw).rstrip()
        if "FAILURE" in line:
            failures.append(line.strip()[:200])
        if "trying mlock" in line:
            locked = line.endswith("locked.")
        match = _RESULT_LINE.match(line)
        if not match or match.group("name").startswith(("Loop", "want",
                                                        "got")):
            continue
        rest = match.group("rest").strip()
        if rest.endswith("ok"):
            tests[match.group("name")] = "ok"
        elif "FAILURE" in rest:
            tests[match.group("name")] = "failed"
    return {"tests": tests, "failures": failures[:50], "locked": locked,
            "exit_status": returncode}


def memory_test(size_bytes, loops=1, progress=None, timeout=None):
    """Run memtester over ``size_bytes`` for ``loops`` passes."""
    _require("memtester")
    mebibytes = max(1, size_bytes // (1024 * 1024))
    # memtester's 17 patterns take about 0.3 s per MiB and pass on a busy
    # core (measured: 32 MiB in 13 s): the progress bar's estimate, and
    # with a wide margin the bound of the run.
    expected = max(2.0, mebibytes * 0.3 * loops)
    if timeout is None:
        timeout = int(expected * 20 + 600)
    started = time.monotonic()
    returncode, stdout, stderr = _watch(
        lambda: processes.run("memtester", "%dM" % mebibytes, str(loops),
                              timeout=timeout),
        expected, progress, timeout)
    readings = parse_memtester(stdout + "\n" + stderr, returncode)
    readings.update(size_bytes=mebibytes * 1024 * 1024, loops=loops,
                    seconds=round(time.monotonic() - started, 1),
                    tool=_memtester_version(stdout))
    return readings


def _memtester_version(output):
    match = re.search(r"memtester version ([0-9][0-9.]*)", output or "")
    return "memtester %s" % match.group(1) if match else "memtester"


# -- stress ----------------------------------------------------------------

def parse_stress_yaml(text):
    """The stressor metrics and thermal zones of ``stress-ng --yaml``."""
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise HealthCheckError("stress-ng wrote YAML that cannot be read: %s"
                               % str(exc).splitlines()[0]) from None
    if not isinstance(document, dict):
        raise HealthCheckError("stress-ng wrote YAML that is not a mapping")
    stressors = []
    for row in document.get("metrics") or []:
        if isinstance(row, dict):
            stressors.append({"stressor": str(row.get("stressor")),
                              "bogo_ops": _number(row.get("bogo-ops")),
                              "seconds": _number(row.get("wall-clock-time"))})
    zones = document.get("thermal-zones") or []
    temperatures = []
    for zone in zones if isinstance(zones, list) else []:
        if isinstance(zone, dict):
            for name, value in zone.items():
                if _number(value) is not None:
                    temperatures.append({"zone": str(name),
                                         "celsius": float(value)})
    version = (document.get("system-info") or {}).get("stress-ng-version")
    return {"stressors": stressors, "thermal_zones": temperatures,
            "tool": "stress-ng %s" % version if version else "stress-ng"}


def read_thermal(sys_root):
    """The hottest thermal zone now (Celsius), or None when none is
    exposed."""
    base = os.path.join(sys_root, "class", "thermal")
    hottest = None
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None
    for name in names:
        if not name.startswith("thermal_zone"):
            continue
        try:
            with open(os.path.join(base, name, "temp")) as f:
                value = int(f.read().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        hottest = value if hottest is None else max(hottest, value)
    return hottest


def read_throttle_events(sys_root):
    """The sum of the CPUs' thermal throttle counters, or None when the
    platform exposes none (``/sys/devices/system/cpu/cpu*/thermal_throttle``,
    Intel's ``core_throttle_count`` and ``package_throttle_count``)."""
    base = os.path.join(sys_root, "devices", "system", "cpu")
    total = None
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None
    for name in names:
        if not re.fullmatch(r"cpu[0-9]+", name):
            continue
        directory = os.path.join(base, name, "thermal_throttle")
        for counter in ("core_throttle_count", "package_throttle_count"):
            try:
                with open(os.path.join(directory, counter)) as f:
                    value = int(f.read().strip())
            except (OSError, ValueError):
                continue
            total = value if total is None else total + value
    return total


def stress(seconds, memory_bytes, cpu_workers=0, progress=None,
           sys_root="/sys"):
    """Run stress-ng's CPU and VM stressors for ``seconds``, watching the
    temperature and the throttle counters. ``cpu_workers`` 0 means one per
    online CPU."""
    _require("stress-ng")
    throttle_before = read_throttle_events(sys_root)
    hottest = [read_thermal(sys_root)]
    with tempfile.TemporaryDirectory(prefix="teeth-stress-") as directory:
        report = os.path.join(directory, "report.yaml")
        argv = ["stress-ng", "--cpu", str(cpu_workers), "--vm", "1",
                "--vm-bytes", "%d" % max(memory_bytes, 4096),
                "--timeout", "%ds" % seconds, "--metrics-brief", "--verify",
                "--tz", "--yaml", report]

        def sample(fraction):
            now = read_thermal(sys_root)
            if now is not None:
                hottest.append(now)
            if progress is not None:
                progress(fraction)

        started = time.monotonic()
        returncode, stdout, stderr = _watch(
            lambda: processes.run(*argv, timeout=seconds + 300),
            seconds, sample, seconds + 300)
        elapsed = time.monotonic() - started
        try:
            with open(report) as f:
                readings = parse_stress_yaml(f.read())
        except FileNotFoundError:
            readings = {"stressors": [], "thermal_zones": [],
                        "tool": "stress-ng"}
    throttle_after = read_throttle_events(sys_root)
    seen = [t for t in hottest if t is not None] + \
        [zone["celsius"] for zone in readings["thermal_zones"]]
    failed = [line.strip()[:200] for line in (stderr or "").splitlines()
              if " fail" in line.lower() or "error" in line.lower()]
    readings.update(
        exit_status=returncode, seconds=round(elapsed, 1),
        max_temperature_c=max(seen) if seen else None,
        throttle_events=(None if throttle_after is None else
                         throttle_after - (throttle_before or 0)),
        failures=failed[:20])
    return readings


# -- disk read -------------------------------------------------------------

def parse_fio(text):
    """``{"bytes", "seconds", "mbps", "errors", "tool"}`` of the first job
    of ``fio --output-format=json``."""
    start = text.find("{")
    try:
        document = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        document = None
    if not isinstance(document, dict) or not document.get("jobs"):
        raise HealthCheckError("fio printed no JSON report")
    job = document["jobs"][0]
    read = job.get("read") or {}
    runtime_ms = _number(read.get("runtime")) or 0
    io_bytes = _number(read.get("io_bytes")) or 0
    bandwidth = _number(read.get("bw_bytes"))
    if bandwidth is None and runtime_ms:
        bandwidth = io_bytes / (runtime_ms / 1000.0)
    return {"bytes": io_bytes, "seconds": round(runtime_ms / 1000.0, 3),
            "mbps": round((bandwidth or 0) / 1e6, 1),
            "errors": _number(job.get("error")),
            "tool": str(document.get("fio version") or "fio")}


def disk_read(path, size_bytes, seconds=None, progress=None,
              assumed_rate=100e6):
    """Read ``size_bytes`` of ``path`` sequentially with O_DIRECT (fio,
    ``--readonly`` so fio itself refuses any write), at most ``seconds``
    when given."""
    _require("fio")
    argv = ["fio", "--name=teeth-disk-read", "--filename=%s" % path,
            "--readonly", "--rw=read", "--bs=1M", "--direct=1",
            "--ioengine=psync", "--size=%d" % size_bytes,
            "--output-format=json"]
    if seconds:
        argv.append("--runtime=%d" % seconds)
    expected = size_bytes / assumed_rate
    if seconds:
        expected = min(expected, seconds)
    timeout = int((seconds or expected * 50) + 600)
    returncode, stdout, stderr = _watch(
        lambda: processes.run(*argv, timeout=timeout), expected, progress,
        timeout)
    if returncode != 0 and "{" not in (stdout or ""):
        lines = (stderr or "").strip().splitlines() or ["no output"]
        raise HealthCheckError("fio failed: %s" % lines[-1][:200])
    readings = parse_fio(stdout)
    readings["exit_status"] = returncode
    return readings
