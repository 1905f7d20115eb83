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
    def validate_plain(self, n):
        if n == 13:
            raise protocol.InvalidParams("n: unlucky", details={"param": "n"})
        return {"n": n * 2}

    @ext_base.task_command(params={"n": params.Integer(required=True)},
                           validator=validate_plain)
    def plain(self, task, n):
        return {}

    @ext_base.task_command(params={"n": params.Integer(required=True)},
                           validator="validate_named")
    def named(self, task, n):
        return {}

    def validate_named(self, task_id, n):
        return {"task_id": task_id, "n": len(task_id)}

    @ext_base.task_command(params={"n": params.Integer(required=True)})
    def unchecked(self, task, n):
        return {}


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

    def test_a_command_without_validator_keeps_its_params(self):
        spec = self.specs["unchecked"]
        self.assertIsNone(self.extension.validator(spec))
        self.assertEqual({"n": 13}, self.extension.validate(
            spec, {"task_id": "t", "n": 13}))

    def test_a_subclass_may_override_a_validator(self):
        class Stricter(Hooked):
            def validate_plain(self, n):
                raise protocol.InvalidParams("n: never",
                                             details={"param": "n"})
        with self.assertRaises(protocol.InvalidParams):
            Stricter(context()).validate(self.specs["plain"],
                                         {"task_id": "t", "n": 2})


def task(**params_):
    """A task command declaring ``params_`` names (all optional integers)
    whose body takes them."""
    return {name: params.Integer() for name in params_}


class ValidatorLoadErrorTest(base.TestCase):
    """A validator mistake is an error when the class is created (that is,
    when its plugin loads), never a check that silently does not run."""

    def test_a_misspelt_validator_method_is_undeclared(self):
        with self.assertRaises(ext_base.UndeclaredValidator) as caught:
            class Typo(ext_base.Extension):
                @ext_base.task_command(params={"n": params.Integer()})
                def count(self, task, n):
                    return {}

                def validate_cuont(self, n):
                    return None
        self.assertIn("Typo.validate_cuont", str(caught.exception))
        self.assertIn("did you mean it for count?", str(caught.exception))

    def test_an_old_style_validator_by_name_alone_is_refused(self):
        with self.assertRaises(ext_base.UndeclaredValidator) as caught:
            class OldStyle(ext_base.Extension):
                @ext_base.task_command(params={"n": params.Integer()})
                def count(self, task, n):
                    return {}

                def validate_count(self, n):
                    return None
        self.assertIn("no command declares it", str(caught.exception))

    def test_a_validator_name_that_is_not_a_method(self):
        with self.assertRaises(ext_base.UnknownValidator) as caught:
            class Missing(ext_base.Extension):
                @ext_base.task_command(params={"n": params.Integer()},
                                       validator="validate_cuont")
                def count(self, task, n):
                    return {}

                def validate_count(self, n):
                    return None
        self.assertIn("validate_cuont", str(caught.exception))
        self.assertIn("did you mean validate_count?", str(caught.exception))
        with self.assertRaises(ext_base.UnknownValidator):
            class NotCallable(ext_base.Extension):
                validate_count = "not a method"

                @ext_base.task_command(params={"n": params.Integer()},
                                       validator="validate_count")
                def count(self, task, n):
                    return {}

    def test_a_validator_missing_a_declared_parameter(self):
        with self.assertRaises(ext_base.ValidatorSignatureError) as caught:
            class Short(ext_base.Extension):
                def validate_pair(self, a):
                    return None

                @ext_base.task_command(params=task(a=1, b=2),
                                       validator=validate_pair)
                def pair(self, task, a, b):
                    return {}
        self.assertIn("does not accept b", str(caught.exception))

    def test_a_validator_taking_an_undeclared_parameter(self):
        with self.assertRaises(ext_base.ValidatorSignatureError) as caught:
            class Long(ext_base.Extension):
                def validate_pair(self, a, b, c=None):
                    return None

                @ext_base.task_command(params=task(a=1, b=2),
                                       validator=validate_pair)
                def pair(self, task, a, b):
                    return {}
        self.assertIn("accepts c", str(caught.exception))

    def test_a_positional_only_validator_is_refused(self):
        with self.assertRaises(ext_base.ValidatorSignatureError):
            class Positional(ext_base.Extension):
                def validate_one(self, a, /):
                    return None

                @ext_base.task_command(params=task(a=1),
                                       validator=validate_one)
                def one(self, task, a):
                    return {}

    def test_keyword_catch_all_and_task_id_are_accepted(self):
        class Flexible(ext_base.Extension):
            def validate_any(self, task_id, **rest):
                return None

            @ext_base.task_command(params=task(a=1, b=2),
                                   validator=validate_any)
            def pair(self, task, a, b):
                return {}
        spec = Flexible.command_specs()["pair"]
        self.assertEqual("validate_any", spec.validator)

    def test_a_command_is_not_a_validator(self):
        with self.assertRaises(ext_base.UnknownValidator):
            class Confused(ext_base.Extension):
                @ext_base.task_command(params=task(a=1))
                def other(self, task, a):
                    return {}

                @ext_base.task_command(params=task(a=1),
                                       validator="other")
                def one(self, task, a):
                    return {}

    def test_only_task_commands_take_a_validator(self):
        with self.assertRaises(TypeError):
            ext_base.command(params=task(a=1), validator="validate_a")
        with self.assertRaises(TypeError):
            ext_base.task_command(params=task(a=1), validator=42)(
                lambda self, task, a: {})

    def test_the_shipped_extensions_declare_their_validators(self):
        from teeth_agent.extensions import decom
        from teeth_agent.extensions import standbye
        self.assertEqual(
            {"disk_erase": "validate_disk_erase",
             "firmware_secure": "validate_firmware_secure",
             "qc": "validate_qc"},
            {attr: spec.validator for attr, spec
             in decom.DecomExtension.command_specs().items()})
        self.assertEqual(
            {"cache_images": "validate_cache_images",
             "prepare_image": "validate_prepare_image",
             "run_image": "validate_run_image"},
            {attr: spec.validator for attr, spec
             in standbye.StandbyeExtension.command_specs().items()})


