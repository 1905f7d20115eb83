"""``teeth-endpoint``: serve agents, list them, call their methods.

``teeth-endpoint serve`` listens for agents and opens the local control
socket; ``teeth-endpoint agents`` and ``teeth-endpoint call AGENT METHOD
[JSON]`` talk to that server through the socket. For task commands ``call``
follows the task's progress with a live bar (percent and ETA) and exits 1
when the task ends in error.
"""

import argparse
import json
import os
import resource
import sys

from oslo_config import cfg
from oslo_log import log

from teeth_agent.cmd import dashboard as cmd_dashboard
from teeth_agent.cmd import display
from teeth_agent.cmd import follow
from teeth_agent.cmd import lifecycle
from teeth_agent.cmd import logsetup
from teeth_agent.cmd import output
from teeth_agent.cmd import records
from teeth_agent.cmd import usage
from teeth_agent import conf as teeth_conf
from teeth_agent.conf import strict
from teeth_agent.conf import tls as conf_tls
from teeth_agent.endpoint import books
from teeth_agent.endpoint import control
from teeth_agent.endpoint import directory
from teeth_agent.endpoint import peer_link as peer_link_mod
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent.endpoint import sockets_dir
from teeth_agent import pki
from teeth_agent import protocol
from teeth_agent import transport

LOG = log.getLogger(__name__)


EXIT_STATUSES = """exit status:
  0  done (the task ended complete)
  1  the task ended in error, or the server or the agent refused
  2  a usage or configuration error
  3  stopped following (Ctrl-C or --timeout); the task is still running"""

CALL_EPILOG = EXIT_STATUSES + """

examples:
  teeth-endpoint call AGENT status
  teeth-endpoint call AGENT decom.qc '{"task_id": "qc-1", "spec": {}}'
  teeth-endpoint call AGENT decom.disk_erase '{"task_id": "erase-1"}'

decom.disk_erase without "devices" erases every disk in scope. The install
device of standbye.prepare_image is, without root_device_hints (in the
params or in [hardware] root_device_hints), the smallest eligible
non-removable disk of at least 4 GiB (ties broken by path)."""


def _json_flag(parser, text):
    parser.add_argument("--json", action="store_true", help=text)


