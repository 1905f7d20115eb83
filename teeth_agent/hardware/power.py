"""The power interface: the only code that reboots, powers off or kexecs.

Every action that leaves the ramdisk goes through a :class:`PowerController`.
With ``[power] simulate = true`` (tests and the demo) the actions are logged
and recorded in :attr:`PowerController.actions` instead of being carried out,
so no test can ever restart the machine it runs on.
"""

import logging

from teeth_agent import processes

LOG = logging.getLogger(__name__)


class PowerController:
    """Carries out (or, when simulating, records) power actions."""

    def __init__(self, simulate=False):
        self.simulate = simulate
        self.actions = []

    @classmethod
    def from_conf(cls, conf):
        return cls(simulate=conf.power.simulate)

    def load_kexec(self, kernel, initrd=None, cmdline=""):
        """Stage a kernel with ``kexec -l`` (harmless: nothing runs yet)."""
        argv = ["kexec", "-l", kernel, "--append=%s" % cmdline]
        if initrd:
            argv.append("--initrd=%s" % initrd)
        if self.simulate:
            self._record("kexec_load", kernel=kernel, initrd=initrd,
                         cmdline=cmdline)
            return
        processes.execute(*argv, log_level=logging.INFO)

    def kexec(self):
        """Jump into the kernel staged by :meth:`load_kexec`."""
        if self.simulate:
            self._record("kexec")
            return
        LOG.warning("executing the staged kernel (kexec -e)")
        try:
            processes.execute("kexec", "-e", log_level=logging.WARNING)
        except processes.ProcessError as exc:
            LOG.error("kexec -e failed (%s); rebooting instead", exc)
        # A successful kexec never returns; still here means it did not
        # happen, and the endpoint was told the machine boots its image.
        self.reboot()

    def reboot(self):
        if self.simulate:
            self._record("reboot")
            return
        LOG.warning("rebooting")
        processes.execute("reboot", "-f", log_level=logging.WARNING)

    def power_off(self):
        if self.simulate:
            self._record("power_off")
            return
        LOG.warning("powering off")
        processes.execute("poweroff", "-f", log_level=logging.WARNING)

    def _record(self, action, **details):
        LOG.warning("[power] simulate: would %s %s", action, details or "")
        self.actions.append(dict(action=action, **details))
