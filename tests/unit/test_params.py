"""Parameter declarations: every failure names the parameter."""

from teeth_agent import params
from teeth_agent import protocol
from tests import base

IMAGE = params.Object({
    "id": params.UUID(required=True),
    "urls": params.List(params.URL(), min_items=1, required=True),
    "hashes": params.Map(params.String(pattern="[0-9a-f]+"),
                         required=True),
    "size": params.Integer(minimum=0),
})

FIELDS = {
    "task_id": params.Identifier(required=True),
    "images": params.List(IMAGE, required=True),
    "devices": params.List(params.DevicePath(), unique=True),
    "force": params.Boolean(default=False),
    "ratio": params.Number(minimum=0, maximum=1),
    "model": params.Regex(),
}

GOOD_IMAGE = {"id": "2b1c9f7e-0c5d-4c3e-9a51-7d5b0c1f2a3b",
              "urls": ["https://images.example/a.img"],
              "hashes": {"sha256": "ab" * 32}}


class ParamsTest(base.TestCase):
    def check(self, values):
        return params.validate_fields(FIELDS, values)

    def assert_invalid(self, values, param):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.check(values)
        self.assertEqual(param, caught.exception.details["param"])
        self.assertTrue(caught.exception.msg.startswith(param + ":"))
        return caught.exception

    def test_valid_with_defaults(self):
        checked = self.check({"task_id": "t-1", "images": [GOOD_IMAGE]})
        self.assertEqual(False, checked["force"])
        self.assertIsNone(checked["devices"])
        self.assertIsNone(checked["images"][0]["size"])

    def test_missing_required(self):
        self.assert_invalid({"images": []}, "task_id")

    def test_unknown_key(self):
        self.assert_invalid({"task_id": "t", "images": [], "evil": 1},
                            "evil")

    def test_path_traversal_in_ids(self):
        for bad in ("../etc", "a/b", "", ".hidden", "x" * 300, "a\\b",
                    "a\nb", "..", "."):
            self.assert_invalid({"task_id": bad, "images": []}, "task_id")
        for good in ("t1", "task 1", "#7", "a:b.c", "2b1c9f7e-0c5d"):
            self.assertEqual(good, self.check(
                {"task_id": good, "images": []})["task_id"])

    def test_url_with_unprintable_characters_is_refused_unechoed(self):
        for bad in ("https://h/a\x1b[2Jb?temp_url_sig=S1G",
                    "https://h/a\nb?sig=S1G", "https://h/a b?sig=S1G",
                    "https://h/\u00e9?sig=S1G"):
            with self.subTest(bad):
                image = dict(GOOD_IMAGE, urls=[bad])
                error = self.assert_invalid(
                    {"task_id": "t", "images": [image]}, "images[0].urls[0]")
                self.assertIn("printable ASCII", error.msg)
                self.assertNotIn("S1G", error.msg)

    def test_nested_paths_are_named(self):
        image = dict(GOOD_IMAGE, urls=["file:///etc/shadow"])
        error = self.assert_invalid({"task_id": "t", "images": [image]},
                                    "images[0].urls[0]")
        self.assertIn("http://", error.msg)
        image = dict(GOOD_IMAGE, id="not-a-uuid")
        self.assert_invalid({"task_id": "t", "images": [image]},
                            "images[0].id")
        image = dict(GOOD_IMAGE, hashes={"sha256": "XYZ"})
        self.assert_invalid({"task_id": "t", "images": [image]},
                            "images[0].hashes.sha256")

    def test_types(self):
        base_values = {"task_id": "t", "images": []}
        self.assert_invalid(dict(base_values, force="yes"), "force")
        self.assert_invalid(dict(base_values, ratio=True), "ratio")
        self.assert_invalid(dict(base_values, ratio=2), "ratio")
        self.assert_invalid(dict(base_values, images={}), "images")
        self.assert_invalid(dict(base_values, model="("), "model")
        self.assert_invalid(dict(base_values, task_id=None), "task_id")

    def test_device_paths(self):
        base_values = {"task_id": "t", "images": []}
        self.assert_invalid(dict(base_values, devices=["/dev/../etc/x"]),
                            "devices[0]")
        self.assert_invalid(dict(base_values, devices=["/dev/sd*"]),
                            "devices[0]")
        self.assert_invalid(dict(base_values, devices=["sda"]), "devices[0]")
        self.assert_invalid(dict(base_values,
                                 devices=["/dev/loop1", "/dev/loop1"]),
                            "devices[1]")
        checked = self.check(dict(base_values, devices=["/dev/loop1"]))
        self.assertEqual(["/dev/loop1"], checked["devices"])

    def test_huge_values_are_bounded(self):
        base_values = {"task_id": "t", "images": []}
        self.assert_invalid(dict(base_values, devices=["/dev/x"] * 5000),
                            "devices")
        self.assert_invalid(dict(base_values, model="a" * 100000), "model")
