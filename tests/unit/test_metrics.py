"""teeth_agent.metrics: bounded label values and the bytes of results."""

from teeth_agent import metrics
from tests import base


class TestLabelValues(base.TestCase):
    def test_well_formed_values_are_kept_up_to_the_limit(self):
        labels = metrics.LabelValues(limit=2)
        self.assertEqual("decom.qc", labels("decom.qc"))
        self.assertEqual("testing.sleep", labels("testing.sleep"))
        self.assertEqual("other", labels("decom.disk_erase"))
        # Values already kept stay kept.
        self.assertEqual("decom.qc", labels("decom.qc"))

    def test_malformed_values_are_other_and_take_no_slot(self):
        labels = metrics.LabelValues(limit=1)
        for value in (None, 7, "", "x" * 65, 'a"b', "a\nb", "<b>",
                      "caf\u00e9"):
            self.assertEqual("other", labels(value))
        self.assertEqual("decom.qc", labels("decom.qc"))

    def test_a_flood_of_new_names_stays_bounded(self):
        labels = metrics.LabelValues(limit=64)
        kept = {labels("m%d" % n) for n in range(10000)}
        self.assertEqual(65, len(kept))
        self.assertIn("other", kept)


class TestResultBytes(base.TestCase):
    def test_erased_bytes_count_only_erased_devices(self):
        result = {"devices": [
            {"path": "/dev/a", "outcome": "erased", "bytes": 100},
            {"path": "/dev/b", "outcome": "failed", "bytes": 50},
            {"path": "/dev/c", "outcome": "skipped"},
            {"path": "/dev/d", "outcome": "erased", "bytes": 23}]}
        self.assertEqual((123, 0), metrics.result_bytes(
            "decom.disk_erase", result))

    def test_written_bytes(self):
        self.assertEqual((0, 4096), metrics.result_bytes(
            "standbye.prepare_image", {"bytes_written": 4096,
                                       "bytes_read": 1}))

    def test_hostile_values_count_nothing_or_are_capped(self):
        for result in (None, [], "x", {"devices": "x"},
                       {"devices": [1, None,
                                    {"outcome": "erased", "bytes": -5}]},
                       {"devices": [{"outcome": "erased", "bytes": True}]},
                       {"devices": [{"outcome": "erased",
                                     "bytes": 1.5}]}):
            self.assertEqual(0, metrics.bytes_erased(result), result)
        self.assertEqual(0, metrics.bytes_written({"bytes_written": "9"}))
        huge = {"devices": [{"outcome": "erased", "bytes": 1 << 70}] * 3}
        self.assertEqual(metrics.MAX_RESULT_BYTES,
                         metrics.bytes_erased(huge))

    def test_other_methods_count_nothing(self):
        self.assertEqual((0, 0), metrics.result_bytes(
            "testing.sleep", {"bytes_written": 5}))
