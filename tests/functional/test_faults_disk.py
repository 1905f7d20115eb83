"""Fault injection: image servers that lie, disks that fill up or fail.

A real ``teeth-agent`` (decom and standbye enabled) talks to a real
``teeth-endpoint`` through a :class:`faults_proxy.FaultProxy` whose tap
records every line the agent sent, so "never reported complete" is checked
on the wire. Images come from a :class:`faults_disk.HoldingImageServer` on
127.0.0.1, which can hold a download at a byte offset until the test has
done its damage, so no fault depends on timing. Every device is a loop
device this test made; failing devices sit on a small ext4 file system that
is shut down (every write then fails with EIO) or too small for them
(writes fail with ENOSPC). Resuming after a dropped connection and a
server that ignores ``Range`` are covered by ``test_standbye.py``; here a
resume must never splice two different images into one.
"""

import hashlib
import os
import shutil
import unittest
import uuid

from importlib import metadata

from tests.functional import faults_disk
from tests.functional import faults_endpoint
from tests.functional import faults_proxy
from tests.functional import faults_throttle
from tests.functional import harness
from tests.functional import loopdev

AGENT_ID = "disk-fault-agent"
MIB = faults_disk.MIB
IMAGE_SIZE = 24 * MIB
DEVICE_SIZE = 32 * MIB
TASK_TIMEOUT = 120.0
TOOLS = ("sgdisk", "wipefs", "blkid", "mkfs.ext4", "partx")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class DiskFaultTestCase(unittest.TestCase):
    """A real agent and endpoint, an image server, loop devices."""

    def setUp(self):
        loopdev.require_root()
        installed = {entry.name for entry in metadata.entry_points(
            group="teeth_agent.extensions")}
        if not {"decom", "standbye"} <= installed:
            self.skipTest("decom and standbye are not both installed")
        for tool in TOOLS:
            if shutil.which(tool) is None:
                self.skipTest("%s is not installed" % tool)
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.server = faults_disk.HoldingImageServer().__enter__()
        self.addCleanup(self.server.__exit__, None, None, None)
        self.work = harness.make_workdir(self)

    # -- the agent ------------------------------------------------------------

    def start_agent(self, devices, cache_dir=None):
        """Start endpoint <- proxy <- agent; devices must exist already
        (the agent is stopped before they are detached)."""
        # Plaintext, explicitly: the proxy reads the lines going through.
        self.endpoint = faults_endpoint.RestartableEndpoint(
            self, harness.PLAINTEXT_ENDPOINT)
        self.proxy = faults_proxy.FaultProxy(self.endpoint.port)
        self.addCleanup(self.proxy.close)
        self.agent = harness.start_agent(self, [self.proxy.address], {
            "tls": {"enabled": "false"},
            "DEFAULT": {"agent_id": AGENT_ID,
                        "enabled_extensions": ["decom", "standbye"]},
            "hardware": {"device_include": list(devices)},
            "standbye": {
                "image_cache_dir": cache_dir or os.path.join(self.work,
                                                             "cache"),
                "work_dir": os.path.join(self.work, "standbye"),
                "cache_reserve": 0,
                "download_retries": 3,
                "download_backoff": 0.01,
                "write_buffer_size": MIB},
            "decom": {"erase_block_size": MIB,
                      "erase_verify_samples": 8}})
        self.endpoint.wait_agent(AGENT_ID)

    def call(self, method, params):
        return self.endpoint.ask(
            lambda client: client.call(AGENT_ID, method, params))

    def start_task(self, method, params):
        task_id = "%s-%s" % (method.split(".")[1], uuid.uuid4().hex[:8])
        response = self.call(method, dict(params, task_id=task_id))
        self.assertIn("result", response, response)
        self.assertEqual("running", response["result"]["result"]["state"])
        return task_id

    def wait_final(self, task_id):
        return self.endpoint.wait_task(AGENT_ID, task_id,
                                       ("complete", "error"),
                                       timeout=TASK_TIMEOUT)

    def image(self, url, data, size=True):
        image = {"id": str(uuid.uuid4()), "urls": [url],
                 "hashes": {"sha256": sha256(data)}}
        if size:
            image["size"] = len(data)
        return image

    def prepare(self, device, image):
        return self.start_task("standbye.prepare_image", {
            "image": image, "root_device_hints": {"name": device}})

    # -- what every fault must leave ------------------------------------------

    def assert_never_complete(self, task_id):
        """On the wire, the task only ever ran and then failed."""
        statuses = faults_endpoint.task_statuses(
            self.proxy.lines_going(faults_proxy.UP), task_id)
        states = [params["state"] for _, params in statuses]
        self.assertIn("error", states)
        self.assertNotIn("complete", states)

    def assert_agent_alive(self, task_id, state):
        """The process runs, answers ping and status, and knows the task;
        nothing it logged is a traceback (every fault was handled)."""
        self.assertIsNone(self.agent.process.poll(), self.agent.output())
        pong = self.call("ping", {"after": task_id})
        self.assertEqual({"after": task_id}, pong["result"]["result"])
        status = self.call("status", {})["result"]["result"]
        self.assertEqual(AGENT_ID, status["agent_id"])
        known = {t["task_id"]: t["state"] for t in status["tasks"]}
        self.assertEqual(state, known.get(task_id), status["tasks"])
        self.assertNotIn("Traceback", self.agent.output())

    def assert_wiped(self, device):
        self.assertEqual({"wipefs": [], "blkid": ""},
                         faults_disk.signatures(device))
        with open(device, "rb") as stream:
            self.assertEqual(bytes(MIB), stream.read(MIB))