def add_parsers(subparsers):
    serve = subparsers.add_parser(
        "serve", help="listen for agents",
        description="Listen for agents and open the control socket the "
                    "other commands use; runs until Ctrl-C or SIGTERM.")
    _json_flag(serve, "print the listening address (and the dashboard's "
                      "URL) as one JSON object")
    cmd_dashboard.add_parser(subparsers)
    agents = subparsers.add_parser(
        "agents", help="list the agents the endpoint knows")
    _json_flag(agents, "print one JSON object per agent, one a line, "
                       "instead of a table")
    agents.add_argument("--limit", type=int, default=None, metavar="N",
                        help="list at most N agents")
    agents.add_argument("--forget", default=None, metavar="AGENT_ID",
                        help="forget a disconnected agent and its session "
                             "token (for an agent that lost its token) "
                             "instead of listing")
    call = subparsers.add_parser(
        "call", help="send a command to an agent",
        description="Send one command to a connected agent and print its "
                    "result. For a task command (every decom.* and "
                    "standbye.* method) follow the task with a progress "
                    "bar until it ends.",
        epilog=CALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    call.add_argument("agent_id", metavar="AGENT",
                      help="the agent's id, as `teeth-endpoint agents` "
                           "lists it")
    call.add_argument("method", metavar="METHOD",
                      help="the method to run: ping, status, decom.qc, "
                           "decom.disk_erase, decom.firmware_secure, "
                           "standbye.cache_images, standbye.prepare_image "
                           "or standbye.run_image (docs/protocol.md "
                           "describes each)")
    call.add_argument("params", nargs="?", default="{}", metavar="PARAMS",
                      help="the method's params as one JSON object "
                           "(default {}); a task command needs a task_id "
                           "of your choice, e.g. "
                           "'{\"task_id\": \"qc-1\", \"spec\": {}}'")
    call.add_argument("--timeout", type=float, default=None,
                      metavar="SECONDS",
                      help="stop following a task after SECONDS (the task "
                           "goes on; exit status 3); without it, follow "
                           "until the task ends")
    call.add_argument("--no-follow", action="store_true",
                      help="print a task command's first answer and return "
                           "at once (follow it later with `teeth-endpoint "
                           "watch AGENT TASK_ID`)")
    _json_flag(call, "print each progress update and the result as one "
                     "JSON object a line instead of a bar")
    watch = subparsers.add_parser(
        "watch", help="follow a running task, or every running task",
        description="Follow one task of an agent until it ends, or with "
                    "--all every running task of every agent (one "
                    "progress line each) until none is left running.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    watch.add_argument("agent_id", metavar="AGENT", nargs="?",
                       help="the agent running the task")
    watch.add_argument("task_id", metavar="TASK_ID", nargs="?",
                       help="the task to follow (its task_id)")
    watch.add_argument("--all", action="store_true", dest="all_tasks",
                       help="show every running task of every agent")
    watch.add_argument("--timeout", type=float, default=None,
                       metavar="SECONDS",
                       help="stop watching after SECONDS (the tasks go on; "
                            "exit status 3)")
    _json_flag(watch, "print each update as one JSON object a line")
    issue_ca = subparsers.add_parser(
        "issue-ca", help="create a certificate authority (ca.pem, "
                         "ca-key.pem) for the endpoint and agents")
    issue_ca.add_argument("directory", help="where to write it (created)")
    issue_ca.add_argument("--name", dest="ca_name", default="teeth-agent CA",
                          help="the CA's common name")
    issue_ca.add_argument("--days", type=int, default=pki.DEFAULT_CA_DAYS,
                          help="validity in days")
    _json_flag(issue_ca, "print the paths written as one JSON object")
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
                       help="an endpoint certificate for this DNS name or "
                            "IP address (repeatable: name every address "
                            "agents and other endpoint processes dial): "
                            "endpoint.pem, endpoint-key.pem")
    issue.add_argument("--days", type=int, default=pki.DEFAULT_DAYS,
                       help="validity in days")
    _json_flag(issue, "print the paths written as one JSON object")
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
    if args.json:
        follow.json_line({"cert": made.cert_path, "key": made.key_path},
                         sys.stdout)
        return 0
    print(made.cert_path)
    print(made.key_path)
    return 0


def _say_listening(as_json, endpoint, path, peer_link, dashboard):
    """What ``serve`` prints on stdout once it listens everywhere: one JSON
    object with ``--json`` (``peer_address`` and ``dashboard`` when they
    are on), else a line each. Its logs go to stderr
    (:mod:`teeth_agent.cmd.logsetup`)."""
    if as_json:
        shown = {"host": endpoint.host, "port": endpoint.port,
                 "control_socket": path}
        if peer_link is not None:
            shown["peer_address"] = peer_link.address
        if dashboard is not None:
            shown["dashboard"] = dashboard.url
        follow.json_line(shown, sys.stdout)
        return
    if dashboard is not None:
        print("teeth-endpoint dashboard at %s" % dashboard.url, flush=True)
    print("teeth-endpoint listening on %s:%d, control socket %s"
          % (endpoint.host, endpoint.port, path), flush=True)
    if peer_link is not None:
        print("teeth-endpoint peer port %s" % peer_link.address, flush=True)


