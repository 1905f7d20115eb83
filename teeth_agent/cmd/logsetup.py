"""Logging set-up of the console scripts: oslo.log with its failures as
configuration errors, and the protocol's escaping of what is not printable
on every handler."""

from oslo_log import log

from teeth_agent.conf import strict
from teeth_agent import protocol


def setup_logging(conf, product):
    """``oslo_log.log.setup`` with its failures (a log file that cannot be
    opened, a broken logging configuration) as :class:`ConfigError`; every
    handler it set up escapes what is not printable
    (:class:`teeth_agent.protocol.EscapingLogFilter`)."""
    try:
        log.setup(conf, product)
    except (OSError, ValueError, log.LogConfigError) as exc:
        raise strict.ConfigSourceError("cannot set up logging: %s" % exc)
    protocol.install_log_escaping()
