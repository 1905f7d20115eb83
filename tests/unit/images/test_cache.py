"""teeth_agent.images.cache: the image cache."""

import os
import tempfile
from unittest import mock

from teeth_agent.fetch import errors
from teeth_agent.images import cache
from tests import base
from tests.unit.images import samples


class CacheTestBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        self.cache = cache.ImageCache(self.dir, 0)
        self.cache.prepare()

    def put(self, image_id, size, when):
        with open(self.cache.data_path(image_id), "wb") as stream:
            stream.write(bytes(size))
        self.cache._write_record({"id": image_id, "size": size,
                                  "algorithm": "sha256",
                                  "hexdigest": "a" * 64, "format": "raw",
                                  "cached_at": when})


class CacheTest(CacheTestBase):

    def test_lookup_requires_matching_checksum(self):
        image_id = "0d6a1c04-7b53-4a3e-9c36-8a6b1f7e2d10"
        self.put(image_id, 10, 1)
        self.assertIsNotNone(self.cache.lookup(image_id.upper()))
        self.assertIsNotNone(self.cache.lookup(image_id,
                                               {"sha256": "A" * 64}))
        self.assertIsNone(self.cache.lookup(image_id, {"sha256": "b" * 64}))
        self.assertIsNone(self.cache.lookup(image_id, {"sha512": "a" * 128}))
        # A data file of the wrong size is not a cache entry.
        with open(self.cache.data_path(image_id), "ab") as stream:
            stream.write(b"x")
        self.assertIsNone(self.cache.lookup(image_id))

    def test_evicts_oldest_unlisted_first_and_never_in_use(self):
        ids = ["00000000-0000-4000-8000-00000000000%d" % n for n in range(4)]
        for index, image_id in enumerate(ids):
            self.put(image_id, 100, index)
        free = [150]
        with mock.patch.object(self.cache, "available",
                               side_effect=lambda: free[0]):
            original = self.cache.evict

            def evict(image_id):
                if original(image_id):
                    free[0] += 100
                    return True
                return False
            with mock.patch.object(self.cache, "evict", side_effect=evict):
                with self.cache.using(ids[1]):
                    self.assertTrue(self.cache._make_room(300, {ids[0]}))
        # 150 free + ids[2] + ids[3] make 350: both go, oldest first.
        self.assertEqual([ids[0], ids[1]], sorted(self.cache.entries()))
        self.assertFalse(self.cache._make_room(10 ** 18, set()))

    def test_prepare_removes_partial_downloads(self):
        partial = os.path.join(self.dir, ".x.image.partial-abc")
        open(partial, "w").close()
        self.cache.prepare()
        self.assertFalse(os.path.exists(partial))

    def test_prepare_removes_orphans_and_keeps_entries(self):
        good, orphan, wrong, lonely = (
            "00000000-0000-4000-8000-00000000000%d" % n for n in range(4))
        self.put(good, 10, 1)
        self.put(wrong, 10, 1)
        with open(self.cache.data_path(wrong), "ab") as stream:
            stream.write(b"more than the record says")
        with open(self.cache.data_path(orphan), "wb") as stream:
            stream.write(b"renamed, but no record was written")
        self.put(lonely, 10, 1)
        os.unlink(self.cache.data_path(lonely))
        partial_record = os.path.join(
            self.dir, ".%s.json.partial-record" % orphan)
        open(partial_record, "w").close()
        other = os.path.join(self.dir, "lost+found")
        os.mkdir(other)
        self.cache.prepare()
        self.assertEqual(sorted(["%s.image" % good, "%s.json" % good,
                                 "lost+found"]), sorted(os.listdir(self.dir)))

    def test_cleanup_without_the_directory_creates_nothing(self):
        missing = os.path.join(self.dir, "not-yet")
        cache.ImageCache(missing, 0).cleanup()
        self.assertFalse(os.path.exists(missing))


IMAGE = "7b0e7f3c-8c61-4f0a-9d7e-2f1a3b4c5d6e"


OTHER = "00000000-0000-4000-8000-000000000001"


