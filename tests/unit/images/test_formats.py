"""teeth_agent.images.formats: telling image formats apart."""

import gzip
import lzma

from teeth_agent.images import formats
from tests import base


class FormatsTest(base.TestCase):

    def test_detects_from_content(self):
        self.assertEqual("qcow2", formats.detect(b"QFI\xfb\x00\x00\x00\x03"))
        self.assertEqual("gzip", formats.detect(gzip.compress(b"x")))
        self.assertEqual("xz", formats.detect(lzma.compress(b"x")))
        self.assertEqual("zstd", formats.detect(b"\x28\xb5\x2f\xfd\x00"))
        self.assertEqual("raw", formats.detect(b"\xeb\x63\x90" + bytes(509)))
        self.assertEqual("raw", formats.detect(b""))

    def test_refuses_other_containers(self):
        for head in (b"KDMV\x01", b"vhdxfile", b"BZh91AY"):
            with self.subTest(head):
                with self.assertRaises(formats.UnsupportedFormat):
                    formats.detect(head)
