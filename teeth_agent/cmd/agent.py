"""``teeth-agent``: run the agent, or print the machine's inventory;
``teeth-agent verify-evidence`` checks signed erase records (see
:mod:`teeth_agent.cmd.verify_evidence`; it reads no configuration).

Start-up order: register options, parse config, set up logging, log the
option values, load hardware managers and extensions, then serve.
"""

import logging as std_logging
import os
import sys

from oslo_config import cfg
from oslo_log import log

from teeth_agent.cmd import lifecycle
from teeth_agent.cmd import logsetup
from teeth_agent.cmd import output
from teeth_agent import conf as teeth_conf
from teeth_agent.conf import strict
from teeth_agent.conf import tls as conf_tls
from teeth_agent import extensions
from teeth_agent.extensions import base as ext_base
from teeth_agent import hardware
from teeth_agent.hardware import power
from teeth_agent import kernel_cmdline
from teeth_agent.runtime import agent as agent_mod
from teeth_agent.runtime import logforward
from teeth_agent.runtime import metrics as runtime_metrics
from teeth_agent.runtime import session_tokens
from teeth_agent import tasks
from teeth_agent import transport

LOG = log.getLogger(__name__)

cli_opts = [
    cfg.StrOpt("action", positional=True, default="run", required=False,
               choices=[("run", "connect to the endpoints and serve "
                                "(the default)"),
                        ("inventory", "print the machine's inventory and "
                                      "which hardware manager serves each "
                                      "interface method, as JSON")],
               help="What to do."),
]


def prepare(argv=None, kernel_cmdline_path=kernel_cmdline.PROC_CMDLINE):
    """Register options, parse the command line and config files, set up
    logging; returns the ConfigOpts.

    ``teeth_agent.*`` words on the kernel command line (read from
    ``kernel_cmdline_path``) override the config files; see
    :mod:`teeth_agent.kernel_cmdline`.

    The configuration is strict (:mod:`teeth_agent.conf.strict`): a
    missing file, an unknown section, option or kernel command line word,
    or a bad value raises :class:`~teeth_agent.conf.strict.ConfigError`
    before anything else happens."""
    conf = cfg.ConfigOpts()
    teeth_conf.register_agent_opts(conf)
    conf.register_cli_opts(cli_opts)
    log.register_options(conf)
    known = strict.KnownOptions.for_conf(conf, strict.AGENT_NAMESPACES,
                                         plugins=True)
    boot_options = kernel_cmdline.KernelCommandLine.load(
        conf, kernel_cmdline_path, known=known)
    boot_options.check(known)
    args = boot_options.extend_args(
        sys.argv[1:] if argv is None else argv, "teeth-agent", "teeth-agent")
    labels = {}
    if boot_options.path:
        labels[os.path.abspath(boot_options.path)] = boot_options.label()
    strict.load(conf, args, project="teeth-agent", prog="teeth-agent",
                known=known, labels=labels)
    logsetup.setup_logging(conf, "teeth-agent")
    boot_options.log_outcome()
    return conf


def tls_context(conf):
    """The agent's TLS context, None for an explicit plaintext link.

    Raises ValueError (:class:`conf_tls.TLSConfigError`,
    :class:`transport.TLSContextError`) for settings that do not fit."""
    settings = conf_tls.agent_settings(conf)
    if settings is None:
        return None
    return transport.client_tls_context(**settings)


def build_agent(conf):
    """Load managers and extensions and build the :class:`Agent`."""
    from teeth_agent.hardware import inventory
    # First: a TLS mistake is reported before any hardware is touched.
    tls = tls_context(conf)
    dispatcher = hardware.load_managers(conf)
    registry = tasks.TaskRegistry(history=conf.task_history,
                                  state_dir=conf.state_dir or None)
    controller = power.PowerController.from_conf(conf)
    agent_id = conf.agent_id or inventory.derive_agent_id(dispatcher)
    context = ext_base.ExtensionContext(conf, dispatcher, registry,
                                        controller, agent_id)
    loaded = extensions.load_extensions(conf.enabled_extensions, context)
    extensions.start_extensions(loaded)
    summary = inventory.hardware_summary(dispatcher)
    tokens = session_tokens.SessionTokens(agent_id, conf.state_dir or None)
    return agent_mod.Agent(conf, dispatcher, loaded, registry, controller,
                           agent_id, hardware_summary=summary,
                           tls_context=tls, session_tokens=tokens)


def main(argv=None):
    """Run ``teeth-agent``; returns the exit status (a closed stdout ends
    it quietly: :mod:`teeth_agent.cmd.output`)."""
    return output.run(_main, argv)


def _main(argv):
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["verify-evidence"]:
        # An auditor's command: no agent configuration is read.
        from teeth_agent.cmd import verify_evidence
        return verify_evidence.main(words[1:])
    try:
        conf = prepare(argv)
    except strict.ConfigError as exc:
        return strict.exit_status(exc, "teeth-agent", sys.stderr)
    if conf.action == "inventory":
        from teeth_agent.cmd import inventory as inventory_cmd
        return inventory_cmd.main(conf)
    conf.log_opt_values(LOG, std_logging.DEBUG)
    failure = None
    try:
        agent = build_agent(conf)
        metrics = runtime_metrics.serve(conf, agent)
    except (extensions.ExtensionLoadError, hardware.HardwareLoadError,
            hardware.HardwareManagerError, ValueError, OSError) as exc:
        failure = str(exc)
    if failure is not None:
        return lifecycle.cannot_start("teeth-agent", failure)
    if conf.log_forward_level != "OFF":
        handler = logforward.ForwardingLogHandler(
            conf.log_buffer_size,
            level=std_logging.getLevelName(conf.log_forward_level))
        # On the root logger, so vendor plugins' records are forwarded too.
        std_logging.getLogger().addHandler(handler)
        agent.attach_log_handler(handler)
    LOG.info("teeth-agent %s starting as %s; endpoints %s",
             agent_mod.agent_version(), agent.agent_id,
             ", ".join(conf.endpoints))
    if metrics is not None:
        LOG.info("agent metrics at http://%s/metrics", conf.metrics.listen)

    def cleanup():
        agent.stop()
        if metrics is not None:
            metrics[1].shutdown()
    return lifecycle.run_until_stopped("teeth-agent", agent.run, cleanup)


if __name__ == "__main__":
    sys.exit(main())
