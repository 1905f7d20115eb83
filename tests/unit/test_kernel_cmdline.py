"""Agent options from the kernel command line (teeth_agent.kernel_cmdline)."""

import json
import os
import shutil
import stat
import tempfile

from oslo_config import cfg

from teeth_agent.cmd import agent as agent_cmd
from teeth_agent import conf as teeth_conf
from teeth_agent.conf import strict
from teeth_agent import kernel_cmdline
from tests import base


def registered_conf():
    conf = cfg.ConfigOpts()
    teeth_conf.register_agent_opts(conf)
    return conf


class TestSplit(base.TestCase):
    def test_whitespace_and_quotes(self):
        self.assertEqual(
            ["ro", "teeth_agent.x=a b", "quiet", "y=z"],
            kernel_cmdline.split_cmdline(
                ' ro  "teeth_agent.x=a b"\tquiet y="z"\n'))

    def test_quoted_value(self):
        self.assertEqual(["teeth_agent.agent_id=a b", "next"],
                         kernel_cmdline.split_cmdline(
                             'teeth_agent.agent_id="a b" next'))

    def test_quotes_inside_a_value_stay(self):
        # As the kernel does: a JSON value keeps its quotes.
        self.assertEqual(
            ['teeth_agent.hardware.root_device_hints={"serial":"S 1"}',
             "quiet"],
            kernel_cmdline.split_cmdline(
                'teeth_agent.hardware.root_device_hints={"serial":"S 1"} '
                'quiet'))

    def test_quoted_word_without_value(self):
        self.assertEqual(["a b", "c"],
                         kernel_cmdline.split_cmdline('"a b" c'))

    def test_empty(self):
        self.assertEqual([], kernel_cmdline.split_cmdline("  \n"))


class TestParse(base.TestCase):
    def test_groups_names_values(self):
        self.assertEqual(
            [(None, "endpoints", "10.0.2.100:9999,10.0.2.101:9999"),
             ("power", "simulate", "false"),
             ("power", "final_status_timeout", "5"),
             (None, "debug", "true")],
            kernel_cmdline.parse(
                "BOOT_IMAGE=/vmlinuz console=ttyS0 "
                "teeth_agent.endpoints=10.0.2.100:9999,10.0.2.101:9999 "
                "teeth_agent.power.simulate=false "
                "teeth_agent.power.final-status-timeout=5 "
                "teeth_agent.debug ip=dhcp"))

    def test_value_keeps_equals_signs(self):
        self.assertEqual([(None, "agent_id", "a=b")],
                         kernel_cmdline.parse("teeth_agent.agent_id=a=b"))

    def test_init_arguments_after_double_dash_are_not_read(self):
        self.assertEqual([(None, "debug", "true")], kernel_cmdline.parse(
            "teeth_agent.debug -- teeth_agent.endpoints=10.0.2.1:1"))

    def test_other_prefixes_are_not_ours(self):
        self.assertEqual([], kernel_cmdline.parse(
            "teeth_agentx.a=1 xteeth_agent.b=2 teeth_ramdisk.shell=1"))


class TestLoad(base.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)

    def cmdline(self, text):
        path = os.path.join(self.directory, "cmdline")
        with open(path, "w") as stream:
            stream.write(text + "\n")
        return path

    def test_known_and_ignored(self):
        found = kernel_cmdline.KernelCommandLine.load(
            registered_conf(), self.cmdline(
                "teeth_agent.endpoints=10.0.2.100:9999 "
                "teeth_agent.power.simulate=false "
                "teeth_agent.no_such_option=1 teeth_agent.power.nope=2 "
                "teeth_agent.nogroup.simulate=3 teeth_agent.power=4 "
                "teeth_agent.a.b.c=5"))
        self.assertEqual({"DEFAULT": {"endpoints": "10.0.2.100:9999"},
                          "power": {"simulate": "false"}}, found.options)
        self.assertEqual(["no_such_option", "power.nope",
                          "nogroup.simulate", "power", "a.b.c"],
                         found.ignored)

    def test_missing_file_means_no_options(self):
        found = kernel_cmdline.KernelCommandLine.load(
            registered_conf(), os.path.join(self.directory, "absent"))
        self.assertEqual({}, found.options)
        self.assertEqual(["--config-file", "x"],
                         found.extend_args(["--config-file", "x"],
                                           "teeth-agent", "teeth-agent"))

    def test_written_file_is_private_and_parses(self):
        found = kernel_cmdline.KernelCommandLine.load(
            registered_conf(), self.cmdline(
                "teeth_agent.enabled_extensions=decom "
                "teeth_agent.power.final_status_timeout=7.5"))
        path = found.write(os.path.join(self.directory, "run"))
        self.assertEqual(path, found.path)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        conf = registered_conf()
        conf(["--config-file", path])
        self.assertEqual(["decom"], conf.enabled_extensions)
        self.assertEqual(7.5, conf.power.final_status_timeout)

    def test_log_outcome_names_ignored_words(self):
        found = kernel_cmdline.KernelCommandLine.load(
            registered_conf(),
            self.cmdline("teeth_agent.endpoint=10.0.2.100:9999"))
        with self.assertLogs("teeth_agent.kernel_cmdline", "WARNING") as logs:
            found.log_outcome()
        self.assertIn("teeth_agent.endpoint matches no option",
                      logs.output[0])


