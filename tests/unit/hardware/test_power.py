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
