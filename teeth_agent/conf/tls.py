"""[tls] options: how the agent secures its connection to the endpoint."""

from oslo_config import cfg

from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "tls", title="TLS",
    help="Transport security between the agent and its endpoint.")

opts = [
    cfg.BoolOpt(
        "enabled",
        default=False,
        help="Connect to the endpoint over TLS and verify its certificate. "
             "When enabled the agent never falls back to plaintext."),
    cfg.StrOpt(
        "ca_file",
        help="A PEM file of the certificate authorities that may sign the "
             "endpoint's certificate. When unset the system's default trust "
             "store is used."),
    cfg.StrOpt(
        "cert_file",
        help="A PEM certificate the agent presents to the endpoint (mutual "
             "TLS). Requires key_file unless the key is in the same file."),
    cfg.StrOpt(
        "key_file",
        help="The PEM private key that belongs to cert_file."),
    cfg.BoolOpt(
        "check_hostname",
        default=True,
        help="Require the endpoint's certificate to name the host the agent "
             "connects to. Only turn this off when endpoints are reached by "
             "addresses their certificates cannot list."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