def serve(conf):
    limit = raise_file_limit()
    LOG.info("open-file limit %d (each agent needs one)", limit)
    # With [endpoint] reuse_port each process has a control socket of its
    # own next to the configured one (endpoint/sockets_dir.py).
    path = sockets_dir.serve_socket(conf.endpoint.control_socket,
                                    conf.endpoint.reuse_port)
    failure = None
    peer_link = None
    try:
        lifecycle.claim_control_socket(path)
        peer_settings = conf_tls.peer_settings(conf)
        if peer_settings is not None:
            peer_link = peer_link_mod.PeerLink(peer_settings)
        endpoint = endpoint_mod.Endpoint.from_conf(conf)
        if peer_link is not None and endpoint.persistence is None:
            raise ValueError(
                "[endpoint] peer_listen needs a database shared with the "
                "other processes ([database] connection, or state_dir)")
        dashboard = cmd_dashboard.build(conf, endpoint)
        lifecycle.tune_gc(conf.endpoint.gc_thresholds)
        lifecycle.start_listening(endpoint)
    except (ValueError, lifecycle.StartError) as exc:
        failure = str(exc)
    if failure is not None:
        return lifecycle.cannot_start("teeth-endpoint", failure)
    try:
        cmd_dashboard.start(dashboard)
    except ValueError as exc:
        failure = str(exc)
    if failure is not None:
        endpoint.stop()
        return lifecycle.cannot_start("teeth-endpoint", failure)
    # Processes sharing a database forward commands to each other.
    router = directory.router_for(endpoint, path, conf.endpoint, peer_link)
    server = control.ControlServer(endpoint, path, router=router)
    try:
        server.start()
    except OSError as exc:
        failure = "cannot listen on %s: %s" % (path,
                                               lifecycle.os_error_text(exc))
    if failure is None and peer_link is not None:
        try:
            peer_link.start(server)
        except OSError as exc:
            failure = "cannot listen for peers on %s: %s" % (
                conf.endpoint.peer_listen, lifecycle.os_error_text(exc))
    if failure is not None:
        server.stop()
        cmd_dashboard.stop(dashboard)
        endpoint.stop()
        return lifecycle.cannot_start("teeth-endpoint", failure)
    if router is not None:
        router.start()
    _say_listening(conf.command.json, endpoint, path, peer_link, dashboard)
    LOG.info("teeth-endpoint started (pid %d): agents on %s:%d, control "
             "socket %s", os.getpid(), endpoint.host, endpoint.port, path)

    def wait():
        while True:
            transport.sleep(3600)

    def cleanup():
        if router is not None:
            router.stop()
        if peer_link is not None:
            peer_link.stop()
        cmd_dashboard.stop(dashboard)
        server.stop()
        endpoint.stop()
    return lifecycle.run_until_stopped("teeth-endpoint", wait, cleanup)