class TestPrepare(base.TestCase):
    """The hook in ``teeth-agent``'s start-up: the kernel command line wins
    over the config files, lists are comma-separated."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory)
        self.config_file = os.path.join(self.directory, "agent.conf")
        with open(self.config_file, "w") as stream:
            stream.write("[DEFAULT]\nendpoints = 192.0.2.1:1\n"
                         "agent_id = from-file\n"
                         "[power]\nsimulate = true\n")
        # Where the generated file goes: keep it inside the test's directory.
        self.run_dir = os.path.join(self.directory, "run")
        original = kernel_cmdline.RUN_DIR
        kernel_cmdline.RUN_DIR = self.run_dir
        self.addCleanup(setattr, kernel_cmdline, "RUN_DIR", original)

    def prepare(self, cmdline_text):
        path = os.path.join(self.directory, "cmdline")
        with open(path, "w") as stream:
            stream.write(cmdline_text)
        return agent_cmd.prepare(["--config-file", self.config_file],
                                 kernel_cmdline_path=path)

    def test_kernel_command_line_overrides_the_file(self):
        conf = self.prepare(
            "console=ttyS0 teeth_agent.endpoints=10.0.2.100:9999,"
            "10.0.2.101:9998 teeth_agent.power.simulate=false")
        self.assertEqual(["10.0.2.100:9999", "10.0.2.101:9998"],
                         conf.endpoints)
        self.assertFalse(conf.power.simulate)
        # Options the command line does not name keep the file's value.
        self.assertEqual("from-file", conf.agent_id)
        self.assertEqual(
            [self.config_file,
             os.path.join(self.run_dir, kernel_cmdline.FILE_NAME)],
            conf.config_file)

    def test_no_teeth_words_changes_nothing(self):
        conf = self.prepare("console=ttyS0 ro quiet")
        self.assertEqual(["192.0.2.1:1"], conf.endpoints)
        self.assertTrue(conf.power.simulate)
        self.assertEqual([self.config_file], conf.config_file)
        self.assertFalse(os.path.exists(self.run_dir))

    def test_an_unknown_word_stops_the_start(self):
        # It used to be logged and ignored: a misspelt
        # teeth_agent.power.simulate would really reboot the machine.
        with self.assertRaises(strict.UnknownOptionError) as caught:
            self.prepare("teeth_agent.endpointz=10.0.2.100:9999")
        error = caught.exception
        self.assertEqual(1, len(error.lines))
        self.assertIn("teeth_agent.endpointz matches no option; did you "
                      "mean teeth_agent.endpoints?", error.lines[0])
        self.assertFalse(os.path.exists(self.run_dir))

    def test_json_option_from_the_kernel_command_line(self):
        conf = self.prepare(
            'teeth_agent.hardware.root_device_hints={"serial":"VDISK0001"}')
        self.assertEqual({"serial": "VDISK0001"},
                         json.loads(conf.hardware.root_device_hints))

    def test_a_bad_value_is_an_error_like_in_a_file(self):
        with self.assertRaises(strict.BadValueError) as caught:
            self.prepare("teeth_agent.power.final_status_timeout=soon")
        error = caught.exception
        self.assertEqual(1, len(error.lines))
        self.assertIn("kernel command line (", error.lines[0])
        self.assertIn("teeth_agent.power.final_status_timeout=soon is not "
                      "valid: could not convert string to float: 'soon'",
                      error.lines[0])
