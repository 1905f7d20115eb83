"""[endpoint] options of the ``teeth-endpoint`` server."""

from oslo_config import cfg
from oslo_config import types

from teeth_agent.conf import defaults
from teeth_agent.conf import group as conf_group
from teeth_agent.conf import tls as conf_tls

group = cfg.OptGroup(
    "endpoint", title="Endpoint",
    help="The control server that agents connect to.")

opts = [
    cfg.ListOpt(
        "gc_thresholds",
        item_type=types.Integer(min=1),
        default=list(defaults.GC_THRESHOLDS),
        help="The three thresholds of Python's garbage collector "
             "(gc.set_threshold) in the serve process, which also freezes "
             "what it allocated at start-up out of every collection. A "
             "full collection stops the process for as long as it takes "
             "to walk every object it holds (0.3 to 0.5 s at 10,000 agents "
             "with CPython's defaults of 700,10,10, every few seconds when "
             "the database writer is busy); the defaults make them rare. "
             "Exactly three positive integers."),
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
    cfg.BoolOpt(
        "reuse_port",
        default=False,
        help="Listen for agents with SO_REUSEPORT, so that several "
             "teeth-endpoint serve processes of the same user on one machine "
             "share listen_port and the kernel spreads new agents over them. "
             "Each process then opens its own control socket, named after "
             "control_socket with the process id added (control.1234.sock), "
             "and the commands find a live one in that directory."),
    cfg.FloatOpt(
        "process_stale_after",
        default=60.0,
        min=20.0,
        help="With several endpoint processes on one database: seconds "
             "after its last heartbeat (written every 10 seconds) that a "
             "process which never said it stopped is counted dead; the "
             "others then mark it stopped and its agents as disconnected. "
             "Its agents reconnect to other processes on their own, "
             "sooner; this only cleans the listings and the routing."),
    cfg.StrOpt(
        "peer_listen",
        default="",
        help="With several endpoint processes on one database on more "
             "than one machine: the host:port (e.g. 0.0.0.0:9998) where "
             "this process accepts the commands (call, watch) that other "
             "processes route to the agents it holds, over TLS with "
             "client certificates both ways: tls_cert_file and "
             "tls_key_file, an endpoint certificate from teeth-endpoint "
             "issue-cert --server, verified against peer_ca_file. It is "
             "published in the database as tls:HOST:PORT. Empty (the "
             "default): no peer port; commands reach the processes of "
             "this machine only, through their control sockets."),
    cfg.StrOpt(
        "peer_advertise",
        default="",
        help="The host or host:port the other processes should dial to "
             "reach peer_listen, named in this process's certificate "
             "(required when peer_listen listens on 0.0.0.0 or ::). "
             "Empty: the address of peer_listen."),
    cfg.StrOpt(
        "peer_ca_file",
        default="",
        help="A PEM file of the authorities that sign the endpoint "
             "certificates of the peer link (both ways). Empty: "
             "tls_ca_file."),
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
        default=defaults.DEFAULT_MAX_LINE_LENGTH,
        min=4096,
        help="The longest message line, in bytes, accepted from an agent. "
             "A longer line is a fatal protocol error. The limit is "
             "announced in the handshake answer and agents send no longer "
             "line; agents refuse a limit below 4096 bytes, which leaves no "
             "room for a task's final status."),
    cfg.IntOpt(
        "max_connections_per_address",
        default=64,
        min=0,
        help="How many connections one remote address may hold at once; "
             "further ones are closed at once, before any TLS handshake. "
             "Agents behind one NAT address or proxy share this limit, so "
             "raise it for such networks; 0 means no limit."),
    cfg.IntOpt(
        "max_connections",
        default=16000,
        min=0,
        help="How many agent connections the endpoint holds at once, in "
             "all; further ones are closed at once. Keep it below the "
             "process's open-file limit, leaving room for the files and "
             "control connections the endpoint needs itself. 0 means no "
             "limit."),
    cfg.StrOpt(
        "agent_identity",
        default="token",
        choices=[("token", "The first handshake of an agent_id is answered "
                           "with a session token that every later handshake "
                           "of that agent_id must present."),
                 ("certificate", "The agent_id is taken from the agent's "
                                 "client certificate (SAN URI "
                                 "teeth-agent:<agent_id>, else the subject "
                                 "CN); needs tls_enabled and "
                                 "tls_require_client_cert.")],
        help="How an agent proves its agent_id. A link that cannot prove "
             "it is refused, and never replaces a live link of that "
             "agent."),
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/teeth-endpoint",
        help="A directory where the endpoint keeps its state: unless "
             "[database] connection names another database, the SQLite "
             "file endpoint.sqlite (mode 0600) with the agents, their task "
             "history, erasure records and the SHA-256 hashes of the "
             "session tokens it issued, so agents keep their identities "
             "across endpoint restarts (an agent-tokens.json of an older "
             "endpoint is imported once). It is created with mode 0700 at "
             "start-up when missing; the endpoint refuses to start when it "
             "cannot be created. Set it and [database] connection empty to "
             "keep everything in memory only: it is then lost on every "
             "restart and the first handshake of each agent_id afterwards "
             "is trusted on first use."),
    cfg.IntOpt(
        "task_history",
        default=100,
        min=1,
        help="How many finished tasks (error or complete) the endpoint "
             "keeps per agent; the oldest finished ones are dropped "
             "first."),
    cfg.IntOpt(
        "task_history_bytes",
        default=16 * 1024 * 1024,
        min=0,
        help="How many bytes (as JSON) of finished task statuses the "
             "endpoint keeps per agent; the oldest finished ones are "
             "dropped first, the newest is always kept."),
    cfg.IntOpt(
        "running_task_limit",
        default=256,
        min=1,
        help="How many running tasks the endpoint tracks per agent; a "
             "running update for a further task is refused and logged."),
    cfg.IntOpt(
        "log_history",
        default=1000,
        min=0,
        help="How many log records the endpoint keeps per agent (the "
             "newest ones)."),
    cfg.IntOpt(
        "log_history_bytes",
        default=4 * 1024 * 1024,
        min=0,
        help="How many bytes of log records (as JSON) the endpoint keeps "
             "per agent; the oldest records make room for new ones."),
    cfg.FloatOpt(
        "forget_after",
        default=86400.0,
        min=1.0,
        help="Seconds after which a disconnected agent is forgotten: its "
             "tasks, logs and session token are dropped, and its next "
             "handshake is a first use again."),
    cfg.IntOpt(
        "max_agents",
        default=50000,
        min=0,
        help="How many agents (connected or not) the endpoint remembers. "
             "When a new agent_id comes at this limit the agent "
             "disconnected longest ago is forgotten; when all are "
             "connected the newcomer is refused. 0 means no limit."),
    cfg.FloatOpt(
        "line_idle_timeout",
        default=60.0,
        min=0.1,
        help="Seconds a connection may stay silent in the middle of a "
             "message line before it is closed."),
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
