"""oslo.config options of teeth-agent, one module per group.

Options are registered on a :class:`oslo_config.cfg.ConfigOpts` that the
caller owns (the console scripts build one; tests build their own), never on
a module-level global. The console scripts load them through
:mod:`teeth_agent.conf.strict`, which refuses unknown sections and options,
bad values and missing files before anything starts.
"""

from teeth_agent.conf import agent
from teeth_agent.conf import database
from teeth_agent.conf import decom
from teeth_agent.conf import endpoint
from teeth_agent.conf import hardware
from teeth_agent.conf import power
from teeth_agent.conf import standbye
from teeth_agent.conf import tls

_MODULES = (agent, tls, hardware, power, decom, standbye)


def register_agent_opts(conf):
    """Register every option the agent reads on ``conf``."""
    for module in _MODULES:
        module.register_opts(conf)


def register_endpoint_opts(conf):
    """Register every option the endpoint reads on ``conf``."""
    endpoint.register_opts(conf)
    database.register_opts(conf)
