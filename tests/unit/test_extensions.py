"""Command declaration, extension loading and the agent's method table."""

from unittest import mock

from teeth_agent import extensions
from teeth_agent.extensions import base as ext_base
from teeth_agent import params
from teeth_agent import protocol
from tests import base


class Sample(ext_base.Extension):
    @ext_base.command(params={"text": params.String(required=True)})
    def echo(self, text):
        return {"text": text}

    @ext_base.task_command(params={"n": params.Integer(minimum=1)},
                           exclusive=True)
    def count(self, task, n):
        return {"n": n}

    def not_a_command(self):
        return "never reachable"


class NoCommands(ext_base.Extension):
    pass


class Exploding(ext_base.Extension):
    @ext_base.command()
    def boom(self):
        return {}

    def __init__(self, context):
        raise RuntimeError("no hardware for me")


def context():
    return ext_base.ExtensionContext(conf=None, hardware=None, tasks=None,
                                     power=None)


class DeclarationTest(base.TestCase):
    def test_specs(self):
        specs = Sample.command_specs()
        self.assertEqual({"echo", "count"}, set(specs))
        self.assertFalse(specs["echo"].is_task)
        self.assertTrue(specs["count"].is_task)
        self.assertTrue(specs["count"].exclusive)
        self.assertIn("task_id", specs["count"].params)

    def test_signature_must_match_declaration(self):
        with self.assertRaises(TypeError):
            @ext_base.command(params={"a": params.String()})
            def wrong(self, b):
                return {}

    def test_wire_names(self):
        (name, extension), = extensions.instantiate(
            [("sample", Sample)], context()).items()
        self.assertEqual({"sample.echo", "sample.count"},
                         set(extension.commands()))

    def test_check_params(self):
        spec = Sample.command_specs()["count"]
        with self.assertRaises(protocol.InvalidParams) as caught:
            ext_base.check_params(spec, {"n": 0, "task_id": "t"})
        self.assertEqual("n", caught.exception.details["param"])
        with self.assertRaises(protocol.InvalidParams):
            ext_base.check_params(spec, {"n": 1})


class LoadingTest(base.TestCase):
    def test_unknown_name_lists_available(self):
        with mock.patch.object(extensions, "available_extensions",
                               return_value=["decom", "standbye"]):
            with self.assertRaises(extensions.ExtensionLoadError) as caught:
                extensions.load_extensions(["decom", "bogus"], context())
        self.assertIn("bogus", str(caught.exception))
        self.assertIn("available: decom, standbye", str(caught.exception))

    def test_bad_plugins_fail_loudly(self):
        for name, plugin, words in (
                ("notclass", object(), "not a teeth_agent Extension"),
                ("empty", NoCommands, "exposes no command"),
                ("exploding", Exploding, "no hardware for me")):
            with self.assertRaises(extensions.ExtensionLoadError) as caught:
                extensions.instantiate([(name, plugin)], context())
            self.assertIn(name, str(caught.exception))
            self.assertIn(words, str(caught.exception))

    def test_import_failure_is_reported(self):
        failing = mock.Mock()

        def fake_manager(namespace, names, on_load_failure_callback, **kw):
            entrypoint = mock.Mock(value="broken_mod:Thing")
            entrypoint.name = "broken"
            on_load_failure_callback(None, entrypoint,
                                     ImportError("no module broken_mod"))
            return []
        with mock.patch.object(extensions, "available_extensions",
                               return_value=["broken"]), \
                mock.patch.object(extensions.stevedore,
                                  "NamedExtensionManager", fake_manager):
            with self.assertRaises(extensions.ExtensionLoadError) as caught:
                extensions.load_extensions(["broken"], context())
        self.assertIn("broken (broken_mod:Thing)", str(caught.exception))
        self.assertIn("no module broken_mod", str(caught.exception))
        failing.assert_not_called()


class Hooked(ext_base.Extension):
    @ext_base.task_command(params={"n": params.Integer(required=True)})
    def plain(self, task, n):
        return {}

    def validate_plain(self, n):
        if n == 13:
            raise protocol.InvalidParams("n: unlucky", details={"param": "n"})
        return {"n": n * 2}

    @ext_base.task_command(params={"n": params.Integer(required=True)})
    def named(self, task, n):
        return {}

    def validate_named(self, task_id, n):
        return {"task_id": task_id, "n": len(task_id)}


class ValidateHookTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.extension = Hooked(context())
        self.specs = Hooked.command_specs()

    def test_hook_without_task_id(self):
        spec = self.specs["plain"]
        self.assertEqual({"n": 4}, self.extension.validate(
            spec, {"task_id": "t", "n": 2}))
        self.assertRaises(protocol.InvalidParams, self.extension.validate,
                          spec, {"task_id": "t", "n": 13})

    def test_hook_naming_task_id_gets_it_and_result_drops_it(self):
        self.assertEqual({"n": 5}, self.extension.validate(
            self.specs["named"], {"task_id": "abcde", "n": 1}))