class TestLyingImageServer(DiskFaultTestCase):
    """Wrong bytes must end in error, a wiped device and an empty cache."""

    def setUp(self):
        super().setUp()
        self.data = faults_disk.gpt_image(self.work, IMAGE_SIZE)
        self.device = self.loops.create(DEVICE_SIZE)
        self.cache = faults_disk.SmallFilesystem(self, 64 * MIB, "cache")
        self.start_agent([self.device], cache_dir=self.cache.path)

    def assert_failed_and_wiped(self, task_id, image_id, words):
        final = self.wait_final(task_id)
        self.assertEqual("error", final["state"], final)
        for word in words:
            self.assertIn(word, final["msg"])
        self.assert_never_complete(task_id)
        self.assert_wiped(self.device)
        # Nothing counts as prepared: run_image refuses the image.
        response = self.call("standbye.run_image", {
            "task_id": "run-" + task_id, "image_id": image_id,
            "config_drive": {"meta_data": {}}})
        self.assertEqual("InvalidParams", response["error"]["type"],
                         response)
        self.assert_agent_alive(task_id, "error")

    def test_mirror_changed_after_a_drop_is_never_spliced(self):
        # The connection drops after 5 MiB and the server then holds a new
        # version of the image: resuming with Range would write the old
        # head and the new tail, a disk that never existed.
        changed = self.data[:5 * MIB] + os.urandom(IMAGE_SIZE - 5 * MIB)
        url = self.server.add("/image", self.data)
        self.server.drop("/image", 5 * MIB, then_serve=changed)
        image = self.image(url, self.data)
        task_id = self.prepare(self.device, image)
        self.assert_failed_and_wiped(task_id, image["id"],
                                     ["checksum mismatch"])
        self.assertIn(("/image", "bytes=%d-" % (5 * MIB)),
                      self.server.requests)

    def test_resume_answered_from_another_offset_fails_cleanly(self):
        # A broken cache answers the resume 206 from byte 0 (and says so):
        # appending it would repeat the image's first 5 MiB.
        url = self.server.add("/image", self.data)
        self.server.drop("/image", 5 * MIB)
        self.server.misplaced_ranges.add("/image")
        image = self.image(url, self.data)
        task_id = self.prepare(self.device, image)
        self.assert_failed_and_wiped(task_id, image["id"], ["wrong range"])
        self.assertIn(("/image", "bytes=%d-" % (5 * MIB)),
                      self.server.requests)

    def test_corrupted_middle_fails_and_leaves_nothing(self):
        corrupted = bytearray(self.data)
        middle = IMAGE_SIZE // 2
        corrupted[middle:middle + 4096] = bytes(
            b ^ 0xFF for b in corrupted[middle:middle + 4096])
        url = self.server.add("/image", bytes(corrupted))
        image = self.image(url, self.data)
        task_id = self.prepare(self.device, image)
        self.assert_failed_and_wiped(task_id, image["id"], [
            "checksum mismatch", sha256(self.data)])
        # The same image through the cache: held half way, the file being
        # downloaded is hidden; at the end nothing is left at all.
        reached, release = self.server.hold("/image", 12 * MIB)
        task_id = self.start_task("standbye.cache_images",
                                  {"images": [image]})
        self.assertTrue(reached.wait(faults_disk.HOLD_LIMIT))
        entries = self.cache.entries()
        self.assertTrue(entries, "the download is not in the cache dir")
        self.assertEqual([], [name for name in entries
                              if not name.startswith(".")])
        release.set()
        final = self.wait_final(task_id)
        self.assertEqual("error", final["state"], final)
        self.assertIn("checksum mismatch", final["msg"])
        self.assertEqual(["failed"], [entry["status"] for entry in
                                      final["details"]["images"]])
        self.assertEqual([], self.cache.entries())
        self.assertEqual([], faults_disk.open_files_under(self.agent.pid,
                                                          self.cache.path))
        self.assert_never_complete(task_id)
        self.assert_agent_alive(task_id, "error")


