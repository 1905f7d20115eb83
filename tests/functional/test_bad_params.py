"""Every command of every loaded extension, fed bad parameters.

A real agent loads ``testing``, ``decom`` and ``standbye`` (those that are
installed). The table of bad inputs is built from each command's declared
parameters (missing, wrong type, null, out of range, too long, path
traversal in ids and device paths, unknown keys, huge values, one level deep
into lists, objects and maps) plus hand-written cases for the checks that
the commands' validators make against the machine. Each must be answered
``InvalidParams`` naming the parameter, and nothing may change: no task is
created, no state file is written and, as root, the loop devices that are
the only devices the agent may see keep their exact content.
"""

import hashlib
import os
import sys
import unittest
import uuid

from importlib import metadata

from teeth_agent import params
from tests.functional import harness
from tests.functional import loopdev

NAMESPACE = "teeth_agent.extensions"
WANTED = ("testing", "decom", "standbye")
HUGE_STRING_LENGTH = 512 * 1024  # well past any limit, under the line limit
SAMPLE_UUID = "0b9c6d4e-3f55-4a8e-9d1c-5a7e2f3b4c6d"


def load_specs(names):
    """``{wire name: CommandSpec}`` of the named extensions' commands."""
    if harness.PLUGINS_DIR not in sys.path:
        sys.path.append(harness.PLUGINS_DIR)
    specs = {}
    for entry in metadata.entry_points(group=NAMESPACE):
        if entry.name not in names:
            continue
        for spec in entry.load().command_specs().values():
            specs["%s.%s" % (entry.name, spec.name)] = spec
    return specs


def sample(param):
    """A value ``param`` accepts, to fill the required neighbours of the
    parameter under test."""
    if isinstance(param, params.UUID):
        return SAMPLE_UUID
    if isinstance(param, params.URL):
        return "http://127.0.0.1:9/image"
    if isinstance(param, params.DevicePath):
        return "/dev/teeth-no-such-device"
    if isinstance(param, params.Identifier):
        return "sample-1"
    if isinstance(param, params.String):
        return param.choices[0] if param.choices else "x" * max(
            param.min_length, 1)
    if isinstance(param, params.Boolean):
        return False
    if isinstance(param, params.Integer):
        return param.minimum if param.minimum is not None else 1
    if isinstance(param, params.List):
        return [sample(param.item)] * param.min_items
    if isinstance(param, params.Object):
        return {name: sample(field) for name, field in param.fields.items()
                if field.required}
    if isinstance(param, params.Map):
        return {}
    return {}


def bad_values(param, path):
    """``(label, value, path the error must name)`` for ``param``."""
    if not param.nullable:
        yield "null", None, path
    for kind, generate in ((params.String, _bad_strings),
                           (params.Boolean, _bad_booleans),
                           (params.Integer, _bad_numbers),
                           (params.List, _bad_lists),
                           (params.Object, _bad_objects),
                           (params.Map, _bad_maps)):
        if isinstance(param, kind):
            yield from generate(param, path)
            return


def _bad_strings(param, path):
    yield "wrong type", 12345, path
    if param.max_length < HUGE_STRING_LENGTH:
        yield "huge", "x" * HUGE_STRING_LENGTH, path
    if param.min_length > 0:
        yield "empty", "", path
    if param.choices:
        yield "not a choice", "no-such-choice", path
    if isinstance(param, (params.Identifier, params.UUID)):
        for traversal in ("../../etc/passwd", "a/../../b", "..",
                          "/etc/passwd", "id\x00nul"):
            yield "traversal %r" % traversal, traversal, path
    if isinstance(param, params.DevicePath):
        for traversal in ("/dev/../etc/passwd", "/etc/passwd",
                          "/dev/loop*", "/dev/./sda"):
            yield "device %r" % traversal, traversal, path
    if isinstance(param, params.URL):
        for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "http://",
                    "javascript:alert(1)"):
            yield "url %r" % url, url, path
    if isinstance(param, params.Regex):
        yield "bad regex", "(unclosed", path


def _bad_booleans(param, path):
    yield "wrong type", "yes", path
    yield "number", 1, path


def _bad_numbers(param, path):
    yield "wrong type", "12", path
    yield "boolean", True, path
    if not isinstance(param, params.Number):
        yield "fraction", 1.5, path
    if param.minimum is not None:
        yield "below minimum", param.minimum - 1, path
    if param.maximum is not None:
        yield "above maximum", param.maximum + 1, path
        yield "huge", 10 ** 400, path


