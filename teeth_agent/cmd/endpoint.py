"""``teeth-endpoint``: serve agents, list them, call their methods.

``teeth-endpoint serve`` listens for agents and opens the local control
socket; ``teeth-endpoint agents`` and ``teeth-endpoint call AGENT METHOD
[JSON]`` talk to that server through the socket. For task commands ``call``
follows the task's progress with a live bar (percent and ETA) and exits 1
when the task ends in error.
"""

import json
import resource
import sys

from oslo_config import cfg
from oslo_log import log

from teeth_agent.cmd import display
from teeth_agent.cmd import logsetup
from teeth_agent.cmd import records
from teeth_agent import conf as teeth_conf
from teeth_agent.conf import strict
from teeth_agent.endpoint import books
from teeth_agent.endpoint import control
from teeth_agent.endpoint import directory
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent.endpoint import sockets_dir
from teeth_agent import pki
from teeth_agent import protocol
from teeth_agent import transport

LOG = log.getLogger(__name__)


def add_parsers(subparsers):
    subparsers.add_parser("serve", help="listen for agents")
    agents = subparsers.add_parser(
        "agents", help="list the agents the endpoint knows")
    agents.add_argument("--json", action="store_true",
                        help="print one JSON object per agent, one a line, "
                             "instead of a table")
    agents.add_argument("--limit", type=int, default=None, metavar="N",
                        help="list at most N agents")
    agents.add_argument("--forget", default=None, metavar="AGENT_ID",
                        help="forget a disconnected agent and its session "
                             "token (for an agent that lost its token) "
                             "instead of listing")
    call = subparsers.add_parser("call", help="send a command to an agent")
    call.add_argument("agent_id")
    call.add_argument("method")
    call.add_argument("params", nargs="?", default="{}",
                      help="the command's params as a JSON object")
    call.add_argument("--timeout", type=float, default=None,
                      help="seconds to wait for a task to end")
    call.add_argument("--no-follow", action="store_true",
                      help="return at once for task commands")
    issue_ca = subparsers.add_parser(
        "issue-ca", help="create a certificate authority (ca.pem, "
                         "ca-key.pem) for the endpoint and agents")
    issue_ca.add_argument("directory", help="where to write it (created)")
    issue_ca.add_argument("--name", dest="ca_name", default="teeth-agent CA",
                          help="the CA's common name")
    issue_ca.add_argument("--days", type=int, default=pki.DEFAULT_CA_DAYS,
                          help="validity in days")
    issue = subparsers.add_parser(
        "issue-cert", help="issue the endpoint's server certificate "
                           "(--server) or one machine's client certificate "
                           "(--agent-id) with a CA from issue-ca")
    issue.add_argument("--ca-cert", required=True, help="the CA's ca.pem")
    issue.add_argument("--ca-key", required=True,
                       help="the CA's ca-key.pem")
    issue.add_argument("--out", required=True,
                       help="the directory to write the certificate and its "
                            "key (mode 0600) to")
    which = issue.add_mutually_exclusive_group(required=True)
    which.add_argument("--agent-id",
                       help="a client certificate naming this agent "
                            "(SAN URI teeth-agent:ID): agent.pem, "
                            "agent-key.pem")
    which.add_argument("--server", action="append", metavar="HOST",
                       help="a server certificate for this DNS name or IP "
                            "address (repeatable): endpoint.pem, "
                            "endpoint-key.pem")
    issue.add_argument("--days", type=int, default=pki.DEFAULT_DAYS,
                       help="validity in days")
    records.add_parsers(subparsers)


cli_opts = [cfg.SubCommandOpt("command", title="commands",
                              handler=add_parsers)]


def prepare(argv=None):
    """Register options, parse the command line and config files, set up
    logging; returns the ConfigOpts.

    The configuration is strict (:mod:`teeth_agent.conf.strict`), for
    every subcommand: a missing file, an unknown section or option or a
    bad value raises :class:`~teeth_agent.conf.strict.ConfigError`."""
    conf = cfg.ConfigOpts()
    teeth_conf.register_endpoint_opts(conf)
    conf.register_cli_opts(cli_opts)
    log.register_options(conf)
    known = strict.KnownOptions.for_conf(conf, strict.ENDPOINT_NAMESPACES)
    strict.load(conf, sys.argv[1:] if argv is None else argv,
                project="teeth-agent", prog="teeth-endpoint", known=known)
    logsetup.setup_logging(conf, "teeth-endpoint")
    return conf


