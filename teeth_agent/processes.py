"""The one way teeth-agent runs external tools.

:func:`execute` takes an argument list (never a shell string), logs the
command, enforces a timeout and raises :class:`ProcessError` carrying the
exit status and stderr, or :class:`ToolNotFound` when the program is not
installed. Unit tests replace :func:`_spawn` so nothing reaches the machine
by accident (see ``tests/base.py``).
"""

import logging
import shutil
import subprocess

LOG = logging.getLogger(__name__)


class ProcessError(Exception):
    """A tool exited non-zero or timed out."""

    def __init__(self, argv, returncode, stdout="", stderr="", reason=None):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = reason or "exit status %s" % returncode
        tail = (stderr or "").strip().splitlines()[-3:]
        super().__init__("%s failed (%s)%s" % (
            " ".join(self.argv), detail,
            ": " + " | ".join(tail) if tail else ""))


class ToolNotFound(ProcessError):
    """The program is not installed on this machine."""

    def __init__(self, argv):
        super().__init__(argv, None, reason="%s is not installed" % argv[0])


def which(program):
    """The full path of ``program`` or None."""
    return shutil.which(program, path="/usr/local/sbin:/usr/local/bin:"
                        "/usr/sbin:/usr/bin:/sbin:/bin")


def _spawn(argv, input_data, timeout, env, binary):
    return subprocess.run(argv, input=input_data, capture_output=True,
                          timeout=timeout, env=env, text=not binary,
                          check=False)


def execute(*argv, check=True, timeout=600, input_data=None, env=None,
            binary=False, log_level=logging.DEBUG):
    """Run ``argv``; return ``(stdout, stderr)``.

    ``check`` raises :class:`ProcessError` on a non-zero exit; otherwise the
    caller gets the output and must look at it (use :func:`run` to also get
    the exit status).
    """
    returncode, stdout, stderr = run(*argv, timeout=timeout,
                                     input_data=input_data, env=env,
                                     binary=binary, log_level=log_level)
    if check and returncode != 0:
        raise ProcessError(argv, returncode, stdout, stderr)
    return stdout, stderr


def run(*argv, timeout=600, input_data=None, env=None, binary=False,
        log_level=logging.DEBUG):
    """Run ``argv``; return ``(returncode, stdout, stderr)``.

    Raises :class:`ToolNotFound` and, on timeout, :class:`ProcessError`.
    """
    argv = [str(arg) for arg in argv]
    if not argv:
        raise ValueError("no command given")
    LOG.log(log_level, "running %s", " ".join(argv))
    try:
        completed = _spawn(argv, input_data, timeout, env, binary)
    except FileNotFoundError:
        raise ToolNotFound(argv) from None
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(argv, None, exc.stdout or "", exc.stderr or "",
                           reason="timed out after %ss" % timeout) from None
    if completed.returncode != 0:
        LOG.log(log_level, "%s exited %s: %s", argv[0], completed.returncode,
                (completed.stderr or "")[-500:])
    return completed.returncode, completed.stdout, completed.stderr
