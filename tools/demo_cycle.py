"""The demo's decommission and standby cycle on loop devices (root only).

Two loop devices filled with random data stand in for a chassis' disks. The
cycle checks them against a spec (``decom.qc``), erases both
(``decom.disk_erase``), caches two images (``standbye.cache_images``), writes
one to the first device (``standbye.prepare_image``) and runs it
(``standbye.run_image`` with a config drive; ``[power] simulate`` makes the
final kexec a logged no-op). The images are real GPT disks with an ext4 root,
built by the same helpers the functional tests use, and served from an HTTP
server on 127.0.0.1.
"""

import os
import subprocess
import uuid

from tests.functional import loopdev
from tests.functional import standbye_http
from tests.functional import standbye_images
from tools import demo_output as demo

MIB = 1024 * 1024


class Cycle:
    """Creates the loop devices and images; :meth:`cleanup` removes them."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.devices = loopdev.LoopDevices()
        self.paths = []
        self.server = None

    def prepare_devices(self):
        self.paths = [self.devices.create(256 * MIB, fill="random"),
                      self.devices.create(384 * MIB, fill="random")]
        return self.paths

    def _images(self):
        directory = os.path.join(self.workdir, "images")
        os.makedirs(directory)
        built = standbye_images.build_disk_image(directory, size_mib=64,
                                                 name="tenant.img")
        spare = standbye_images.build_disk_image(directory, size_mib=48,
                                                 esp=False, bls=True,
                                                 name="spare.img")
        self.server = standbye_http.ImageServer().__enter__()
        images = []
        for info, name in ((built, "tenant.img"), (spare, "spare.img")):
            url = self.server.add("/" + name, info["path"])
            images.append({"id": str(uuid.uuid4()), "urls": [url],
                           "hashes": {
                               "sha256": standbye_images.sha256_of(
                                   info["path"])},
                           "size": os.path.getsize(info["path"])})
        return built, images

    def run(self, runner, agent_id):
        install, other = self.paths
        demo.heading("decom.qc: check the chassis against its model's spec")
        final = runner.run_task(agent_id, "decom.qc", {
            "task_id": "demo-qc",
            "spec": {"disks": [{"count": 1, "size_bytes": 256 * MIB},
                               {"count": 1, "size_bytes": 384 * MIB}]}})
        demo.show((final.get("result") or final.get("details") or {})
                  .get("checks"), limit=30)

        demo.heading("decom.disk_erase: erase both loop devices")
        final = runner.run_task(agent_id, "decom.disk_erase", {
            "task_id": "demo-erase", "devices": self.paths})
        demo.show(final.get("result") or final.get("details"), limit=40)
        for path in self.paths:
            with open(self.devices.backing_file(path), "rb") as stream:
                head = stream.read(MIB)
            print("   %s: first MiB reads back as zeroes: %s"
                  % (path, head == bytes(MIB)))

        demo.heading("standbye.cache_images: two images, in priority order")
        built, images = self._images()
        final = runner.run_task(agent_id, "standbye.cache_images", {
            "task_id": "demo-cache", "images": images})
        demo.show(final.get("result"), limit=30)

        demo.heading("standbye.prepare_image: write the first image to %s"
                     % install)
        final = runner.run_task(agent_id, "standbye.prepare_image", {
            "task_id": "demo-prepare", "image": {"id": images[0]["id"]},
            "root_device_hints": {"name": install}})
        demo.show(final.get("result"), limit=30)
        same = subprocess.run(
            ["cmp", "-n", str(images[0]["size"]), built["path"],
             self.devices.backing_file(install)],
            capture_output=True, check=False).returncode == 0
        print("   device content equals the image: %s" % same)

        demo.heading("standbye.run_image: config drive, boot loader, kexec "
                     "(simulated)")
        final = runner.run_task(agent_id, "standbye.run_image", {
            "task_id": "demo-run", "image_id": images[0]["id"],
            "config_drive": {
                "meta_data": {"uuid": str(uuid.uuid4()),
                              "hostname": "tenant-1",
                              "public_keys": {"demo": "ssh-ed25519 AAAA"}},
                "user_data": "#cloud-config\nruncmd: [echo hello]\n"}})
        demo.show(final.get("result"), limit=30)

    def cleanup(self):
        if self.server is not None:
            self.server.__exit__(None, None, None)
        self.devices.cleanup()
