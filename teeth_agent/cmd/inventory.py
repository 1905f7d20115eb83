"""``teeth-agent inventory``: print what the hardware managers see.

The output is one JSON object on stdout::

    {"inventory": <docs/protocol.md inventory>,
     "hardware_managers": [{"name", "support", "class"}, ...],
     "dispatch": {interface method: [manager names in dispatch order]}}

It only reads the machine, so operators and vendor teams can run it on a
chassis to check which manager serves what before the agent does anything.
"""

import json
import logging
import sys

from teeth_agent.cmd import logsetup
from teeth_agent import hardware
from teeth_agent.hardware import inventory

LOG = logging.getLogger(__name__)


def main(conf):
    """Print the inventory report for ``conf``; return the exit status.

    ``conf`` has every agent option registered and parsed. Returns 0 on
    success, 2 when the hardware managers cannot be loaded or one fails
    while reading the machine (the reason goes to stderr).
    """
    # The report must be the only thing on stdout, so a caller can pipe
    # it to a JSON parser (setup_logging did this already, unless a
    # log_config_append file pointed a handler there).
    logsetup.logs_off_stdout()
    try:
        dispatcher = hardware.load_managers(conf)
        report = {
            "inventory": inventory.collect_inventory(dispatcher, conf),
            "hardware_managers": dispatcher.describe(),
            "dispatch": inventory.dispatch_table(dispatcher),
        }
    except hardware.HardwareLoadError as exc:
        print("teeth-agent inventory: cannot load hardware managers: %s"
              % exc, file=sys.stderr)
        return 2
    except hardware.HardwareManagerError as exc:
        print("teeth-agent inventory: %s" % exc, file=sys.stderr)
        return 2
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