def _connect(conf, dispatch=None):
    def refuse(connection, command):
        if command.method == "ping":
            return command.params
        raise protocol.UnknownMethod(command.method)
    configured = conf.endpoint.control_socket
    sock, failure = None, None
    # Several serve processes (reuse_port): any live one answers.
    for path in sockets_dir.candidates(configured):
        try:
            sock = transport.connect_unix(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            continue
        except PermissionError:
            failure = (
                "teeth-endpoint: not allowed to reach the server at %s (run "
                "as root or as the user running `teeth-endpoint serve`)"
                % path)
        except OSError as exc:
            failure = ("teeth-endpoint: cannot reach the server at %s: %s"
                       % (path, lifecycle.os_error_text(exc)))
    if sock is None:
        raise SystemExit(failure or (
            "teeth-endpoint: the server is not running at %s (start it with "
            "`teeth-endpoint serve`, or point [endpoint] control_socket at "
            "the socket of the one running)" % configured))
    return transport.Connection(sock, dispatch or refuse,
                                name="teeth-endpoint server").start()


def _agent_pages(connection, limit=None):
    """Every agent the server knows, fetched page by page, so no single
    answer grows with the fleet."""
    after, listed, warned = None, 0, False
    while True:
        params = {} if after is None else {"after": after}
        if limit is not None:
            params["limit"] = min(limit - listed, control.PAGE_LIMIT)
        page = connection.call("agents", params)
        if page.get("partial") and not warned:
            warned = True
            print("teeth-endpoint: warning: %s"
                  % books.printable(page["partial"]), file=sys.stderr)
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
    if conf.command.json:
        follow.json_line({"forgotten": agent_id}, sys.stdout)
    else:
        print("forgot agent %s" % books.printable(agent_id))
    return 0


def list_agents(conf):
    args = conf.command
    if args.forget is not None:
        return _forget_agent(conf, args.forget)
    usage.check_positive(args.limit, "--limit")
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


def _remote_error(exc):
    """One line for an error the server (or the agent) answered."""
    return "teeth-endpoint: %s: %s" % (exc.type, books.printable(exc.msg))


def call(conf):
    args = conf.command
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise usage.UsageError(
            "PARAMS is not JSON (%s); give one JSON object, e.g. "
            "'{\"task_id\": \"t-1\"}'" % exc) from None
    if not isinstance(params, dict):
        raise usage.UsageError("PARAMS must be a JSON object, e.g. "
                               "'{\"task_id\": \"t-1\"}'")
    usage.check_seconds(args.timeout)
    updates = follow.Updates(sys.stderr, as_json=args.json,
                             agent_id=args.agent_id)
    connection = _connect(conf, updates)
    try:
        try:
            answer = connection.call(
                "call", {"agent_id": args.agent_id, "method": args.method,
                         "params": params, "timeout": None},
                timeout=conf.endpoint.call_timeout + 5)
        except KeyboardInterrupt:
            print("teeth-endpoint: interrupted before the agent answered; "
                  "the command may have reached it", file=sys.stderr)
            return follow.EXIT_STILL_RUNNING
        except transport.RemoteError as exc:
            print(_remote_error(exc), file=sys.stderr)
            return follow.EXIT_TASK_ERROR
        except transport.CallTimeout:
            print("teeth-endpoint: no answer from the server within %gs"
                  % (conf.endpoint.call_timeout + 5), file=sys.stderr)
            return follow.EXIT_TASK_ERROR
        except transport.ConnectionLost:
            print("teeth-endpoint: the server closed the connection before "
                  "answering", file=sys.stderr)
            return follow.EXIT_TASK_ERROR
        result = answer["result"]
        is_task = isinstance(result, dict) and "task_id" in params and \
            result.get("state") in ("running", "complete", "error")
        if not is_task or args.no_follow or \
                result.get("state") != "running":
            if is_task and result.get("state") != "running":
                return follow.finish_follow(updates, result)
            updates.final(result)
            return follow.EXIT_TASK_ERROR if isinstance(result, dict) and \
                result.get("state") == "error" else follow.EXIT_OK
        return follow.follow_and_report(connection, args.agent_id,
                                        params["task_id"], args.timeout,
                                        updates)
    finally:
        updates.finish()
        connection.close()


def watch(conf):
    args = conf.command
    usage.check_seconds(args.timeout)
    if args.all_tasks:
        if args.agent_id or args.task_id:
            raise usage.UsageError("watch --all takes no AGENT or TASK_ID")
        updates = follow.Updates(sys.stderr, as_json=args.json)
        connection = _connect(conf)
        try:
            return follow.watch_all(lambda: _agent_pages(connection),
                                    updates, timeout=args.timeout)
        except (transport.RemoteError, transport.CallTimeout,
                transport.ConnectionLost) as exc:
            updates.finish()
            print("teeth-endpoint: lost the server while watching: %s"
                  % books.printable(exc), file=sys.stderr)
            return follow.EXIT_TASK_ERROR
        finally:
            connection.close()
    if not (args.agent_id and args.task_id):
        raise usage.UsageError("watch needs AGENT and TASK_ID, or --all")
    updates = follow.Updates(sys.stderr, as_json=args.json,
                             agent_id=args.agent_id)

    def from_db():
        # A task the server no longer knows (or no server): its final
        # state as the database recorded it, when it has one.
        return records.final_from_db(conf, args.agent_id, args.task_id)
    try:
        connection = _connect(conf, updates)
    except SystemExit:
        final = from_db()
        if final is None:
            raise
        print("teeth-endpoint: no server running; the task's final state "
              "from the database", file=sys.stderr)
        return follow.finish_follow(updates, final)
    try:
        return follow.follow_and_report(connection, args.agent_id,
                                        args.task_id, args.timeout, updates,
                                        fallback=from_db)
    finally:
        updates.finish()
        connection.close()


def main(argv=None):
    """Run ``teeth-endpoint``; returns the exit status (a closed stdout
    ends it quietly: :mod:`teeth_agent.cmd.output`)."""
    return output.run(_main, argv)


def _main(argv):
    try:
        conf = prepare(argv)
    except strict.ConfigError as exc:
        return strict.exit_status(exc, "teeth-endpoint", sys.stderr)
    try:
        return _run(conf)
    except usage.UsageError as exc:
        return usage.report("teeth-endpoint", exc)


def _run(conf):
    command = conf.command.name
    if command == "serve":
        return serve(conf)
    if command == "agents":
        return list_agents(conf)
    if command == "dashboard-token":
        return cmd_dashboard.issue_token(conf)
    if command in ("issue-ca", "issue-cert"):
        return issue(conf)
    if command in records.COMMANDS:
        return records.main(conf)
    try:
        if command == "watch":
            return watch(conf)
        return call(conf)
    except KeyboardInterrupt:
        print("teeth-endpoint: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
