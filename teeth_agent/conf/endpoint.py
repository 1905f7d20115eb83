"""[endpoint] options of the ``teeth-endpoint`` server."""

from oslo_config import cfg

from teeth_agent.conf import group as conf_group
from teeth_agent.conf import tls as conf_tls
from teeth_agent import protocol

group = cfg.OptGroup(
    "endpoint", title="Endpoint",
    help="The control server that agents connect to.")

opts = [
    cfg.HostAddressOpt(
        "listen_host",
        default="127.0.0.1",
        help="The address the endpoint listens on for agents."),
    cfg.PortOpt(
        "listen_port",
        default=9999,
        help="The TCP port the endpoint listens on for agents. 0 picks a "
             "free port (it is logged and written to the control socket's "
             "status)."),
    cfg.StrOpt(
        "control_socket",
        default="/run/teeth-endpoint/control.sock",
        help="The Unix socket through which the teeth-endpoint commands "
             "(agents, call) reach a running server. It is created with mode "
             "0600 and only clients running as the server's own user (or "
             "root) are served."),
    cfg.BoolOpt(
        "tls_enabled",
        default=True,
        help="Accept agents over TLS only, with tls_cert_file and "
             "tls_key_file. Turning it off accepts agents in plaintext: "
             "anyone on the network can read and forge their traffic; the "
             "endpoint logs a WARNING at start-up when it is off."),
    cfg.StrOpt(
        "tls_cert_file",
        help="The endpoint's PEM certificate, naming the host names and "
             "addresses agents connect to (teeth-endpoint issue-cert "
             "--server makes one). Required with tls_enabled."),
    cfg.StrOpt(
        "tls_key_file",
        help="The PEM private key of tls_cert_file. Required unless the key "
             "is in tls_cert_file itself."),
    cfg.StrOpt(
        "tls_ca_file",
        help="A PEM file of the authorities that sign agents' client "
             "certificates. With tls_require_client_cert every agent must "
             "present one; without it a certificate is asked for but "
             "optional, and one that does not verify is refused."),
    cfg.BoolOpt(
        "tls_require_client_cert",
        default=False,
        help="Mutual TLS: refuse agents that do not present a certificate "
             "signed by tls_ca_file (which it requires)."),
    cfg.StrOpt(
        "tls_minimum_version",
        default="1.2",
        choices=conf_tls.MINIMUM_VERSIONS,
        help="The oldest TLS version the endpoint accepts from agents."),
    cfg.IntOpt(
        "max_line_length",
        default=protocol.DEFAULT_MAX_LINE_LENGTH,
        min=1024,
        help="The longest message line, in bytes, accepted from an agent. "
             "A longer line is a fatal protocol error."),
    cfg.IntOpt(
        "max_connections_per_address",
        default=0,
        min=0,
        help="How many connections one remote address may hold at once; "
             "further ones are closed at once. 0 means no limit (many "
             "agents behind one NAT address need that)."),
    cfg.FloatOpt(
        "handshake_timeout",
        default=30.0,
        min=0.1,
        help="Seconds a new connection may stay without completing its TLS "
             "handshake and its protocol handshake before it is closed."),
    cfg.FloatOpt(
        "keepalive_interval",
        default=30.0,
        min=0.1,
        help="When an agent has sent nothing for this many seconds the "
             "endpoint pings it."),
    cfg.FloatOpt(
        "keepalive_timeout",
        default=30.0,
        min=0.1,
        help="Seconds a keepalive ping to an agent may go unanswered before "
             "its connection is dropped."),
    cfg.FloatOpt(
        "call_timeout",
        default=30.0,
        min=0.1,
        help="Seconds the endpoint waits for an agent to answer a command."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
