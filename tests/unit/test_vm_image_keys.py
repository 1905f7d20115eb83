"""The UEFI tenant images of the VM tests are cached by everything that
shapes them: tests/vm/uefi_images.py itself, tests/vm/images.py (whose
BOOTED_MARKER and helpers they use) and the inputs' bytes."""

import os
import shutil
import tempfile
import unittest
from unittest import mock

from tests.vm import images
from tests.vm import uefi_images


class CacheKeyTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="teeth-vm-key-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def copy(self, source, name):
        path = os.path.join(self.tmp, name)
        shutil.copy(source, path)
        return path

    def test_images_module_is_part_of_the_key(self):
        helpers = self.copy(images.__file__, "images.py")
        with mock.patch.object(images, "__file__", helpers):
            before = uefi_images._digest([], "uefi bookworm True")
            with open(helpers, "a") as stream:
                stream.write("\n# BOOTED_MARKER changed\n")
            after = uefi_images._digest([], "uefi bookworm True")
        self.assertNotEqual(before, after)

    def test_inputs_and_options_are_part_of_the_key(self):
        kernel = os.path.join(self.tmp, "vmlinuz")
        with open(kernel, "wb") as stream:
            stream.write(b"MZ kernel")
        first = uefi_images._digest([kernel], "uefi bookworm True")
        self.assertEqual(first, uefi_images._digest([kernel],
                                                    "uefi bookworm True"))
        self.assertNotEqual(first, uefi_images._digest(
            [kernel], "uefi bookworm False"))
        with open(kernel, "ab") as stream:
            stream.write(b"!")
        self.assertNotEqual(first, uefi_images._digest(
            [kernel], "uefi bookworm True"))
