"""[DEFAULT] options: how the agent finds and talks to its endpoint."""

from oslo_config import cfg

from teeth_agent.conf import defaults


opts = [
    cfg.ListOpt(
        "endpoints",
        default=["127.0.0.1:9999"],
        help="The endpoints (control servers) to connect to, each as "
             "host:port. They are tried in the order given; when one cannot "
             "be reached or drops the connection the agent fails over to the "
             "next one, and starts again from the first after the last."),
    cfg.ListOpt(
        "enabled_extensions",
        default=["decom", "standbye"],
        help="The command groups to load, by entry-point name in the "
             "teeth_agent.extensions namespace. The name is also the prefix "
             "of the group's methods on the wire. An unknown name stops the "
             "agent at start-up with a list of the available ones."),
    cfg.StrOpt(
        "agent_id",
        help="Overrides the agent id sent in the handshake. By default the "
             "id is derived from the chassis (the DMI system UUID, else the "
             "sorted MAC addresses), so it is stable across reboots."),
    cfg.FloatOpt(
        "reconnect_initial_delay",
        default=0.5,
        min=0.01,
        help="Seconds to wait before the first reconnection attempt after a "
             "connection is lost or refused. Each further failed attempt "
             "doubles the delay, with random jitter, up to "
             "reconnect_max_delay. A link counts as failed unless it stayed "
             "up, handshake done, for keepalive_interval seconds; only such "
             "a link resets the delay."),
    cfg.FloatOpt(
        "reconnect_max_delay",
        default=30.0,
        min=0.01,
        help="The cap, in seconds, of the exponential backoff between "
             "reconnection attempts. A server restart costs the agent at "
             "most one such period."),
    cfg.FloatOpt(
        "connect_timeout",
        default=10.0,
        min=0.1,
        help="Seconds allowed to open a connection to an endpoint, TLS "
             "handshake included."),
    cfg.FloatOpt(
        "keepalive_interval",
        default=10.0,
        min=0.1,
        help="When nothing has been received from the endpoint for this "
             "many seconds the agent sends a ping."),
    cfg.FloatOpt(
        "keepalive_timeout",
        default=10.0,
        min=0.1,
        help="Seconds a keepalive ping may go unanswered before the agent "
             "drops the connection and reconnects."),
    cfg.FloatOpt(
        "call_timeout",
        default=30.0,
        min=0.1,
        help="Seconds the agent waits for the endpoint to answer a command "
             "it sent (handshake, task_status, log)."),
    cfg.IntOpt(
        "max_line_length",
        default=defaults.DEFAULT_MAX_LINE_LENGTH,
        min=1024,
        help="The longest message line, in bytes, accepted from the "
             "endpoint. A longer line is a fatal protocol error."),
    cfg.IntOpt(
        "max_inflight_commands",
        default=64,
        min=1,
        help="How many commands from the endpoint may execute at once on one "
             "connection. Further commands wait, unread, until one ends."),
    cfg.FloatOpt(
        "task_status_interval",
        default=1.0,
        min=0.0,
        help="The shortest time, in seconds, between two running updates of "
             "one task sent to the endpoint. Updates in between are "
             "coalesced: only the latest is sent. Final states are never "
             "delayed."),
    cfg.IntOpt(
        "task_history",
        default=100,
        min=1,
        help="How many finished tasks the agent remembers and reports in "
             "status and the handshake. Running tasks and final states not "
             "yet acknowledged by the endpoint are always kept."),
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/teeth-agent",
        help="Directory where the agent keeps the state of its tasks, so that "
             "after a restart it can report a task that was running when it "
             "stopped as failed instead of forgetting it, and the session "
             "tokens endpoints issued to it (session-tokens.json, mode "
             "0600), so that it can prove its identity after a restart. An "
             "empty value keeps the state in memory only."),
    cfg.StrOpt(
        "log_forward_level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF"],
        help="Log records at or above this level are forwarded to the "
             "endpoint with the log method. OFF forwards nothing."),
    cfg.IntOpt(
        "log_buffer_size",
        default=1000,
        min=0,
        help="How many log records to keep for the endpoint while the agent "
             "is disconnected. The oldest are dropped first, and the count "
             "of dropped records is reported when the link is back."),
]


def register_opts(conf):
    conf.register_opts(opts)
