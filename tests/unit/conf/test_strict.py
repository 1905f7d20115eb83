"""Strict configuration (teeth_agent.conf.strict) and its hook in the
console scripts' start-up."""

import io
import logging as std_logging
import os
import re
import shutil
import sys
import tempfile
from unittest import mock

from oslo_config import cfg
import stevedore

from teeth_agent.cmd import agent as agent_cmd
from teeth_agent.cmd import endpoint as endpoint_cmd
from teeth_agent import conf as teeth_conf
from teeth_agent.conf import strict
from teeth_agent import kernel_cmdline
from tests import base

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
SAMPLES = {
    "agent": os.path.join(REPO_ROOT, "etc", "teeth-agent",
                          "teeth-agent.conf.sample"),
    "endpoint": os.path.join(REPO_ROOT, "etc", "teeth-agent",
                             "teeth-endpoint.conf.sample"),
}
RAMDISK_CONF = os.path.join(REPO_ROOT, "tools", "ramdisk", "teeth-agent.conf")

PLUGIN_MODULE = '''
from oslo_config import cfg


def list_opts():
    return [("strictvendor", [cfg.StrOpt("flash_tool",
                                         help="The flashing tool.")])]


class Manager:
    pass
'''


def agent_conf():
    conf = cfg.ConfigOpts()
    teeth_conf.register_agent_opts(conf)
    conf.register_cli_opts(agent_cmd.cli_opts)
    return conf


class TempDirCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as stream:
            stream.write(text)
        return path