class TestFullCacheDisk(DiskFaultTestCase):
    """The cache's file system fills up while an image is downloaded."""

    def setUp(self):
        super().setUp()
        self.cache = faults_disk.SmallFilesystem(self, 64 * MIB, "cache")
        self.start_agent(["/nonexistent"], cache_dir=self.cache.path)

    def cache_images(self, *images):
        return self.start_task("standbye.cache_images",
                               {"images": list(images)})

    def assert_nothing_left(self):
        self.assertEqual([], self.cache.entries())
        # No deleted partial file kept open either: its space is back.
        self.assertEqual([], faults_disk.open_files_under(self.agent.pid,
                                                          self.cache.path))

    def test_image_larger_than_the_free_space_without_a_size(self):
        free = self.cache.free()
        data = os.urandom(free + 8 * MIB)
        url = self.server.add("/big", data)
        task_id = self.cache_images(self.image(url, data, size=False))
        final = self.wait_final(task_id)
        # Per docs/standbye.md an image that does not fit is skipped, and
        # the task (nothing failed) completes saying why.
        self.assertEqual("complete", final["state"], final)
        (entry,) = final["result"]["images"]
        self.assertEqual("skipped", entry["status"], entry)
        self.assertIn("does not fit", entry["reason"])
        self.assert_nothing_left()
        self.assert_agent_alive(task_id, "complete")

    def test_disk_filled_by_another_writer_mid_download(self):
        data = os.urandom(32 * MIB)
        url = self.server.add("/image", data)
        image = self.image(url, data)
        reached, release = self.server.hold("/image", 8 * MIB)
        task_id = self.cache_images(image)
        self.assertTrue(reached.wait(faults_disk.HOLD_LIMIT))

        def partial_written():
            names = self.cache.entries()
            return names and faults_disk.allocated_bytes(os.path.join(
                self.cache.path, names[0])) >= 4 * MIB
        faults_disk.wait_for(partial_written, harness.START_TIMEOUT,
                             "4 MiB of the download written")
        # The declared size fitted when the download started; now another
        # writer takes every free block, so the agent learns it only from
        # its next write: ENOSPC.
        filler = self.cache.fill()
        release.set()
        final = self.wait_final(task_id)
        self.assertEqual("complete", final["state"], final)
        (entry,) = final["result"]["images"]
        self.assertEqual("skipped", entry["status"], entry)
        self.assertIn("no space left", entry["reason"])
        os.unlink(filler)
        self.assert_nothing_left()
        self.assert_agent_alive(task_id, "complete")
        # With the space back, the same image is cached whole.
        task_id = self.cache_images(image)
        final = self.wait_final(task_id)
        self.assertEqual("complete", final["state"], final)
        self.assertEqual(["cached"], [entry["status"] for entry in
                                      final["result"]["images"]])
        with open(os.path.join(self.cache.path,
                               "%s.image" % image["id"]), "rb") as stream:
            self.assertEqual(data, stream.read())


