"""``lifecycle.tune_gc``: the serve process's garbage collector set-up."""

import gc

from teeth_agent.cmd import lifecycle
from tests import base


class TuneGcTest(base.TestCase):

    def setUp(self):
        super().setUp()
        thresholds = gc.get_threshold()
        # Undone after each test: the permanent generation goes back to
        # the oldest one, so the suite's objects are collected as before.
        self.addCleanup(gc.set_threshold, *thresholds)
        self.addCleanup(gc.unfreeze)

    def test_thresholds_are_set_and_start_up_objects_frozen(self):
        self.assertEqual(0, gc.get_freeze_count())
        lifecycle.tune_gc([50000, 20, 100])
        self.assertEqual((50000, 20, 100), gc.get_threshold())
        # Everything allocated so far (the modules imported, this test)
        # is out of every collection.
        self.assertGreater(gc.get_freeze_count(), 1000)
        self.assertNotIn(self, gc.get_objects())

    def test_anything_but_three_positive_integers_is_refused(self):
        before = gc.get_threshold()
        for thresholds in ([700, 10], [700, 10, 10, 10], [0, 10, 10],
                           [700, -1, 10], ["700", 10, 10], []):
            with self.subTest(thresholds):
                with self.assertRaisesRegex(lifecycle.StartError,
                                            "gc_thresholds"):
                    lifecycle.tune_gc(thresholds)
        self.assertEqual(before, gc.get_threshold())
        self.assertEqual(0, gc.get_freeze_count())