def _bad_lists(param, path):
    yield "wrong type", "not-a-list", path
    if param.min_items:
        yield "too few", [], path
    yield "huge", [sample(param.item)] * (param.max_items + 1), path
    for label, value, where in bad_values(param.item, path + "[0]"):
        yield "item " + label, [value], where


def _bad_objects(param, path):
    yield "wrong type", ["not", "an", "object"], path
    base = sample(param)
    if param.extra is False:
        yield "unknown key", dict(base, bogus_key=1), path + ".bogus_key"
    for name, field in param.fields.items():
        if field.required:
            missing = dict(base)
            missing.pop(name)
            yield "missing %s" % name, missing, path + "." + name
        for label, value, where in bad_values(field, path + "." + name):
            yield "%s %s" % (name, label), dict(base, **{name: value}), where


def _bad_maps(param, path):
    yield "wrong type", "not-a-map", path
    yield "empty key", {"": sample(param.value)}, path
    yield "huge", {"k%d" % i: sample(param.value)
                   for i in range(param.max_items + 1)}, path
    for label, value, where in bad_values(param.value, path + ".key"):
        yield "value " + label, {"key": value}, where


def generated_cases(wire_name, spec):
    """Cases built from the command's declared parameters."""
    base = {name: sample(field) for name, field in spec.params.items()
            if field.required}
    if spec.is_task:
        base["task_id"] = "bad-params-task"
    yield "unknown key", dict(base, bogus_param=1), "bogus_param"
    for name, field in spec.params.items():
        if field.required:
            missing = dict(base)
            missing.pop(name)
            yield "missing " + name, missing, name
        for label, value, where in bad_values(field, name):
            yield "%s: %s" % (name, label), dict(base, **{name: value}), where


def written_cases(wire_name, devices):
    """Hand-written cases for the checks made by the commands' validators
    (``validate_<command>``), which the declared types cannot show."""
    image = {"id": SAMPLE_UUID, "urls": ["http://127.0.0.1:9/img"],
             "hashes": {"sha256": "0" * 64}}
    device = devices[0] if devices else "/dev/teeth-no-such-device"
    table = {
        "decom.disk_erase": [
            ("device not eligible", {"devices": ["/dev/sda"]},
             "devices[0]"),
            ("device listed twice", {"devices": [device, device]},
             "devices[1]"),
            ("one good device, one unknown",
             {"devices": [device, "/dev/teeth-no-such-device"]},
             "devices[1]" if devices else "devices[0]"),
            ("unknown method", {"devices": [device],
                                "method": "shred_with_fire"}, "method"),
        ],
        "decom.firmware_secure": [
            ("bad checksum algorithm",
             {"firmware": [{"component": "bios", "version": "1",
                            "url": "http://127.0.0.1:9/fw",
                            "hashes": {"crc32": "00"}}]},
             "firmware[0].hashes.crc32"),
            ("component twice",
             {"firmware": [{"component": "bios", "version": "1",
                            "url": "http://127.0.0.1:9/fw",
                            "hashes": {"sha256": "0" * 64}}] * 2},
             "firmware[1].component"),
            ("nested bios value", {"firmware": [],
                                   "bios_settings": {"Boot": {"a": 1}}},
             "bios_settings.Boot"),
        ],
        "decom.qc": [
            ("cpu count wrong type", {"spec": {"cpu": {"count": "two"}}},
             "spec.cpu.count"),
            ("bad model regex", {"spec": {"cpu": {"model": "(x"}}},
             "spec.cpu.model"),
            ("tolerance out of range",
             {"spec": {"memory": {"tolerance": 7}}},
             "spec.memory.tolerance"),
        ],
        "standbye.prepare_image": [
            ("image id is a path", {"image": "../../etc/passwd"},
             "image.id"),
            ("image not cached", {"image": SAMPLE_UUID}, "image"),
            ("urls without hashes",
             {"image": {"id": SAMPLE_UUID,
                        "urls": ["http://127.0.0.1:9/img"]}},
             "image.hashes"),
            ("file url", {"image": dict(image, urls=["file:///etc/shadow"])},
             "image.urls[0]"),
            ("unknown checksum",
             {"image": dict(image, hashes={"crc32": "00"})},
             "image.hashes"),
            ("image wrong type", {"image": 42}, "image"),
        ],
        "standbye.cache_images": [
            ("image twice", {"images": [image, image]}, "images[1].id"),
            ("id traversal", {"images": [dict(image, id="../../x")]},
             "images[0].id"),
        ],
        "standbye.run_image": [
            ("image not prepared",
             {"image_id": SAMPLE_UUID, "config_drive": {"meta_data": {}}},
             "image_id"),
        ],
    }
    for label, values, where in table.get(wire_name, []):
        values = dict(values)
        values.setdefault("task_id", "bad-params-written")
        yield label, values, where


