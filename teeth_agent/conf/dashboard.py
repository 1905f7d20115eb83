"""[dashboard] options of ``teeth-endpoint serve``: the read-only web
dashboard and the Prometheus ``/metrics`` on the same listener."""

import ipaddress

from oslo_config import cfg
from oslo_config import types

from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "dashboard", title="Dashboard",
    help="The read-only web dashboard and Prometheus metrics of the "
         "endpoint.")

#: The file in [endpoint] state_dir that holds the SHA-256 of the
#: dashboard's access token (``teeth-endpoint dashboard-token`` writes it).
TOKEN_FILE = "dashboard-token.sha256"


def split_listen(text):
    """``host:port`` (``[v6]:port`` for IPv6) as ``(host, port)``.

    Raises ValueError with one sentence when it is not one."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("%r is not host:port (for example 127.0.0.1:8780)"
                         % text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("%r names no valid IPv6 address in its "
                             "brackets" % text) from None
    elif ":" in host:
        raise ValueError("%r: write an IPv6 address in brackets, as "
                         "[::1]:8780" % text)
    else:
        try:
            types.HostAddress()(host)
        except ValueError:
            raise ValueError("%r names no valid host name or address"
                             % text) from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("%r has no port number from 0 to 65535" % text)
    return host, int(port)


def is_loopback(host):
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ListenAddress(types.String):
    """A ``host:port`` option value, checked by :func:`split_listen`."""

    def __init__(self, type_name="host:port value"):
        super().__init__(type_name=type_name)

    def __call__(self, value):
        value = super().__call__(value)
        if value:
            split_listen(value)
        return value


opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Serve the read-only web dashboard (agents, tasks with live "
             "progress, erasure reports, agent logs) and the Prometheus "
             "metrics at /metrics on [dashboard] listen."),
    cfg.Opt(
        "listen",
        type=ListenAddress(),
        default="127.0.0.1:8780",
        help="The host:port the dashboard listens on ([::1]:8780 for "
             "IPv6). On a loopback address it serves plain HTTP without a "
             "login; on any other address it serves HTTPS with the "
             "certificate of [endpoint] tls_cert_file and asks for the "
             "token of teeth-endpoint dashboard-token, and the endpoint "
             "refuses to start without them."),
    cfg.BoolOpt(
        "require_token",
        default=False,
        help="Ask for the dashboard token on a loopback address too (it is "
             "always asked for on any other address)."),
    cfg.IntOpt(
        "max_connections",
        default=64,
        min=1,
        max=4096,
        help="How many HTTP connections the dashboard serves at once; "
             "further ones are answered 503 and closed."),
    cfg.IntOpt(
        "max_event_clients",
        default=32,
        min=1,
        max=1024,
        help="How many live-update streams (browser tabs) the dashboard "
             "feeds at once; a further tab is answered 503 and shows the "
             "page without live updates. Keep it below max_connections."),
    cfg.IntOpt(
        "event_queue",
        default=1000,
        min=10,
        help="How many updates may wait for one live-update stream; a "
             "browser that falls this far behind is disconnected (it "
             "reconnects and gets a fresh picture), so a slow client "
             "never holds the endpoint back."),
    cfg.FloatOpt(
        "write_timeout",
        default=10.0,
        min=0.1,
        help="Seconds a write to one dashboard client may block before "
             "that client is disconnected."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
