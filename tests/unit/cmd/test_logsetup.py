"""teeth_agent.cmd.logsetup: the console scripts' logs go to stderr (or
where [DEFAULT] log_file and friends say), never to stdout, which is for
what a command prints; and teeth_agent.cmd.output: a closed stdout ends a
command quietly."""

import io
import logging
import os
import shutil
import sys
import tempfile
from unittest import mock

from oslo_config import cfg
from oslo_log import log

from teeth_agent.cmd import logsetup
from teeth_agent.cmd import output
from tests import base


class TestSetupLogging(base.TestCase):
    def setUp(self):
        super().setUp()
        root = logging.getLogger()
        saved = (list(root.handlers), root.level)

        def restore():
            for handler in list(root.handlers):
                root.removeHandler(handler)
                if handler not in saved[0]:
                    handler.close()
            for handler in saved[0]:
                root.addHandler(handler)
            root.setLevel(saved[1])
        self.addCleanup(restore)
        self.dir = tempfile.mkdtemp(prefix="teeth-logsetup-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        for name, stream in (("stdout", self.stdout),
                             ("stderr", self.stderr)):
            patcher = mock.patch.object(sys, name, stream)
            patcher.start()
            self.addCleanup(patcher.stop)

    def setup(self, **options):
        conf = cfg.ConfigOpts()
        log.register_options(conf)
        conf([], project="teeth-agent", prog="teeth-endpoint",
             default_config_files=[], default_config_dirs=[])
        for name, value in options.items():
            conf.set_override(name, value)
        logsetup.setup_logging(conf, "teeth-endpoint")
        logging.getLogger("teeth_agent.test").warning("a log line")
        return conf

    def test_console_logs_go_to_stderr(self):
        self.setup()
        self.assertEqual("", self.stdout.getvalue())
        self.assertIn("WARNING teeth_agent.test [-] a log line",
                      self.stderr.getvalue())

    def test_use_stderr_writes_each_line_once(self):
        self.setup(use_stderr=True)
        self.assertEqual("", self.stdout.getvalue())
        self.assertEqual(1, self.stderr.getvalue().count("a log line"))

    def test_log_file_still_gets_the_logs_and_only_it(self):
        path = os.path.join(self.dir, "endpoint.log")
        self.setup(log_file=path)
        for handler in logging.getLogger().handlers:
            handler.flush()
        with open(path) as stream:
            self.assertIn("a log line", stream.read())
        self.assertEqual(("", ""), (self.stdout.getvalue(),
                                    self.stderr.getvalue()))

    def test_a_log_config_file_pointing_at_stdout_is_kept(self):
        path = os.path.join(self.dir, "logging.conf")
        with open(path, "w") as stream:
            stream.write(
                "[loggers]\nkeys = root\n[handlers]\nkeys = out\n"
                "[formatters]\nkeys = plain\n"
                "[logger_root]\nlevel = INFO\nhandlers = out\n"
                "[handler_out]\nclass = StreamHandler\n"
                "args = (sys.stdout,)\nformatter = plain\n"
                "[formatter_plain]\nformat = %(message)s\n")
        self.setup(log_config_append=path)
        self.assertIn("a log line", self.stdout.getvalue())

    def test_logs_off_stdout_moves_only_stdout_handlers(self):
        logger = logging.getLogger("teeth_agent.test.off")
        to_stdout = logging.StreamHandler(sys.stdout)
        to_file = logging.StreamHandler(io.StringIO())
        for handler in (to_stdout, to_file):
            logger.addHandler(handler)
            self.addCleanup(logger.removeHandler, handler)
        self.assertEqual(1, logsetup.logs_off_stdout(logger))
        self.assertIs(sys.stderr, to_stdout.stream)
        self.assertIsNot(sys.stderr, to_file.stream)


class TestClosedStdout(base.TestCase):
    def pipe_as_stdout(self, close_reader):
        reader, writer = os.pipe()
        stream = io.TextIOWrapper(io.FileIO(writer, "w"), encoding="utf-8")
        self.addCleanup(stream.close)
        if close_reader:
            os.close(reader)
        else:
            self.addCleanup(os.close, reader)
        patcher = mock.patch.object(sys, "stdout", stream)
        patcher.start()
        self.addCleanup(patcher.stop)
        return stream

    def test_a_closed_stdout_ends_the_command_with_141(self):
        stream = self.pipe_as_stdout(close_reader=True)

        def main(lines):
            for number in range(lines):
                print('{"line": %d}' % number)
            return 0
        self.assertEqual(output.EXIT_CLOSED_STDOUT, output.run(main, 10 ** 6))
        self.assertEqual(141, output.EXIT_CLOSED_STDOUT)
        # stdout now leads to /dev/null: the flush at exit cannot fail
        # again.
        self.assertFalse(output.stdout_closed(stream))
        self.assertEqual(os.path.realpath(os.devnull), os.path.realpath(
            "/proc/self/fd/%d" % stream.fileno()))
        print("more")
        stream.flush()

    def test_a_broken_pipe_elsewhere_is_raised_on(self):
        stream = self.pipe_as_stdout(close_reader=False)
        self.assertFalse(output.stdout_closed(stream))

        def main():
            raise BrokenPipeError(32, "the control socket went away")
        self.assertRaises(BrokenPipeError, output.run, main)

    def test_a_stdout_without_a_descriptor_is_not_closed(self):
        self.assertFalse(output.stdout_closed(io.StringIO()))

    def test_the_exit_status_is_passed_on(self):
        self.assertEqual(3, output.run(lambda: 3))
