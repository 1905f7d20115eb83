"""Logging set-up of the console scripts: oslo.log with its failures as
configuration errors, its console output on stderr, and the protocol's
escaping of what is not printable on every handler.

stdout is for what a command prints (a JSON object, a table): oslo.log
falls back to stdout when neither ``[DEFAULT] log_file``, ``use_stderr``
nor ``use_journal`` is set, and then every log line would mix with it
(``serve --json | jq`` would read log lines). :func:`setup_logging` moves
that fallback handler to stderr. A log file, the journal, syslog and
``use_stderr`` are as oslo.log sets them up; a handler a
``log_config_append`` file points at stdout is the operator's choice and
kept.
"""

import logging
import sys

from oslo_log import log

from teeth_agent.conf import strict
from teeth_agent import protocol


def setup_logging(conf, product):
    """``oslo_log.log.setup`` with its failures (a log file that cannot be
    opened, a broken logging configuration) as :class:`ConfigError`; its
    console handler on stderr (:func:`logs_off_stdout`) and every handler
    it set up escaping what is not printable
    (:class:`teeth_agent.protocol.EscapingLogFilter`)."""
    try:
        log.setup(conf, product)
    except (OSError, ValueError, log.LogConfigError) as exc:
        raise strict.ConfigSourceError("cannot set up logging: %s" % exc)
    if not conf.log_config_append:
        logs_off_stdout()
    protocol.install_log_escaping()


def logs_off_stdout(logger=None):
    """Point every stream handler of ``logger`` (the root logger) that
    writes to stdout at stderr instead; returns how many were moved."""
    logger = logger or logging.getLogger()
    moved = 0
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and \
                getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
            moved += 1
    return moved
