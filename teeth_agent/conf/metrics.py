"""[metrics] options of the agent: its own Prometheus metrics."""

from oslo_config import cfg

from teeth_agent.conf import dashboard
from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "metrics", title="Metrics",
    help="The agent's own Prometheus metrics.")

opts = [
    cfg.Opt(
        "listen",
        type=dashboard.ListenAddress(),
        default="",
        help="The host:port on which the agent serves its Prometheus "
             "metrics (tasks, bytes erased and written, the endpoint link) "
             "at /metrics, in plain HTTP without a login: they say nothing "
             "secret and change nothing. Empty (the default) serves none."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