class TestKnownOptions(base.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent = strict.KnownOptions.for_conf(
            agent_conf(), strict.AGENT_NAMESPACES, plugins=True)
        endpoint = cfg.ConfigOpts()
        teeth_conf.register_endpoint_opts(endpoint)
        cls.endpoint = strict.KnownOptions.for_conf(
            endpoint, strict.ENDPOINT_NAMESPACES)

    def test_namespace_data_has_the_agent_options(self):
        data = strict.namespace_opt_data(strict.AGENT_NAMESPACES)
        names = {opt["name"] for opt in data["options"]["power"]["opts"]}
        self.assertEqual({"simulate", "final_status_timeout"}, names)

    def test_oslo_log_options_are_known(self):
        for name in ("debug", "log_file", "log-file", "log_dir",
                     "use_journal", "default_log_levels"):
            self.assertTrue(self.agent.has_option("DEFAULT", name), name)
            self.assertTrue(self.endpoint.has_option(None, name), name)
        # Deprecated names still work in oslo.log, so they are known.
        self.assertTrue(self.agent.has_option("DEFAULT", "logfile"))

    def test_command_line_options_are_known(self):
        # Registered on the ConfigOpts, though in no namespace.
        self.assertTrue(self.agent.has_option("DEFAULT", "action"))

    def test_the_agent_does_not_take_the_endpoints_section(self):
        self.assertFalse(self.agent.has_section("endpoint"))
        self.assertFalse(self.endpoint.has_section("power"))

    def test_sections_compare_as_oslo_config_reads_them(self):
        self.assertTrue(self.agent.has_option("POWER", "simulate"))
        # oslo.config reads [default] as a group called "default", not as
        # DEFAULT.
        self.assertFalse(self.agent.has_section("default"))

    def test_suggestions(self):
        self.assertEqual(("power", "simulate"),
                         self.agent.suggest_option("power", "simulat"))
        self.assertEqual(("hardware", "device_include"),
                         self.agent.suggest_option("hardware",
                                                   "device_includes"))
        self.assertEqual(("endpoint", "tls_enabled"),
                         self.endpoint.suggest_option("endpoint",
                                                      "tls_enable"))
        self.assertEqual("power", self.agent.suggest_section("powr"))
        self.assertEqual("DEFAULT", self.agent.suggest_section("default"))
        # The right name in the wrong section points at its section.
        self.assertEqual(("power", "simulate"),
                         self.agent.suggest_option("DEFAULT", "simulate"))
        self.assertIsNone(self.agent.suggest_option("power", "zzzzqq"))

    def test_registered_options_are_known_without_namespaces(self):
        known = strict.KnownOptions.for_conf(agent_conf(), ())
        self.assertTrue(known.has_option("power", "simulate"))
        self.assertFalse(known.has_option("power", "simulat"))


class TestCheckFiles(TempDirCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.known = strict.KnownOptions.for_conf(
            agent_conf(), strict.AGENT_NAMESPACES, plugins=True)

    def check(self, text):
        return strict.check_files([self.write("agent.conf", text)],
                                  self.known)

    def refused(self, text):
        with self.assertRaises(strict.UnknownOptionError) as caught:
            self.check(text)
        return caught.exception

    def test_unknown_option_names_file_section_option_and_guess(self):
        error = self.refused("[power]\nsimulat = true\n")
        path = os.path.join(self.directory, "agent.conf")
        self.assertEqual(["%s: [power] simulat is not a known option; did "
                          "you mean simulate?" % path], error.lines)
        self.assertEqual([(path, "power", "simulat", ("power", "simulate"),
                           ())], error.unknown)

    def test_every_unknown_name_is_listed_once(self):
        error = self.refused("[power]\nsimulat = true\n"
                             "[hardware]\ndevice_includes = /dev/loop*\n"
                             "device_includes = /dev/vd*\n")
        self.assertEqual(2, len(error.lines))
        self.assertIn("[hardware] device_includes is not a known option; "
                      "did you mean device_include?", error.lines[1])

    def test_unknown_section(self):
        error = self.refused("[powr]\nsimulate = true\n")
        self.assertEqual(1, len(error.lines))
        self.assertIn("[powr] is not a known section (it sets simulate); "
                      "did you mean [power]?", error.lines[0])

    def test_empty_unknown_section(self):
        error = self.refused("[DEFAULT]\ndebug = true\n[tsl]\n")
        self.assertIn("[tsl] is not a known section; did you mean [tls]?",
                      error.lines[0])

    def test_wrong_section(self):
        error = self.refused("[DEFAULT]\nsimulate = true\n")
        self.assertIn("[DEFAULT] simulate is not a known option; did you "
                      "mean [power] simulate?", error.lines[0])

    def test_a_valid_file_with_oslo_log_options_passes(self):
        parsed = self.check(
            "[DEFAULT]\ndebug = true\nlog_file = /tmp/x.log\n"
            "log_dir = /tmp\nuse_stderr = false\nlogfile = /tmp/y.log\n"
            "default_log_levels = a=WARN\nendpoints = 127.0.0.1:1\n"
            "[power]\nsimulate = true\n"
            "[hardware]\ndevice_include = /nonexistent\n"
            "[POWER]\nfinal_status_timeout = 3\n")
        self.assertEqual(1, len(parsed))

    def test_shipped_samples_pass_even_uncommented(self):
        # The samples are all comments; with every "#option = default"
        # line uncommented, each documented option must be accepted.
        for kind, sample in SAMPLES.items():
            known = self.known
            if kind == "endpoint":
                conf = cfg.ConfigOpts()
                teeth_conf.register_endpoint_opts(conf)
                known = strict.KnownOptions.for_conf(
                    conf, strict.ENDPOINT_NAMESPACES)
            with open(sample) as stream:
                text = stream.read()
            strict.check_files([sample], known)
            uncommented = re.sub(r"^#([A-Za-z_][\w-]*) =", r"\1 =", text,
                                 flags=re.MULTILINE)
            self.assertIn("\n[DEFAULT]\n", "\n" + uncommented)
            path = self.write(kind + ".conf", uncommented)
            parsed = strict.check_files([path], known)
            self.assertGreater(sum(len(options) for options in
                                   parsed[0][1].values()), 10)

    def test_ramdisk_configuration_passes(self):
        strict.check_files([RAMDISK_CONF], self.known)

    def test_unparsable_file(self):
        with self.assertRaises(strict.ConfigSourceError) as caught:
            self.check("simulate = true\n")
        self.assertIn("cannot parse", str(caught.exception))


class TestPluginNamespaces(TempDirCase):
    """A plugin distribution's oslo.config.opts namespace is accepted by the
    agent; another distribution's is not."""

    def install(self, name, entry_points):
        self.write("%s.py" % name, PLUGIN_MODULE)
        dist = "%s-1.0.dist-info" % name
        self.write(os.path.join(dist, "METADATA"),
                   "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name)
        self.write(os.path.join(dist, "entry_points.txt"), entry_points)

    def setUp(self):
        super().setUp()
        self.install("strictvendor", "[teeth_agent.hardware_managers]\n"
                     "strictvendor = strictvendor:Manager\n"
                     "[oslo.config.opts]\n"
                     "strictvendor = strictvendor:list_opts\n")
        self.install("strictother", "[oslo.config.opts]\n"
                     "strictother = strictvendor:list_opts\n")
        sys.path.insert(0, self.directory)
        self.addCleanup(sys.path.remove, self.directory)
        # stevedore (which the sample generator loads namespaces with)
        # caches each entry-point group for the life of the process; a
        # console script starts after its plugins are installed, a test
        # installs one on the way.
        self.forget_entry_points()
        self.addCleanup(self.forget_entry_points)

    @staticmethod
    def forget_entry_points():
        stevedore.ExtensionManager.ENTRY_POINT_CACHE.pop(
            "oslo.config.opts", None)

    def test_plugin_sections_are_known(self):
        self.assertIn("strictvendor", strict.plugin_namespaces())
        self.assertNotIn("strictother", strict.plugin_namespaces())
        self.assertNotIn("teeth_agent.endpoint", strict.plugin_namespaces())
        known = strict.KnownOptions.for_conf(
            agent_conf(), strict.AGENT_NAMESPACES, plugins=True)
        self.assertTrue(known.has_option("strictvendor", "flash_tool"))
        strict.check_files([self.write(
            "agent.conf", "[strictvendor]\nflash_tool = /bin/true\n")],
            known)
        self.assertEqual(("strictvendor", "flash_tool"),
                         known.suggest_option("strictvendor", "flash_tol"))

    def test_a_broken_plugin_namespace_is_one_error(self):
        self.install("strictbroken", "[teeth_agent.extensions]\n"
                     "strictbroken = strictbroken_missing:Extension\n"
                     "[oslo.config.opts]\n"
                     "strictbroken = strictbroken_missing:list_opts\n")
        self.forget_entry_points()
        with self.assertRaises(strict.NamespaceLoadError) as caught:
            strict.KnownOptions.for_conf(
                agent_conf(), strict.AGENT_NAMESPACES, plugins=True)
        self.assertIn("cannot load the options of", str(caught.exception))
        self.assertIn("ModuleNotFoundError", str(caught.exception))

    def test_without_plugins_the_section_is_refused(self):
        known = strict.KnownOptions.for_conf(
            agent_conf(), strict.AGENT_NAMESPACES, plugins=False)
        self.assertFalse(known.has_section("strictvendor"))


class PrepareCase(TempDirCase):
    def setUp(self):
        super().setUp()
        self.run_dir = os.path.join(self.directory, "run")
        original = kernel_cmdline.RUN_DIR
        kernel_cmdline.RUN_DIR = self.run_dir
        self.addCleanup(setattr, kernel_cmdline, "RUN_DIR", original)
        self.cmdline = self.write("cmdline", "console=ttyS0\n")
        self.good = self.write(
            "agent.conf", "[DEFAULT]\nendpoints = 127.0.0.1:1\n"
            "debug = false\n[power]\nsimulate = true\n")

    def prepare(self, *args):
        return agent_cmd.prepare(list(args),
                                 kernel_cmdline_path=self.cmdline)

    def refused(self, error_type, *args):
        with self.assertRaises(error_type) as caught:
            self.prepare(*args)
        return caught.exception


class TestAgentPrepare(PrepareCase):
    def test_valid(self):
        conf = self.prepare("--config-file", self.good)
        self.assertTrue(conf.power.simulate)

    def test_config_file_twice(self):
        conf = self.prepare("--config-file", self.good,
                            "--config-file", self.good)
        self.assertEqual(["127.0.0.1:1"], conf.endpoints)

    def test_missing_config_file(self):
        missing = os.path.join(self.directory, "absent.conf")
        error = self.refused(strict.ConfigSourceError,
                             "--config-file", missing)
        self.assertEqual(["configuration file not found: %s" % missing],
                         error.lines)

    def test_unknown_option_in_config_dir(self):
        conf_dir = os.path.join(self.directory, "agent.conf.d")
        self.write("agent.conf.d/10-power.conf", "[power]\nsimulat = true\n")
        self.write("agent.conf.d/notes.txt", "[nothing]\nread = here\n")
        error = self.refused(strict.UnknownOptionError,
                             "--config-file", self.good,
                             "--config-dir", conf_dir)
        self.assertEqual(1, len(error.lines))
        self.assertIn("10-power.conf: [power] simulat", error.lines[0])

    def test_valid_config_dir(self):
        conf_dir = os.path.join(self.directory, "agent.conf.d")
        self.write("agent.conf.d/10-power.conf",
                   "[power]\nfinal_status_timeout = 4\n")
        conf = self.prepare("--config-file", self.good,
                            "--config-dir=" + conf_dir)
        self.assertEqual(4, conf.power.final_status_timeout)

    def test_missing_config_dir(self):
        error = self.refused(strict.ConfigSourceError,
                             "--config-dir",
                             os.path.join(self.directory, "absent.d"))
        self.assertIn("configuration directory", error.lines[0])

    def test_bad_value_names_file_option_and_reason(self):
        path = self.write("bad.conf", "[decom]\nerase_concurrency = abc\n")
        error = self.refused(strict.BadValueError, "--config-file", path)
        self.assertEqual(
            ["%s: [decom] erase_concurrency = abc is not valid: invalid "
             "literal for int() with base 10: 'abc'" % path], error.lines)

    def test_bad_value_of_a_choice(self):
        path = self.write("bad.conf",
                          "[DEFAULT]\nlog_forward_level = LOUD\n")
        error = self.refused(strict.BadValueError, "--config-file", path)
        self.assertIn("[DEFAULT] log_forward_level = LOUD is not valid",
                      error.lines[0])

    def test_bad_oslo_log_value(self):
        path = self.write("bad.conf", "[DEFAULT]\ndebug = maybe\n")
        error = self.refused(strict.BadValueError, "--config-file", path)
        self.assertIn("[DEFAULT] debug = maybe is not valid", error.lines[0])

    def test_the_last_file_that_sets_a_value_is_named(self):
        path = self.write("bad.conf", "[power]\nfinal_status_timeout = x\n")
        error = self.refused(strict.BadValueError, "--config-file",
                             self.good, "--config-file", path)
        self.assertTrue(error.lines[0].startswith(path + ": "))

    def test_environment_variable_value(self):
        with mock.patch.dict(os.environ,
                             {"OS_POWER__FINAL_STATUS_TIMEOUT": "7"}):
            conf = self.prepare("--config-file", self.good)
        self.assertEqual(7, conf.power.final_status_timeout)

    def test_bad_environment_variable_value(self):
        with mock.patch.dict(os.environ,
                             {"OS_POWER__FINAL_STATUS_TIMEOUT": "soon"}):
            error = self.refused(strict.BadValueError,
                                 "--config-file", self.good)
        self.assertIn("environment variable "
                      "OS_POWER__FINAL_STATUS_TIMEOUT=soon is not valid",
                      error.lines[0])

    def test_unknown_kernel_word_is_refused_before_the_files(self):
        self.cmdline = self.write(
            "cmdline", "teeth_agent.power.simulat=true "
            "teeth_agent.hardware.device_includes=/dev/loop* "
            "teeth_agent.powr.simulate=false teeth_agent.tlss.x=1\n")
        error = self.refused(strict.UnknownOptionError,
                             "--config-file", self.good)
        self.assertEqual(
            ["teeth_agent.power.simulat matches no option; did you mean "
             "teeth_agent.power.simulate?",
             "teeth_agent.hardware.device_includes matches no option; did "
             "you mean teeth_agent.hardware.device_include?",
             "teeth_agent.powr.simulate matches no option; did you mean "
             "teeth_agent.power.simulate?",
             "teeth_agent.tlss.x matches no option; did you mean "
             "teeth_agent.tls.<option>?"],
            [line.split(": ", 1)[1] for line in error.lines])
        self.assertTrue(error.lines[0].startswith(
            "kernel command line (%s)" % self.cmdline))
        # Nothing was written for a refused command line.
        self.assertFalse(os.path.exists(self.run_dir))

    def test_known_kernel_words_and_oslo_log_words_pass(self):
        self.cmdline = self.write(
            "cmdline", "teeth_agent.debug teeth_agent.power.simulate=true "
            "teeth_agent.decom.erase_concurrency=2\n")
        conf = self.prepare("--config-file", self.good)
        self.assertTrue(conf.debug)
        self.assertEqual(2, conf.decom.erase_concurrency)

    def test_unreadable_sources_are_one_error(self):
        binary = self.write("binary.conf", "")
        with open(binary, "wb") as stream:
            stream.write(b"[power]\nsimulate = \xe9\n")
        for args, expected in (
                (("--config-file", self.directory),
                 "configuration file %s is a directory" % self.directory),
                (("--config-file", binary), "cannot read %s: not UTF-8 text "
                 "(byte 0xe9 at offset 19)" % binary),
                (("--config-dir", self.good), "configuration directory %s "
                 "is not a directory" % self.good)):
            with self.subTest(args):
                error = self.refused(strict.ConfigSourceError, *args)
                self.assertEqual([expected], error.lines)

    def test_logged_server_text_is_escaped(self):
        # The ramdisk console and the log file are an operator's terminal:
        # text an image server or the endpoint chose (a reason phrase, a
        # URL) must not forge a line nor send terminal escapes.
        log_file = os.path.join(self.directory, "agent.log")
        path = self.write("log.conf", "[DEFAULT]\nendpoints = 127.0.0.1:1\n"
                          "log_file = %s\n[power]\nsimulate = true\n"
                          % log_file)
        self.prepare("--config-file", path)
        root = std_logging.getLogger()
        self.addCleanup(lambda: [root.removeHandler(h) or h.close()
                                 for h in list(root.handlers)
                                 if getattr(h, "baseFilename", None)
                                 == log_file])
        std_logging.getLogger("teeth_agent.fetch.download").warning(
            "not downloading from %s: %s", "http://h/x",
            "HTTP 404 \x1b[2J\x1b[31mGone\n2026-12-01 00:00:00 CRITICAL "
            "forged\u202e")
        for handler in root.handlers:
            handler.flush()
        with open(log_file) as stream:
            text = stream.read()
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\u202e", text)
        self.assertEqual(1, text.count("\n"), text)
        self.assertIn("HTTP 404 \\x1b[2J\\x1b[31mGone\\n2026-12-01", text)

    def test_logging_that_cannot_be_set_up(self):
        path = self.write("log.conf", "[DEFAULT]\nlog_file = %s\n"
                          % os.path.join(self.directory, "no", "dir", "x"))
        error = self.refused(strict.ConfigSourceError,
                             "--config-file", path)
        self.assertIn("cannot set up logging", error.lines[0])


class TestMain(PrepareCase):
    """The common error exit of the console scripts: one line per problem
    on stderr, prefixed with the program, status 2."""

    def test_agent_main(self):
        path = self.write("bad.conf", "[power]\nsimulat = true\n")
        stderr = io.StringIO()
        with mock.patch.object(sys, "stderr", stderr), \
                mock.patch.object(agent_cmd, "build_agent") as build:
            status = agent_cmd.main(["--config-file", path])
        self.assertEqual(2, status)
        build.assert_not_called()
        self.assertEqual(
            "teeth-agent: %s: [power] simulat is not a known option; did "
            "you mean simulate?\n" % path, stderr.getvalue())

    def test_endpoint_main_every_subcommand(self):
        path = self.write("endpoint.conf", "[endpoint]\ntls_enable = true\n")
        for args in (["serve"], ["agents"], ["call", "a", "ping"]):
            stderr = io.StringIO()
            with mock.patch.object(sys, "stderr", stderr), \
                    mock.patch.object(endpoint_cmd, "serve") as serve:
                status = endpoint_cmd.main(["--config-file", path] + args)
            self.assertEqual(2, status, args)
            serve.assert_not_called()
            self.assertEqual(
                "teeth-endpoint: %s: [endpoint] tls_enable is not a known "
                "option; did you mean tls_enabled?\n" % path,
                stderr.getvalue())
