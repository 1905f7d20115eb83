"""Registering an option group on a caller-owned ConfigOpts."""

from oslo_config import cfg


def register(conf, group, opts):
    """Register ``opts`` under ``group`` on ``conf``.

    A fresh OptGroup is registered each time: oslo.config copies a group
    only shallowly, so sharing a module's OptGroup object would share
    overrides between configurations (tests build many).
    """
    conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                     help=group.help))
    conf.register_opts(opts, group=group.name)