def raise_file_limit():
    """Lift the soft open-file limit to the hard one: every agent holds a
    socket, and the usual soft limit of 1024 would cap the endpoint near a
    thousand agents."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            LOG.warning("cannot raise the open-file limit to %s: %s",
                        wanted, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def issue(conf):
    """``issue-ca`` and ``issue-cert``: exit 2 with one line on failure."""
    args = conf.command
    try:
        if args.name == "issue-ca":
            made = pki.make_ca(args.directory, common_name=args.ca_name,
                               days=args.days)
        else:
            ca = pki.load(args.ca_cert, args.ca_key)
            if args.agent_id:
                made = pki.make_agent_certificate(ca, args.agent_id,
                                                  args.out, days=args.days)
            else:
                made = pki.make_server_certificate(ca, args.server, args.out,
                                                   days=args.days)
    except pki.PKIError as exc:
        print("teeth-endpoint: %s" % exc, file=sys.stderr)
        return 2
    print(made.cert_path)
    print(made.key_path)
    return 0


def serve(conf):
    limit = raise_file_limit()
    LOG.info("open-file limit %d (each agent needs one)", limit)
    try:
        endpoint = endpoint_mod.Endpoint.from_conf(conf)
    except ValueError as exc:
        LOG.error("cannot start: %s", exc)
        print("teeth-endpoint: cannot start: %s" % exc, file=sys.stderr)
        return 2
    endpoint.start()
    socket_path = sockets_dir.serve_socket(conf.endpoint.control_socket,
                                           conf.endpoint.reuse_port)
    # Processes sharing a database forward commands to each other.
    router = directory.router_for(endpoint, socket_path, conf.endpoint)
    server = control.ControlServer(endpoint, socket_path, router=router)
    server.start()
    if router is not None:
        router.start()
    print("teeth-endpoint listening on %s:%d, control socket %s"
          % (endpoint.host, endpoint.port, socket_path),
          flush=True)
    try:
        while True:
            transport.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if router is not None:
            router.stop()
        server.stop()
        endpoint.stop()
    return 0


def _connect(conf, dispatch=None):
    def refuse(connection, command):
        if command.method == "ping":
            return command.params
        raise protocol.UnknownMethod(command.method)
    sock, errors = None, []
    # Several serve processes (reuse_port): any live one answers.
    for path in sockets_dir.candidates(conf.endpoint.control_socket):
        try:
            sock = transport.connect_unix(path)
            break
        except OSError as exc:
            errors.append(exc)
    if sock is None:
        raise SystemExit("teeth-endpoint: cannot reach the server at %s: %s"
                         % (conf.endpoint.control_socket, errors[0]))
    return transport.Connection(sock, dispatch or refuse,
                                name="teeth-endpoint server").start()


def _agent_pages(connection, limit=None):
    """Every agent the server knows, fetched page by page, so no single
    answer grows with the fleet."""
    after, listed = None, 0
    while True:
        params = {} if after is None else {"after": after}
        if limit is not None:
            params["limit"] = min(limit - listed, control.PAGE_LIMIT)
        page = connection.call("agents", params)
        for agent in page["agents"]:
            yield agent
            listed += 1
        after = page.get("next")
        if after is None or (limit is not None and listed >= limit):
            return


def _forget_agent(conf, agent_id):
    connection = _connect(conf)
    try:
        connection.call("forget", {"agent_id": agent_id})
    except transport.RemoteError as exc:
        print("teeth-endpoint: %s: %s" % (exc.type,
                                          books.printable(exc.msg)),
              file=sys.stderr)
        return 1
    except (transport.CallTimeout, transport.ConnectionLost) as exc:
        print("teeth-endpoint: %s" % exc, file=sys.stderr)
        return 1
    finally:
        connection.close()
    print("forgot agent %s" % books.printable(agent_id))
    return 0


def list_agents(conf):
    args = conf.command
    if args.forget is not None:
        return _forget_agent(conf, args.forget)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("teeth-endpoint: --limit must be a positive number")
    show = books.printable
    connection = _connect(conf)
    table = None if args.json else display.AgentTable(sys.stdout)
    try:
        for agent in _agent_pages(connection, args.limit):
            if table is not None:
                table.add(agent)
                continue
            # ensure_ascii: control characters arrive as \u escapes.
            print(json.dumps(agent, sort_keys=True, ensure_ascii=True))
    except (transport.RemoteError, transport.CallTimeout,
            transport.ConnectionLost) as exc:
        if table is not None:
            table.flush()
        print("teeth-endpoint: %s" % show(exc), file=sys.stderr)
        return 1
    finally:
        connection.close()
    if table is not None:
        table.close()
    return 0


class ProgressPrinter:
    """Answers the server's ``task_status`` pushes by drawing them
    (:class:`~teeth_agent.cmd.display.TaskProgress`)."""

    def __init__(self, stream):
        self.progress = display.TaskProgress(stream)

    def __call__(self, connection, command):
        if command.method == "ping":
            return command.params
        if command.method != "task_status":
            raise protocol.UnknownMethod(command.method)
        self.progress.update(command.params)
        return {}

    def finish(self):
        self.progress.finish()


def call(conf):
    printer = ProgressPrinter(sys.stderr)
    try:
        return _call(conf, printer)
    finally:
        # Also on Ctrl-C: a live bar ends and gives the cursor back.
        printer.finish()


def _call(conf, printer):
    args = conf.command
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise SystemExit("teeth-endpoint: params are not JSON: %s" % exc)
    if not isinstance(params, dict):
        raise SystemExit("teeth-endpoint: params must be a JSON object")
    connection = _connect(conf, printer)
    try:
        answer = connection.call("call", {"agent_id": args.agent_id,
                                          "method": args.method,
                                          "params": params},
                                 timeout=conf.endpoint.call_timeout + 5)
    except transport.RemoteError as exc:
        print("teeth-endpoint: %s: %s"
              % (exc.type, books.printable(exc.msg)),
              file=sys.stderr)
        return 1
    except (transport.CallTimeout, transport.ConnectionLost) as exc:
        print("teeth-endpoint: no answer from the server: %s" % exc,
              file=sys.stderr)
        return 1
    result = answer["result"]
    is_task = isinstance(result, dict) and "task_id" in params and \
        result.get("state") == "running"
    if not is_task or args.no_follow:
        print(json.dumps(result, indent=2, sort_keys=True))
        connection.close()
        return 1 if result.get("state") == "error" else 0
    try:
        final = connection.call(
            "watch_task", {"agent_id": args.agent_id,
                           "task_id": params["task_id"],
                           "timeout": args.timeout},
            timeout=(args.timeout or 10 ** 7) + 5)["status"]
    except transport.RemoteError as exc:
        printer.finish()
        print("teeth-endpoint: %s: %s"
              % (exc.type, books.printable(exc.msg)),
              file=sys.stderr)
        return 1
    except (transport.CallTimeout, transport.ConnectionLost) as exc:
        printer.finish()
        print("teeth-endpoint: lost the server while following the task: "
              "%s" % exc, file=sys.stderr)
        return 1
    printer.finish()
    connection.close()
    print(json.dumps(final, indent=2, sort_keys=True))
    if final.get("state") == "error":
        print("teeth-endpoint: task %s failed: %s"
              % (books.printable(final.get("task_id")),
                 books.printable(final.get("msg"))), file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    try:
        conf = prepare(argv)
    except strict.ConfigError as exc:
        return strict.exit_status(exc, "teeth-endpoint", sys.stderr)
    command = conf.command.name
    if command == "serve":
        return serve(conf)
    if command == "agents":
        return list_agents(conf)
    if command in ("issue-ca", "issue-cert"):
        return issue(conf)
    if command in records.COMMANDS:
        return records.main(conf)
    return call(conf)


if __name__ == "__main__":
    sys.exit(main())
