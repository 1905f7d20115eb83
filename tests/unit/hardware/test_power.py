"""The power interface: simulation records, real actions go through tools."""

from unittest import mock

from teeth_agent.hardware import power
from teeth_agent import processes
from tests import base


class PowerTest(base.TestCase):
    def test_simulate_records_and_runs_nothing(self):
        controller = power.PowerController(simulate=True)
        controller.load_kexec("/k", "/i", "root=UUID=x ro")
        controller.kexec()
        controller.reboot()
        controller.power_off()
        self.assertEqual(["kexec_load", "kexec", "reboot", "power_off"],
                         [a["action"] for a in controller.actions])
        self.assertEqual("/k", controller.actions[0]["kernel"])

    def test_failed_kexec_falls_back_to_reboot(self):
        controller = power.PowerController(simulate=False)
        calls = []

        def fake_execute(*argv, **kwargs):
            calls.append(argv)
            if argv[:2] == ("kexec", "-e"):
                raise processes.ProcessError(argv, 1, stderr="no kernel")
            return "", ""
        with mock.patch.object(processes, "execute", fake_execute):
            controller.kexec()
        self.assertEqual([("kexec", "-e"), ("reboot", "-f")], calls)

    def test_load_kexec_arguments(self):
        controller = power.PowerController(simulate=False)
        with mock.patch.object(processes, "execute") as execute:
            controller.load_kexec("/k", "/i", "quiet")
        execute.assert_called_once_with(
            "kexec", "-l", "/k", "--append=quiet", "--initrd=/i",
            log_level=mock.ANY)

    def test_load_kexec_file_load_uses_kexec_s(self):
        controller = power.PowerController(simulate=False)
        with mock.patch.object(processes, "execute") as execute:
            controller.load_kexec("/k", None, "quiet", file_load=True)
        execute.assert_called_once_with(
            "kexec", "-s", "-l", "/k", "--append=quiet", log_level=mock.ANY)

    def test_signature_rejection_is_its_own_error(self):
        controller = power.PowerController(simulate=False)
        for stderr in ("kexec_file_load failed: Key was rejected by service",
                       "kexec_file_load failed: Required key not available",
                       "kexec_load failed: Operation not permitted"):
            error = processes.ProcessError(["kexec"], 255, stderr=stderr)
            with mock.patch.object(processes, "execute", side_effect=error):
                with self.assertRaises(power.KexecRejected):
                    controller.load_kexec("/k", None, "", file_load=True)
        error = processes.ProcessError(["kexec"], 255,
                                       stderr="Cannot open /k: No such file")
        with mock.patch.object(processes, "execute", side_effect=error):
            with self.assertRaises(processes.ProcessError) as caught:
                controller.load_kexec("/k", None, "", file_load=True)
        self.assertNotIsInstance(caught.exception, power.KexecRejected)

    def test_simulated_file_load_is_recorded(self):
        controller = power.PowerController(simulate=True)
        controller.load_kexec("/k", None, "", file_load=True)
        self.assertTrue(controller.actions[0]["file_load"])
