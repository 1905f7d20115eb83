"""Options for oslo-config-generator (the ``oslo.config.opts`` entry point).

``list_opts`` returns every group the agent reads, so the sample in
``etc/teeth-agent/`` documents all of them; ``list_endpoint_opts`` does the
same for ``teeth-endpoint``.
"""

from teeth_agent.conf import agent
from teeth_agent.conf import database
from teeth_agent.conf import decom
from teeth_agent.conf import endpoint
from teeth_agent.conf import hardware
from teeth_agent.conf import power
from teeth_agent.conf import standbye
from teeth_agent.conf import tls


def list_opts():
    return [
        ("DEFAULT", agent.opts),
        (tls.group, tls.opts),
        (hardware.group, hardware.opts),
        (power.group, power.opts),
        (decom.group, decom.opts),
        (standbye.group, standbye.opts),
    ]


def list_endpoint_opts():
    return [(endpoint.group, endpoint.opts),
            (database.group, database.opts)]