class TestFailingDevice(DiskFaultTestCase):
    """The install device fails (EIO) or runs out of space mid-write.

    Each test also runs a disk task on a healthy device afterwards: the
    failed task released the agent's exclusive disk lock.
    """

    def setUp(self):
        super().setUp()
        self.healthy = self.loops.create(8 * MIB, fill="random")

    def failing_device(self, fs_size):
        """A DEVICE_SIZE device on an ext4 of ``fs_size`` bytes."""
        self.backing_fs = faults_disk.SmallFilesystem(self, fs_size,
                                                      "backing")
        device, self.backing_file = self.backing_fs.create_device(
            DEVICE_SIZE)
        return device

    def assert_failed(self, task_id, words):
        final = self.wait_final(task_id)
        self.assertEqual("error", final["state"], final)
        for word in words:
            self.assertIn(word, final["msg"])
        self.assert_never_complete(task_id)
        self.assert_agent_alive(task_id, "error")
        return final

    def assert_healthy_device_erased(self):
        task_id = self.start_task("decom.disk_erase",
                                  {"devices": [self.healthy]})
        final = self.wait_final(task_id)
        self.assertEqual("complete", final["state"], final)
        with open(self.loops.backing_file(self.healthy), "rb") as stream:
            self.assertEqual(bytes(8 * MIB), stream.read())

    def wait_written(self, at_least):
        faults_disk.wait_for(
            lambda: faults_disk.allocated_bytes(self.backing_file)
            >= at_least, harness.START_TIMEOUT,
            "%d bytes written to the device" % at_least)

    def test_device_failing_mid_image_write(self):
        device = self.failing_device(64 * MIB)
        self.start_agent([device, self.healthy])
        data = faults_disk.gpt_image(self.work, IMAGE_SIZE)
        url = self.server.add("/image", data)
        reached, release = self.server.hold("/image", 8 * MIB)
        task_id = self.prepare(device, self.image(url, data))
        self.assertTrue(reached.wait(faults_disk.HOLD_LIMIT))
        self.wait_written(4 * MIB)
        self.backing_fs.shut_down()
        release.set()
        self.assert_failed(task_id, [device, "Input/output error"])
        self.assert_healthy_device_erased()

    def test_device_out_of_space_mid_image_write(self):
        # A thin-provisioned disk whose storage ran out: the file system
        # under the device holds about half of the image.
        device = self.failing_device(16 * MIB)
        self.start_agent([device, self.healthy])
        data = faults_disk.gpt_image(self.work, IMAGE_SIZE)
        url = self.server.add("/image", data)
        task_id = self.prepare(device, self.image(url, data))
        self.assert_failed(task_id, [device, "No space left on device"])
        # What did reach the device is wiped: it cannot boot.
        self.assert_wiped(device)
        self.assert_healthy_device_erased()

    def test_device_failing_mid_erase(self):
        if not faults_throttle.available():
            self.skipTest("no cgroup v1 blkio throttling on this machine")
        device = self.failing_device(64 * MIB)
        self.start_agent([device, self.healthy])
        # Slow the agent's writes to the device so the erase is certainly
        # still writing when the storage under it goes away.
        throttle = faults_throttle.WriteThrottle(self, [device], 2 * MIB)
        throttle.add(self.agent.pid)
        task_id = self.start_task("decom.disk_erase", {"devices": [device]})
        self.wait_written(2 * MIB)
        self.backing_fs.shut_down()
        throttle.limit(0)
        final = self.assert_failed(task_id, [device, "Input/output error"])
        (entry,) = final["details"]["devices"]
        self.assertEqual(device, entry["path"])
        self.assertIn("Input/output error", entry["error"])
        self.assertNotEqual(True, entry.get("verified"))
        self.assert_healthy_device_erased()

    def test_device_out_of_space_mid_erase(self):
        device = self.failing_device(16 * MIB)
        self.start_agent([device, self.healthy])
        task_id = self.start_task("decom.disk_erase", {"devices": [device]})
        final = self.assert_failed(task_id, [device,
                                             "No space left on device"])
        (entry,) = final["details"]["devices"]
        self.assertIn("No space left on device", entry["error"])
        self.assertNotEqual(True, entry.get("verified"))
        self.assert_healthy_device_erased()


if __name__ == "__main__":
    unittest.main()
