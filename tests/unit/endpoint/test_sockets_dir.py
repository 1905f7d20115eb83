"""The control-socket paths of several serve processes."""

import os
import tempfile
import unittest

from teeth_agent.endpoint import sockets_dir


class TestPaths(unittest.TestCase):
    def test_one_process_keeps_the_configured_path(self):
        self.assertEqual("/run/x/control.sock",
                         sockets_dir.serve_socket("/run/x/control.sock",
                                                  False, pid=7))

    def test_a_shared_port_adds_the_pid(self):
        self.assertEqual("/run/x/control.7.sock",
                         sockets_dir.serve_socket("/run/x/control.sock",
                                                  True, pid=7))
        self.assertEqual("/run/x/ctl.7.sock",
                         sockets_dir.process_socket("/run/x/ctl", 7))

    def test_candidates_are_the_configured_path_then_the_newest(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "control.sock")
            for name, mtime in (("control.11.sock", 100),
                                ("control.12.sock", 300),
                                ("control.x.sock", 400),
                                ("other.13.sock", 500),
                                ("control.13.sock", 200)):
                full = os.path.join(directory, name)
                open(full, "w").close()
                os.utime(full, (mtime, mtime))
            self.assertEqual(
                [path] + [os.path.join(directory, name) for name in
                          ("control.12.sock", "control.13.sock",
                           "control.11.sock")],
                sockets_dir.candidates(path))

    def test_a_directory_name_with_glob_characters_is_literal(self):
        with tempfile.TemporaryDirectory() as directory:
            odd = os.path.join(directory, "a[b]*")
            os.mkdir(odd)
            open(os.path.join(odd, "control.5.sock"), "w").close()
            path = os.path.join(odd, "control.sock")
            self.assertEqual([path, os.path.join(odd, "control.5.sock")],
                             sockets_dir.candidates(path))
