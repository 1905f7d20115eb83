"""The demo's decommission and standby cycle on loop devices (root only)."""

import json

from tests.functional import loopdev

MIB = 1024 * 1024


class Cycle:
    """Creates two loop devices, runs decom and standbye on them, and
    detaches them in :meth:`cleanup`."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.devices = loopdev.LoopDevices()
        self.paths = []

    def prepare_devices(self):
        self.paths = [self.devices.create(256 * MIB, fill="random"),
                      self.devices.create(384 * MIB, fill="random")]
        return self.paths

    def run(self, runner, agent_id):
        from tools import demo
        demo.heading("decom.qc: check the chassis against its model's spec")
        final = runner.run_task(agent_id, "decom.qc", {
            "task_id": "demo-qc",
            "spec": {"disks": [{"count": 1, "size_bytes": 256 * MIB},
                               {"count": 1, "size_bytes": 384 * MIB}]}})
        demo.show(final.get("result", {}).get("checks"), limit=30)

        demo.heading("decom.disk_erase: erase both loop devices")
        final = runner.run_task(agent_id, "decom.disk_erase", {
            "task_id": "demo-erase", "devices": self.paths})
        demo.show(final.get("result") or final.get("details"), limit=40)
        for path in self.paths:
            with open(self.devices.backing_file(path), "rb") as stream:
                head = stream.read(MIB)
            print("   %s first MiB all zero: %s"
                  % (path, json.dumps(head == bytes(MIB))))

    def cleanup(self):
        self.devices.cleanup()
