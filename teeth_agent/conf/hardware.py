"""[hardware] options: which managers run and which devices they may see."""

from oslo_config import cfg

from teeth_agent.conf import group as conf_group

group = cfg.OptGroup(
    "hardware", title="Hardware managers",
    help="Hardware managers and the devices the agent may inspect or change.")

opts = [
    cfg.ListOpt(
        "enabled_managers",
        default=[],
        help="The hardware managers allowed to load, by entry-point name in "
             "the teeth_agent.hardware_managers namespace. Empty allows every "
             "installed manager; each then decides from the machine whether "
             "it supports it."),
    cfg.ListOpt(
        "device_include",
        default=[],
        help="Glob patterns on block device paths (for example /dev/loop*). "
             "When set, the inventory and every disk-changing operation see "
             "only devices that match one of them. Empty includes every "
             "device."),
    cfg.ListOpt(
        "device_exclude",
        default=[],
        help="Glob patterns on block device paths that the agent never shows "
             "or touches, even when they also match device_include."),
    cfg.BoolOpt(
        "include_virtual_nics",
        default=False,
        help="Also report network interfaces that have no device behind "
             "them (bridges, bonds, VLANs, tunnels) in the inventory. The "
             "loopback interface is never reported."),
    cfg.StrOpt(
        "root_device_hints",
        help="Default root-device hints used to choose the OS install device "
             "when a command gives none, as a JSON object, for example "
             "{\"size_bytes\": 480103981056, \"rotational\": false}."),
    cfg.StrOpt(
        "sysfs_root",
        default="/sys",
        help="Where sysfs is mounted. Only tests and vendor fixtures change "
             "this, to point the generic manager at a faked tree."),
    cfg.StrOpt(
        "procfs_root",
        default="/proc",
        help="Where procfs is mounted. Only tests and vendor fixtures change "
             "this."),
    cfg.StrOpt(
        "dev_root",
        default="/dev",
        help="The directory holding device nodes. Only tests change this."),
]


def register_opts(conf):
    conf_group.register(conf, group, opts)