class CacheAddTest(CacheTestBase):
    """cache.add with the download mocked: what is left on failures."""

    def image(self, **changes):
        image = {"id": IMAGE, "urls": ["http://127.0.0.1:1/i"],
                 "hashes": {"sha256": "b" * 64}}
        image.update(changes)
        return image

    def fake_download(self, content=b"raw image", failures=()):
        failures = list(failures)
        calls = []

        def download_to_file(urls, hashes, path, **kwargs):
            calls.append(kwargs)
            if failures:
                raise failures.pop(0)
            with open(path, "wb") as stream:
                stream.write(content)
            return {"size": len(content)}
        patcher = mock.patch.object(cache.download, "download_to_file",
                                    side_effect=download_to_file)
        patcher.start()
        self.addCleanup(patcher.stop)
        return calls

    def test_qemu_img_failure_leaves_no_orphan(self):
        self.fake_download(content=samples.qcow2_header())
        with mock.patch.object(cache.qcow2, "inspect", side_effect=(
                cache.processes.ProcessError(["qemu-img"], None,
                                             reason="timed out"))):
            result = self.cache.add(self.image())
        self.assertEqual("failed", result["status"])
        self.assertIn("qemu-img", result["reason"])
        self.assertEqual([], os.listdir(self.dir))

    def test_record_failure_leaves_no_orphan(self):
        self.fake_download()
        with mock.patch.object(self.cache, "_write_record",
                               side_effect=OSError(28, "No space left")):
            result = self.cache.add(self.image())
        self.assertEqual("failed", result["status"])
        self.assertIn("No space left", result["reason"])
        self.assertEqual([], os.listdir(self.dir))
        self.assertIsNone(self.cache.lookup(IMAGE))

    def test_success_is_recorded(self):
        self.fake_download()
        result = self.cache.add(self.image())
        self.assertEqual("cached", result["status"])
        self.assertEqual(9, self.cache.lookup(IMAGE)["size"])

    def test_an_older_copy_in_use_is_not_overwritten(self):
        self.put(IMAGE, 10, 1)
        calls = self.fake_download()
        with self.cache.using(IMAGE):
            result = self.cache.add(self.image())
        self.assertEqual("skipped", result["status"])
        self.assertIn("in use", result["reason"])
        self.assertEqual([], calls)
        with open(self.cache.data_path(IMAGE), "rb") as stream:
            self.assertEqual(bytes(10), stream.read())
        self.assertEqual("a" * 64, self.cache.lookup(IMAGE)["hexdigest"])

    def test_an_older_copy_not_in_use_is_replaced(self):
        self.put(IMAGE, 10, 1)
        self.fake_download()
        self.assertEqual("cached", self.cache.add(self.image())["status"])
        self.assertEqual("b" * 64, self.cache.lookup(IMAGE)["hexdigest"])

    def test_without_size_space_running_out_evicts_and_retries(self):
        self.put(OTHER, 10, 1)
        full = errors.NoSpace("no space left")
        calls = self.fake_download(failures=[full])
        result = self.cache.add(self.image(), keep={IMAGE})
        self.assertEqual("cached", result["status"])
        self.assertEqual(2, len(calls))
        self.assertIsNone(self.cache.lookup(OTHER))

    def test_without_size_listed_images_are_kept(self):
        self.put(OTHER, 10, 1)
        too_large = errors.ImageTooLarge(
            "larger than 5 bytes")
        calls = self.fake_download(failures=[too_large, too_large])
        result = self.cache.add(self.image(), keep={IMAGE, OTHER})
        self.assertEqual("skipped", result["status"])
        self.assertEqual(1, len(calls))
        self.assertIsNotNone(self.cache.lookup(OTHER))

    def test_without_size_retried_once_only(self):
        self.put(OTHER, 10, 1)
        too_large = errors.ImageTooLarge(
            "larger than 5 bytes")
        calls = self.fake_download(failures=[too_large, too_large])
        result = self.cache.add(self.image(), keep={IMAGE})
        self.assertEqual("skipped", result["status"])
        self.assertIn("does not fit", result["reason"])
        self.assertEqual(2, len(calls))

    def test_with_size_no_retry(self):
        full = errors.NoSpace("no space left")
        calls = self.fake_download(failures=[full])
        self.put(OTHER, 10, 1)
        result = self.cache.add(self.image(size=9), keep={IMAGE})
        self.assertEqual("skipped", result["status"])
        self.assertEqual(1, len(calls))
