"""The dashboard's part of ``teeth-endpoint``: ``serve`` starts it when
``[dashboard] enabled``; ``dashboard-token`` makes its access token."""

import json
import logging
import sys

from teeth_agent.endpoint.web import auth
from teeth_agent.endpoint.web import http as web_http

LOG = logging.getLogger(__name__)


def add_parser(subparsers):
    token = subparsers.add_parser(
        "dashboard-token",
        help="make a new access token for the web dashboard and print it "
             "once; only its SHA-256 is kept, in [endpoint] state_dir, and "
             "it replaces the token made before (restart serve to use it)")
    token.add_argument("--json", action="store_true",
                       help="print the token and the file holding its hash "
                            "as one JSON object")


def build(conf, endpoint):
    """The dashboard ``serve`` runs, or None when it is off. Raises
    ValueError (a one-line reason) when its settings cannot work."""
    if not conf.dashboard.enabled:
        return None
    return web_http.DashboardServer.from_conf(conf, endpoint)


def start(dashboard):
    """Start ``dashboard`` (None: nothing to do) right after the endpoint,
    before ``serve`` says it is listening (and where the dashboard is,
    :attr:`~teeth_agent.endpoint.web.http.DashboardServer.url`). Raises
    ValueError (a one-line reason) when it cannot listen; the caller stops
    the endpoint."""
    if dashboard is None:
        return
    dashboard.start()


def stop(dashboard):
    if dashboard is not None:
        dashboard.stop()


def issue_token(conf):
    """``dashboard-token``: exit 2 with one line on failure."""
    try:
        token = auth.issue_token(conf.endpoint.state_dir)
    except (OSError, auth.TokenFileError) as exc:
        print("teeth-endpoint: cannot write the dashboard token: %s"
              % (getattr(exc, "strerror", None) or exc), file=sys.stderr)
        return 2
    path = auth.token_path(conf.endpoint.state_dir)
    if conf.command.json:
        print(json.dumps({"token": token, "hash_file": path},
                         sort_keys=True), flush=True)
    else:
        print(token, flush=True)
    print("teeth-endpoint: this dashboard token is shown only now; its "
          "hash is in %s" % path, file=sys.stderr)
    return 0