class StartHookTest(base.TestCase):
    """Building an extension does no start-up work; start() does it."""

    def make(self, name, started, fail=False):
        class Recording(ext_base.Extension):
            @ext_base.command()
            def ping(self):
                return {}

            def start(self):
                started.append(name)
                if fail:
                    raise OSError("cannot read the work directory")
        return name, Recording

    def test_loading_does_not_start_and_start_runs_in_order(self):
        started = []
        loaded = extensions.instantiate(
            [self.make("first", started), self.make("second", started)],
            context())
        self.assertEqual([], started)
        extensions.start_extensions(loaded)
        self.assertEqual(["first", "second"], started)

    def test_the_default_start_does_nothing(self):
        loaded = extensions.instantiate([("sample", Sample)], context())
        extensions.start_extensions(loaded)

    def test_a_failing_start_names_the_extension_and_stops(self):
        started = []
        loaded = extensions.instantiate(
            [self.make("first", started, fail=True),
             self.make("second", started)], context())
        with self.assertLogs("teeth_agent.extensions", "ERROR"):
            with self.assertRaises(extensions.ExtensionStartError) as caught:
                extensions.start_extensions(loaded)
        self.assertIsInstance(caught.exception, extensions.ExtensionLoadError)
        self.assertIn("first failed to start", str(caught.exception))
        self.assertIn("cannot read the work directory",
                      str(caught.exception))
        self.assertEqual(["first"], started)

    def test_build_agent_starts_what_it_loaded(self):
        from teeth_agent.cmd import agent as agent_cmd
        conf = base.make_conf()
        loaded = {"x": mock.Mock()}
        with mock.patch.object(agent_cmd, "tls_context"), \
                mock.patch.object(agent_cmd.hardware, "load_managers"), \
                mock.patch("teeth_agent.hardware.inventory."
                           "hardware_summary", return_value={"macs": []}), \
                mock.patch.object(agent_cmd.extensions, "load_extensions",
                                  return_value=loaded), \
                mock.patch.object(agent_cmd.agent_mod, "Agent") as agent:
            conf.set_override("agent_id", "agent-1")
            conf.set_override("state_dir", "")  # memory only
            agent_cmd.build_agent(conf)
        loaded["x"].start.assert_called_once_with()
        self.assertIs(loaded, agent.call_args[0][2])
