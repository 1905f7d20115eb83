"""[power] options: the one interface that reboots, powers off or kexecs."""

from oslo_config import cfg

from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "power", title="Power actions",
    help="Reboot, power off and kexec, the only actions that leave the "
         "ramdisk.")

opts = [
    cfg.BoolOpt(
        "simulate",
        default=False,
        help="Do everything except the final kexec, reboot or power off, "
             "which is logged and reported instead. Tests and the demo set "
             "this; on a real chassis leave it off."),
    cfg.FloatOpt(
        "final_status_timeout",
        default=30.0,
        min=0.0,
        help="Seconds to wait for the endpoint to acknowledge a task's final "
             "state before the agent kexecs or reboots anyway."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
