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
import tempfile

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


def _hidden(argv, hide):
    """``argv`` as it may be logged: every argument in ``hide`` (secrets
    such as a drive password) replaced by a placeholder."""
    hide = {str(secret) for secret in hide}
    return [("<hidden>" if arg in hide else arg) for arg in argv]


def execute(*argv, check=True, timeout=600, input_data=None, env=None,
            binary=False, log_level=logging.DEBUG, hide=()):
    """Run ``argv``; return ``(stdout, stderr)``.

    ``check`` raises :class:`ProcessError` on a non-zero exit; otherwise the
    caller gets the output and must look at it (use :func:`run` to also get
    the exit status). Arguments listed in ``hide`` never appear in a log
    line or an error.
    """
    returncode, stdout, stderr = run(*argv, timeout=timeout,
                                     input_data=input_data, env=env,
                                     binary=binary, log_level=log_level,
                                     hide=hide)
    if check and returncode != 0:
        raise ProcessError(_hidden(argv, hide), returncode, stdout, stderr)
    return stdout, stderr


def run(*argv, timeout=600, input_data=None, env=None, binary=False,
        log_level=logging.DEBUG, hide=()):
    """Run ``argv``; return ``(returncode, stdout, stderr)``.

    Raises :class:`ToolNotFound` and, on timeout, :class:`ProcessError`.
    Arguments listed in ``hide`` never appear in a log line or an error.
    """
    argv = [str(arg) for arg in argv]
    if not argv:
        raise ValueError("no command given")
    shown = _hidden(argv, hide)
    LOG.log(log_level, "running %s", " ".join(shown))
    try:
        completed = _spawn(argv, input_data, timeout, env, binary)
    except FileNotFoundError:
        raise ToolNotFound(shown) from None
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(shown, None, exc.stdout or "", exc.stderr or "",
                           reason="timed out after %ss" % timeout) from None
    if completed.returncode != 0:
        LOG.log(log_level, "%s exited %s: %s", argv[0], completed.returncode,
                (completed.stderr or "")[-500:])
    return completed.returncode, completed.stdout, completed.stderr


def _open(argv, stdin, stdout, stderr):
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr)


class Pipe:
    """A running tool whose stdin and/or stdout the caller streams.

    Made by :func:`open_pipe`; stderr goes to an anonymous temporary file
    (so a chatty tool cannot block on a full pipe) and is reported by
    :meth:`finish`.
    """

    def __init__(self, argv, process, stderr_file, log_level):
        self.argv = argv
        self.process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self._stderr_file = stderr_file
        self._log_level = log_level

    def _stderr(self):
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode("utf-8", "replace")

    def finish(self, timeout=600, check=True):
        """Close stdin, wait for the tool; return ``(returncode, stderr)``.

        Raises :class:`ProcessError` when ``check`` and the exit status is
        not 0, or when the tool does not end within ``timeout``.
        """
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessError(self.argv, None, "", self._stderr(),
                               reason="timed out after %ss" % timeout)
        stderr = self._stderr()
        self._stderr_file.close()
        if returncode != 0:
            LOG.log(self._log_level, "%s exited %s: %s", self.argv[0],
                    returncode, stderr[-500:])
            if check:
                raise ProcessError(self.argv, returncode, "", stderr)
        return returncode, stderr

    def kill(self):
        """Stop the tool at once (after a failure elsewhere)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def open_pipe(*argv, stdin=True, stdout=True, log_level=logging.DEBUG):
    """Start ``argv`` with a pipe on stdin and/or stdout.

    Returns a :class:`Pipe`. The caller writes/reads the streams (from
    separate threads when both are piped) and then calls
    :meth:`Pipe.finish`.

    Raises :class:`ToolNotFound`.
    """
    argv = [str(arg) for arg in argv]
    if not argv:
        raise ValueError("no command given")
    LOG.log(log_level, "running %s (streaming)", " ".join(argv))
    stderr_file = tempfile.TemporaryFile()
    try:
        process = _open(argv, subprocess.PIPE if stdin else subprocess.DEVNULL,
                        subprocess.PIPE if stdout else subprocess.DEVNULL,
                        stderr_file)
    except FileNotFoundError:
        stderr_file.close()
        raise ToolNotFound(argv) from None
    return Pipe(argv, process, stderr_file, log_level)
