"""The power interface: the only code that reboots, powers off or kexecs.

Every action that leaves the ramdisk goes through a :class:`PowerController`.
With ``[power] simulate = true`` (tests and the demo) the actions are logged
and recorded in :attr:`PowerController.actions` instead of being carried out,
so no test can ever restart the machine it runs on.
"""

import logging

from teeth_agent import processes

LOG = logging.getLogger(__name__)

# What kexec-tools prints (strerror) when the kernel refuses a load for its
# signature (EKEYREJECTED, ENOKEY, EBADMSG, EKEYREVOKED/EXPIRED) or
# because it is locked down (EPERM).
_REJECTIONS = ("key was rejected", "required key not available",
               "bad message", "key has been revoked", "key has expired",
               "operation not permitted", "lockdown")


class KexecRejected(processes.ProcessError):
    """The running kernel refused to load the new one: its signature is
    not trusted (or it has none), or lockdown forbids the load."""


def rejected_for_signature(stderr):
    """Whether kexec's ``stderr`` says the kernel refused the load for a
    signature or lockdown reason."""
    text = (stderr or "").lower()
    return any(reason in text for reason in _REJECTIONS)


class PowerController:
    """Carries out (or, when simulating, records) power actions."""

    def __init__(self, simulate=False):
        self.simulate = simulate
        self.actions = []

    @classmethod
    def from_conf(cls, conf):
        return cls(simulate=conf.power.simulate)

    def load_kexec(self, kernel, initrd=None, cmdline="", file_load=False):
        """Stage a kernel (harmless: nothing runs yet).

        ``file_load`` uses ``kexec -s -l`` (the ``kexec_file_load`` syscall:
        the running kernel checks the new one's signature, and it is the
        only one a locked-down kernel allows); otherwise ``kexec -l``.
        Raises :class:`KexecRejected` when the kernel refused the load for
        its signature or lockdown, ``processes.ProcessError`` for other
        failures.
        """
        # -s only picks the system call: -l is still the action (without
        # it kexec loads, then runs shutdown to execute at once).
        argv = ["kexec"] + (["-s"] if file_load else []) + [
            "-l", kernel, "--append=%s" % cmdline]
        if initrd:
            argv.append("--initrd=%s" % initrd)
        if self.simulate:
            # file_load is recorded only when set, so records of plain
            # kexec_load stay as they were.
            self._record("kexec_load", kernel=kernel, initrd=initrd,
                         cmdline=cmdline,
                         **({"file_load": True} if file_load else {}))
            return
        try:
            processes.execute(*argv, log_level=logging.INFO)
        except processes.ToolNotFound:
            raise
        except processes.ProcessError as exc:
            if rejected_for_signature(exc.stderr):
                raise KexecRejected(argv, exc.returncode, exc.stdout,
                                    exc.stderr) from None
            raise

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