def names_param(error, path):
    """True when the error names ``path``: exactly in ``details.param``
    (a map key's own problem reads ``path key 'k'``), else at the start of
    ``msg``."""
    named = (error.get("details") or {}).get("param")
    if named:
        return named == path or named.startswith(path + " key ")
    return (error.get("msg") or "").startswith(path)


def content_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def tree(directory):
    """Every file under ``directory`` with its size, but the process logs
    (which grow as the agent logs each refusal)."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".log"):
                continue
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = os.path.getsize(path)
    return found


class TestBadParams(unittest.TestCase):
    def setUp(self):
        self.devices = []
        if os.geteuid() == 0:
            loops = loopdev.LoopDevices()
            self.addCleanup(loops.cleanup)
            try:
                for index in range(2):
                    self.devices.append(loops.create(
                        8 * 1024 * 1024, fill="random"))
            except Exception as exc:  # no loop device: run without disks
                raise unittest.SkipTest("cannot create loop devices: %s"
                                        % exc)
        self.workdir = harness.make_workdir(self)
        available = {e.name for e in metadata.entry_points(group=NAMESPACE)}
        self.groups = [name for name in WANTED
                       if name in available or name == "testing"]
        server = harness.start_server(self)
        harness.start_agent(self, [server.address], {
            "DEFAULT": {"enabled_extensions": self.groups},
            "hardware": {"device_include":
                         self.devices or ["/nonexistent"]},
            "standbye": {
                "image_cache_dir": os.path.join(self.workdir, "cache"),
                "work_dir": os.path.join(self.workdir, "standbye")},
        }, workdir=self.workdir)
        self.peer, self.handshake = harness.accept_handshake(server)
        self.addCleanup(self.peer.close)

    def cases(self):
        loaded = self.handshake["params"]["extensions"]
        self.assertEqual(sorted(self.groups), sorted(loaded))
        specs = load_specs(self.groups)
        wire_names = sorted("%s.%s" % (group, method.split(".")[-1])
                            for group, methods in loaded.items()
                            for method in methods)
        self.assertEqual(sorted(specs), wire_names)
        for wire_name in wire_names:
            for case in generated_cases(wire_name, specs[wire_name]):
                yield (wire_name,) + case
            for case in written_cases(wire_name, self.devices):
                yield (wire_name,) + case

    def test_every_command_refuses_bad_params_and_changes_nothing(self):
        before = {device: content_hash(device) for device in self.devices}
        files_before = tree(self.workdir)
        failures = []
        count = 0
        for wire_name, label, values, where in self.cases():
            count += 1
            response = self.peer.call(wire_name, values)
            error = response.get("error") or {}
            named = (error.get("details") or {}).get("param") or ""
            problem = None
            if "result" in response:
                problem = "accepted: %r" % (response["result"],)
            elif error.get("type") != "InvalidParams":
                problem = "%s: %s" % (error.get("type"), error.get("msg"))
            elif not names_param(error, where):
                problem = "names %r / %r, not %r" % (named, error.get("msg"),
                                                     where)
            if problem:
                failures.append("%s [%s]: %s" % (wire_name, label, problem))
        self.assertEqual([], failures, "%d of %d cases" % (len(failures),
                                                           count))
        self.assertGreater(count, 100)
        status = self.peer.call("status", {})["result"]
        self.assertEqual([], status["tasks"])
        self.assertEqual([], self.peer.pending(
            lambda m: harness.is_task_status(m)))
        self.assertEqual(files_before, tree(self.workdir))
        for device in self.devices:
            self.assertEqual(before[device], content_hash(device),
                             "%s changed" % device)

    def test_a_good_command_still_works_after_the_bad_ones(self):
        # The check above would pass on an agent that refused everything.
        for wire_name, label, values, where in self.cases():
            if wire_name == "testing.echo":
                self.peer.call(wire_name, values)
        task_id = "good-%s" % uuid.uuid4().hex[:8]
        response = self.peer.call("testing.sleep", {"task_id": task_id,
                                                    "seconds": 0})
        self.assertEqual("running", response["result"]["state"])
        final = self.peer.take(
            lambda m: harness.is_task_status(m, task_id)
            and m["params"]["state"] != "running", what="the good task")
        self.assertEqual("complete", final["params"]["state"])


if __name__ == "__main__":
    unittest.main()
