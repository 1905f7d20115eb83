"""Trust at the fleet link, endpoint side: identity, ownership, bounds.

A real ``teeth-endpoint serve`` against raw-socket agents (plaintext, set
explicitly) and, for certificate identity, raw mutual-TLS clients holding
certificates made with the openssl command line.
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import unittest

from tests.functional import harness

PLAINTEXT = {"endpoint": {"tls_enabled": "false"}}
AGENT_PLAINTEXT = {"tls": {"enabled": "false"}}


def handshake_params(agent_id, token=None, **extra):
    params = {
        "agent_id": agent_id,
        "agent_version": "raw-trust 1.0",
        "protocol_versions": ["v1"],
        "hardware": {"vendor": "Raw", "product": "Socket", "serial": "S1",
                     "uuid": None, "macs": ["02:00:00:00:00:01"]},
        "extensions": {"testing": ["testing.echo"]},
        "tasks": [],
    }
    if token is not None:
        params["session_token"] = token
    params.update(extra)
    return params


def line(method, params, command_id):
    return json.dumps({"version": "v1", "id": command_id, "method": method,
                       "params": params}).encode() + b"\n"


def peer_address(peer):
    return "%s:%d" % peer.sock.getsockname()[:2]


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as stream:
        for entry in stream:
            if entry.startswith("VmRSS:"):
                return int(entry.split()[1]) * 1024
    return 0


class TrustTestCase(unittest.TestCase):
    overrides = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.endpoint = harness.start_endpoint(
            cls, harness.merge_sections(PLAINTEXT, cls.overrides),
            cls_level=True)

    def connect(self, name="raw agent"):
        peer = harness.connect_peer(self.endpoint.port, name=name)
        self.addCleanup(peer.close)
        return peer

    def join(self, agent_id, token=None, **extra):
        """A connected raw agent; returns ``(peer, handshake result)``."""
        peer = self.connect("raw agent %s" % agent_id)
        response = peer.call("handshake",
                             handshake_params(agent_id, token, **extra))
        self.assertIn("result", response, response)
        return peer, response["result"]

    def assert_refused(self, peer, pattern):
        message = peer.take(lambda m: "fatal_error" in m,
                            what="a fatal_error")
        self.assertRegex(message["fatal_error"], pattern)
        self.assertTrue(peer.wait_closed(), "a refused link stayed open")
        return message["fatal_error"]

    def agent(self, agent_id):
        done = self.endpoint.cli("agents", "--json", timeout=60)
        self.assertEqual(0, done.returncode, done.stderr)
        for entry in harness.parse_json_lines(done.stdout):
            if entry["agent_id"] == agent_id:
                return entry
        return None

    def wait_log(self, pattern, count=1):
        return self.endpoint.wait_for_output(pattern, timeout=15,
                                             count=count)


class TestSessionTokens(TrustTestCase):
    def test_first_handshake_gets_a_token_and_the_line_limit(self):
        _, answer = self.join("tok-first")
        token = answer.get("session_token")
        self.assertIsInstance(token, str)
        # At least 128 bits of randomness (base64: 6 bits a character).
        self.assertGreaterEqual(len(token), 22)
        self.assertIsInstance(answer.get("max_line_length"), int)
        _, other = self.join("tok-first-other")
        self.assertNotEqual(token, other["session_token"])

    def test_impostor_without_a_live_agent_is_refused(self):
        real, answer = self.join("tok-offline")
        token = answer["session_token"]
        real.close()
        harness.wait_until(
            lambda: not (self.agent("tok-offline") or {}).get("connected"),
            15, interval=0.2, what="the real agent gone")
        impostor = self.connect()
        impostor.send_command("handshake", handshake_params("tok-offline"))
        self.assert_refused(impostor,
                            r"session_token missing for agent_id tok-offline")
        wrong = self.connect()
        wrong.send_command("handshake",
                           handshake_params("tok-offline", "x" * 43))
        self.assert_refused(wrong,
                            r"session_token mismatch for agent_id tok-offline")
        self.wait_log(r"WARNING .*refused handshake from %s"
                      % re.escape(peer_address(wrong)))
        # The real agent still gets in with its token, and gets no new one.
        _, again = self.join("tok-offline", token)
        self.assertNotIn("session_token", again)

    def test_impostor_while_the_real_agent_is_live(self):
        real, answer = self.join("tok-live")
        impostor = self.connect()
        impostor.send_command("handshake", handshake_params("tok-live"))
        text = self.assert_refused(
            impostor, r"agent_id tok-live is held by a live connection from "
                      r"%s" % re.escape(peer_address(real)))
        self.assertIn("did not prove the identity", text)
        # The endpoint's log names both addresses.
        self.wait_log(r"WARNING .*refused handshake from %s \(agent_id "
                      r"tok-live; live link: %s\)"
                      % (re.escape(peer_address(impostor)),
                         re.escape(peer_address(real))))
        # The real agent stays connected and still gets commands.
        self.assertEqual({"alive": 1},
                         real.call("ping", {"alive": 1})["result"])
        cli = subprocess.Popen(
            harness.endpoint_cli_argv(self.endpoint.config_path, "call",
                                      "tok-live", "ping", '{"via": "cli"}'),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=harness.plugin_env(), cwd=self.endpoint.workdir)
        self.addCleanup(cli.kill)
        command = real.take_command("ping", timeout=30)
        self.assertEqual({"via": "cli"}, command["params"])
        out, err = cli.communicate(timeout=30)
        self.assertEqual(0, cli.returncode, err)
        self.assertEqual({"via": "cli"}, json.loads(out))
        entry = self.agent("tok-live")
        self.assertTrue(entry["connected"])
        self.assertEqual("agent at %s" % peer_address(real), entry["peer"])
        self.assertTrue(any("refused a link" in v
                            for v in entry["violations"]), entry)

    def test_half_open_reconnection_with_the_token_replaces_the_link(self):
        old, answer = self.join("tok-half-open")
        # The old link is never closed by the "agent" (half open).
        new, again = self.join("tok-half-open", answer["session_token"])
        self.assertNotIn("session_token", again)
        self.assertTrue(old.wait_closed(), "the replaced link stayed open")
        self.assertEqual({"n": 2}, new.call("ping", {"n": 2})["result"])
        entry = self.agent("tok-half-open")
        self.assertEqual("agent at %s" % peer_address(new), entry["peer"])

    def test_second_handshake_on_one_connection_is_fatal(self):
        peer, answer = self.join("tok-twice")
        peer.send_command("handshake", handshake_params(
            "tok-twice", answer["session_token"]))
        self.assert_refused(peer, r"handshake already done on this "
                                  r"connection")

    def test_operator_forgets_an_agent_that_lost_its_token(self):
        real, answer = self.join("forget-cli")
        done = self.endpoint.cli("agents", "--forget", "forget-cli")
        self.assertEqual(1, done.returncode, done.stdout)
        self.assertIn("is connected", done.stderr)
        real.close()
        harness.wait_until(
            lambda: not (self.agent("forget-cli") or {}).get("connected"),
            15, interval=0.2, what="the agent gone")
        done = self.endpoint.cli("agents", "--forget", "forget-cli")
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertIn("forgot agent forget-cli", done.stdout)
        _, again = self.join("forget-cli")
        self.assertIn("session_token", again)
        done = self.endpoint.cli("agents", "--forget", "no-such-agent")
        self.assertEqual(1, done.returncode)
        self.assertIn("NotFound", done.stderr)

    def test_log_and_task_status_before_handshake_stay_refused(self):
        peer = self.connect()
        response = peer.call("log", {"level": "INFO", "message": "x",
                                     "time": 1.0, "logger": "raw"})
        self.assertIn("handshake", response["error"]["msg"])


class TestForgetting(TrustTestCase):
    overrides = {"endpoint": {"forget_after": 1.0}}

    def test_forget_after_drops_the_agent_and_its_token(self):
        real, answer = self.join("forget-timer")
        real.close()
        self.wait_log(r"forgot agent forget-timer: disconnected for more "
                      r"than 1.0s")
        self.assertIsNone(self.agent("forget-timer"))
        # A first use again: accepted without a token, a new one issued.
        _, again = self.join("forget-timer")
        self.assertNotEqual(answer["session_token"], again["session_token"])


class TestTaskOwnership(TrustTestCase):
    def test_forged_final_status_from_a_non_owner_is_not_recorded(self):
        real, answer = self.join("own-forged")
        cli = subprocess.Popen(
            harness.endpoint_cli_argv(
                self.endpoint.config_path, "call", "own-forged",
                "testing.echo", '{"task_id": "t-own"}', "--timeout", "60"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=harness.plugin_env(), cwd=self.endpoint.workdir)
        self.addCleanup(cli.kill)
        command = real.take_command("testing.echo", timeout=30)
        real.respond(command, {"task_id": "t-own", "state": "running"})
        real.call("task_status", {"task_id": "t-own", "state": "running",
                                  "percent": 5.0, "eta": None})
        # Forged: a handshake for the agent and its final state, at once.
        impostor = self.connect()
        impostor.send_raw(
            line("handshake", handshake_params("own-forged"), "f1")
            + line("task_status", {"task_id": "t-own", "state": "complete",
                                   "result": {"forged": True}}, "f2"),
            ignore_errors=True)
        self.assert_refused(impostor, r"held by a live connection")
        self.assertEqual([], [m for m in impostor.received
                              if harness.is_response(m, "f2")
                              and "result" in m])
        entry = self.agent("own-forged")
        self.assertEqual(["running"], [t["state"] for t in entry["tasks"]
                                       if t["task_id"] == "t-own"])
        real.call("task_status", {"task_id": "t-own", "state": "error",
                                  "msg": "the real outcome"})
        out, err = cli.communicate(timeout=60)
        self.assertEqual(1, cli.returncode, err)
        self.assertEqual("the real outcome", json.loads(out)["msg"])
        self.assertNotIn("forged", out)

    def test_second_different_final_state_is_ignored(self):
        real, _ = self.join("own-final")
        real.call("task_status", {"task_id": "t-fin", "state": "complete",
                                  "result": {"n": 1}})
        # The same final again (at-least-once delivery) is no conflict.
        real.call("task_status", {"task_id": "t-fin", "state": "complete",
                                  "result": {"n": 1}})
        real.call("task_status", {"task_id": "t-fin", "state": "error",
                                  "msg": "changed my mind"})
        real.call("task_status", {"task_id": "t-fin", "state": "complete",
                                  "result": {"n": 2}})
        self.wait_log(r"WARNING .*own-final: conflicting final state for "
                      r"task t-fin", count=2)
        entry = self.agent("own-final")
        (task,) = [t for t in entry["tasks"] if t["task_id"] == "t-fin"]
        self.assertEqual("complete", task["state"])
        self.assertEqual(2, len([v for v in entry["violations"]
                                 if "conflicting" in v]), entry)
        # The full status kept is the first one.
        self.assertEqual({"n": 1}, self.final("own-final", "t-fin")["result"])

    def test_handshake_summary_never_overwrites_a_full_final(self):
        real, answer = self.join("own-summary")
        real.call("task_status", {"task_id": "t-sum", "state": "complete",
                                  "result": {"full": True}})
        real.close()
        _, _ = self.join("own-summary", answer["session_token"], tasks=[
            {"task_id": "t-sum", "method": "testing.echo",
             "state": "complete", "percent": 100.0}])
        self.assertEqual({"full": True},
                         self.final("own-summary", "t-sum")["result"])

    def final(self, agent_id, task_id):
        """The full final status the endpoint keeps (watch_task)."""
        from tests.functional import faults_endpoint
        client = faults_endpoint.ControlClient(self.endpoint.control_socket)
        self.addCleanup(client.close)
        response = client.peer.call("watch_task", {
            "agent_id": agent_id, "task_id": task_id, "timeout": 5})
        self.assertIn("result", response, response)
        return response["result"]["status"]


class TestEscaping(TrustTestCase):
    def test_forged_log_lines_and_escape_sequences_are_escaped(self):
        agent_id = "esc-\x1b[2J-agent"
        peer, _ = self.join(agent_id)
        forged = ("hello\n2026-01-01 00:00:00.000 1 CRITICAL teeth_agent "
                  "[-] forged line\x1b[31m red")
        peer.call("log", {"level": "WARNING", "message": forged,
                          "time": 1.0, "logger": "raw\x07"})
        match = self.wait_log(r'\["esc-\\u001b\[2J-agent"\] "raw\\u0007": '
                              r'"hello\\n2026-01-01')
        output = self.endpoint.output()
        self.assertNotIn("\x1b", output)
        self.assertNotIn("\x07", output)
        self.assertNotIn("\nforged", output)
        self.assertIn("forged line\\u001b[31m red", match.string)
        self.assertEqual(0, len(re.findall(r"^2026-01-01 00:00:00.000 1 "
                                           r"CRITICAL", output, re.M)))
        table = self.endpoint.cli("agents")
        self.assertEqual(0, table.returncode, table.stderr)
        self.assertNotIn("\x1b", table.stdout)
        self.assertIn('"esc-\\u001b[2J-agent"', table.stdout)
        listing = self.endpoint.cli("agents", "--json")
        self.assertNotIn("\x1b", listing.stdout)
        self.assertIn(agent_id, [a["agent_id"] for a in
                                 harness.parse_json_lines(listing.stdout)])

    def test_plaintext_links_are_shown(self):
        self.join("esc-plain")
        table = self.endpoint.cli("agents")
        (row,) = [r for r in table.stdout.splitlines()
                  if r.startswith("esc-plain ")]
        self.assertIn("PLAINTEXT", row)
        entry = self.agent("esc-plain")
        self.assertIs(False, entry["tls"])
        self.assertEqual("token", entry["identity"])


class TestBoundedState(TrustTestCase):
    overrides = {"endpoint": {"task_history": 20, "running_task_limit": 50,
                              "log_history": 30, "log_history_bytes": 8192,
                              "max_agents": 2000}}

    def test_task_and_log_floods_stay_bounded(self):
        peer, _ = self.join("flood-tasks")
        before = rss_bytes(self.endpoint.pid)
        chunks = []
        for n in range(6000):
            chunks.append(line("task_status", {
                "task_id": "fake-%05d" % n, "state": "running",
                "percent": 1.0, "eta": None}, "r%d" % n))
            chunks.append(line("task_status", {
                "task_id": "done-%05d" % n, "state": "complete",
                "result": {"pad": "x" * 200}}, "d%d" % n))
        for n in range(500):
            chunks.append(line("log", {"level": "DEBUG", "message": "m" * 300,
                                       "time": 1.0, "logger": "flood"},
                               "l%d" % n))
        peer.send_raw(b"".join(chunks))
        peer.take_response("l499", timeout=120)
        # With a database, task_status is answered from the link's pool
        # (after the commit of a final state), so its answers may come
        # after the inline log's: wait for the last of each.
        peer.take_response("r5999", timeout=120)
        peer.take_response("d5999", timeout=120)
        refused = [m for m in peer.received if harness.is_response(m)
                   and str(m["id"]).startswith("r") and "error" in m]
        self.assertEqual(6000 - 50, len(refused))
        self.assertIn("running_task_limit", refused[0]["error"]["msg"])
        entry = self.agent("flood-tasks")
        states = [t["state"] for t in entry["tasks"]]
        self.assertEqual(50, states.count("running"))
        self.assertEqual(20, states.count("complete"))
        self.assertLessEqual(entry["log_records"], 30)
        self.assertGreater(entry["log_records"], 0)
        self.wait_log(r"WARNING .*flood-tasks: running task fake-00050 "
                      r"refused")
        growth = rss_bytes(self.endpoint.pid) - before
        self.assertLess(growth, 64 * 1024 * 1024, "RSS grew by %d" % growth)

    def test_agent_flood_stays_bounded(self):
        before = rss_bytes(self.endpoint.pid)
        admitted = join_many(self.endpoint.port, "flood-agent-%05d", 3000)
        self.assertEqual(3000, admitted)
        done = self.endpoint.cli("agents", "--json", timeout=120)
        self.assertEqual(0, done.returncode, done.stderr)
        known = harness.parse_json_lines(done.stdout)
        self.assertLessEqual(len(known), 2000)
        # The newest are kept, the longest gone were forgotten.
        ids = {a["agent_id"] for a in known}
        self.assertIn("flood-agent-02999", ids)
        self.assertNotIn("flood-agent-00000", ids)
        self.wait_log(r"WARNING .*max_agents \(2000\) reached")
        growth = rss_bytes(self.endpoint.pid) - before
        self.assertLess(growth, 128 * 1024 * 1024, "RSS grew by %d" % growth)


def join_many(port, pattern, count, connected=False):
    """Handshake ``count`` raw agents, one connection each (closed after
    the answer unless ``connected``); returns how many were answered."""
    answered = 0
    kept = []
    for n in range(count):
        sock = socket.create_connection((harness.HOST, port), timeout=15)
        sock.sendall(line("handshake", handshake_params(pattern % n), "h"))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if b'"result"' in data:
            answered += 1
        if connected:
            kept.append(sock)
        else:
            sock.close()
    for sock in kept:
        sock.close()
    return answered


class TestLargeFleetListing(TrustTestCase):
    overrides = {"endpoint": {"handshake_timeout": 60.0}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.admitted = join_many(cls.endpoint.port, "fleet-%05d", 3000)

    def test_json_lists_every_agent_one_a_line(self):
        self.assertEqual(3000, self.admitted)
        done = self.endpoint.cli("agents", "--json", timeout=120)
        self.assertEqual(0, done.returncode, done.stderr)
        agents = harness.parse_json_lines(done.stdout)
        ids = [a["agent_id"] for a in agents]
        self.assertEqual(3000, len(ids))
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(len(ids), len(set(ids)))

    def test_limit(self):
        done = self.endpoint.cli("agents", "--json", "--limit", "7")
        self.assertEqual(0, done.returncode, done.stderr)
        agents = harness.parse_json_lines(done.stdout)
        self.assertEqual(["fleet-%05d" % n for n in range(7)],
                         [a["agent_id"] for a in agents])
        done = self.endpoint.cli("agents", "--limit", "1200")
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertEqual(1201, len(done.stdout.splitlines()))

    def test_table_of_the_whole_fleet(self):
        done = self.endpoint.cli("agents", timeout=120)
        self.assertEqual(0, done.returncode, done.stderr)
        self.assertEqual(3001, len(done.stdout.splitlines()))


def closed_at_once(sock, timeout=5.0):
    """True when the endpoint closes ``sock`` without a word."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class TestConnectionLimits(unittest.TestCase):
    def start(self, **options):
        options.setdefault("handshake_timeout", 20.0)
        return harness.start_endpoint(self, harness.merge_sections(
            PLAINTEXT, {"endpoint": options}))

    def open(self, endpoint, count):
        socks = []
        for _ in range(count):
            sock = socket.create_connection((harness.HOST, endpoint.port),
                                            timeout=15)
            self.addCleanup(sock.close)
            socks.append(sock)
        return socks

    def assert_usable(self, sock):
        peer = harness.JsonLinePeer(sock)
        self.assertEqual({"up": 1}, peer.call("ping", {"up": 1})["result"])

    def test_per_address_limit(self):
        endpoint = self.start(max_connections_per_address=3)
        held = self.open(endpoint, 3)
        for sock in held:
            self.assert_usable(sock)
        (extra,) = self.open(endpoint, 1)
        self.assertTrue(closed_at_once(extra))
        endpoint.wait_for_output(r"WARNING .*refusing a connection from "
                                 r"127\.0\.0\.1: it already holds 3")
        held[0].close()
        time.sleep(0.5)
        (again,) = self.open(endpoint, 1)
        self.assert_usable(again)

    def test_total_limit(self):
        endpoint = self.start(max_connections_per_address=0,
                              max_connections=4)
        held = self.open(endpoint, 4)
        for sock in held:
            self.assert_usable(sock)
        (extra,) = self.open(endpoint, 1)
        self.assertTrue(closed_at_once(extra))
        endpoint.wait_for_output(r"WARNING .*holds 4 connections "
                                 r"\(max_connections\)")

    def test_partial_line_idle_timeout(self):
        endpoint = self.start(line_idle_timeout=1.0)
        idle, busy = self.open(endpoint, 2)
        idle.sendall(b'{"version": "v1", "id": "half", "met')
        peer = harness.JsonLinePeer(idle)
        started = time.monotonic()
        self.assertTrue(peer.wait_closed(timeout=10))
        self.assertLess(time.monotonic() - started, 8)
        fatal = [m for m in peer.received if "fatal_error" in m]
        self.assertEqual(1, len(fatal), peer.received)
        self.assertIn("partial line", fatal[0]["fatal_error"])
        # A link that sends whole lines, with pauses, stays.
        time.sleep(1.5)
        self.assert_usable(busy)


def _openssl(directory, *args):
    done = subprocess.run(["openssl"] + list(args), capture_output=True,
                          text=True, timeout=60, cwd=directory)
    if done.returncode != 0:
        raise AssertionError("openssl %s failed: %s"
                             % (" ".join(args), done.stderr))


def _openssl_key(directory, name):
    key = os.path.join(directory, name + ".key")
    _openssl(directory, "genpkey", "-algorithm", "EC", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-out", key)
    return key


def openssl_authority(directory, name):
    """A throwaway CA made with the openssl command: ``(cert, key)``."""
    key = _openssl_key(directory, name)
    cert = os.path.join(directory, name + ".pem")
    _openssl(directory, "req", "-x509", "-new", "-key", key, "-out", cert,
             "-days", "2", "-subj", "/CN=%s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def openssl_issue(directory, name, authority, alt_names, usage):
    """A certificate with subject CN ``name``, the subjectAltName entries
    ``alt_names`` and extended key usage ``usage``: ``(cert, key)``."""
    key = _openssl_key(directory, name)
    request = os.path.join(directory, name + ".csr")
    _openssl(directory, "req", "-new", "-key", key, "-out", request,
             "-subj", "/CN=%s" % name)
    extensions = os.path.join(directory, name + ".ext")
    with open(extensions, "w") as stream:
        stream.write("basicConstraints=CA:FALSE\n"
                     "keyUsage=critical,digitalSignature\n"
                     "extendedKeyUsage=%s\n" % usage)
        if alt_names:
            stream.write("subjectAltName=%s\n" % ",".join(alt_names))
    cert = os.path.join(directory, name + ".pem")
    _openssl(directory, "x509", "-req", "-in", request, "-CA", authority[0],
             "-CAkey", authority[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", extensions)
    return cert, key


class TestCertificateIdentity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("the openssl command is not installed")
        certdir = harness.make_workdir(cls, cls_level=True)
        cls.ca = openssl_authority(certdir, "trust-ca")
        server = openssl_issue(certdir, "trust-endpoint", cls.ca,
                               ["IP:127.0.0.1", "DNS:localhost"],
                               "serverAuth")
        cls.machine_a = openssl_issue(certdir, "machine-a", cls.ca,
                                      ["URI:teeth-agent:machine-a"],
                                      "clientAuth")
        # A certificate naming the agent by its subject CN only.
        cls.cn_only = openssl_issue(certdir, "machine-cn", cls.ca, [],
                                    "clientAuth")
        cls.tls_options = {
            "tls_enabled": True, "tls_cert_file": server[0],
            "tls_key_file": server[1], "tls_ca_file": cls.ca[0],
            "tls_require_client_cert": True}
        cls.endpoint = harness.start_endpoint(cls, {"endpoint": dict(
            cls.tls_options, agent_identity="certificate",
            handshake_timeout=3.0)}, cls_level=True)

    def connect(self, cert):
        context = ssl.create_default_context(cafile=self.ca[0])
        context.load_cert_chain(*cert)
        peer = harness.connect_peer(self.endpoint.port, tls=context)
        self.addCleanup(peer.close)
        return peer

    def test_certificate_names_the_agent(self):
        peer = self.connect(self.machine_a)
        response = peer.call("handshake", handshake_params("machine-a"))
        self.assertEqual("machine-a", response["result"]["agent_id"])
        self.assertNotIn("session_token", response["result"])
        done = self.endpoint.cli("agents", "--json")
        (entry,) = [a for a in harness.parse_json_lines(done.stdout)
                    if a["agent_id"] == "machine-a"]
        self.assertIs(True, entry["tls"])
        self.assertEqual("certificate", entry["identity"])

    def test_another_machines_certificate_is_refused(self):
        peer = self.connect(self.machine_a)
        peer.send_command("handshake", handshake_params("machine-b"))
        message = peer.take(lambda m: "fatal_error" in m)
        self.assertEqual("handshake refused: certificate names agent_id "
                         "machine-a, handshake claims machine-b",
                         message["fatal_error"])
        self.assertTrue(peer.wait_closed())
        self.endpoint.wait_for_output(r"WARNING .*refused handshake from "
                                      r"127\.0\.0\.1:\d+ \(agent_id "
                                      r"machine-b")

    def test_common_name_without_san_uri(self):
        peer = self.connect(self.cn_only)
        response = peer.call("handshake", handshake_params("machine-cn"))
        self.assertIn("result", response, response)

    def test_tls_link_without_handshake_is_closed_by_the_deadline(self):
        peer = self.connect(self.machine_a)
        self.assertTrue(peer.wait_closed(timeout=20))
        fatal = [m for m in peer.received if "fatal_error" in m]
        self.assertIn("handshake", fatal[0]["fatal_error"])

    def test_stalled_tls_handshake_is_closed_by_the_deadline(self):
        sock = socket.create_connection((harness.HOST, self.endpoint.port),
                                        timeout=15)
        self.addCleanup(sock.close)
        self.assertTrue(closed_at_once(sock, timeout=20))

    def test_certificate_identity_without_mutual_tls_refuses_to_start(self):
        workdir = harness.make_workdir(self)
        process = harness.EndpointProcess(workdir, {"endpoint": {
            "tls_enabled": "false", "agent_identity": "certificate"}})
        self.addCleanup(process.stop)
        self.assertNotEqual(0, process.wait_exit())
        self.assertIn("agent_identity = certificate needs mutual TLS",
                      process.output())


class TestTokenPersistence(unittest.TestCase):
    def test_tokens_survive_an_endpoint_restart_with_state_dir(self):
        from tests.functional import faults_endpoint
        state_dir = os.path.join(harness.make_workdir(self), "state")
        endpoint = faults_endpoint.RestartableEndpoint(
            self, harness.merge_sections(PLAINTEXT, {"endpoint": {
                "state_dir": state_dir}}))
        peer = harness.connect_peer(endpoint.port)
        self.addCleanup(peer.close)
        token = peer.call("handshake", handshake_params(
            "persist-1"))["result"]["session_token"]
        # The hashes are in the endpoint's database (committed before the
        # handshake answer), a file of mode 0600 holding no token.
        path = os.path.join(state_dir, "endpoint.sqlite")
        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)
        for name in (path, path + "-wal"):
            if os.path.exists(name):
                with open(name, "rb") as stream:
                    self.assertNotIn(token.encode(), stream.read())
        peer.close()
        endpoint.kill()
        endpoint.start()
        impostor = harness.connect_peer(endpoint.port)
        self.addCleanup(impostor.close)
        impostor.send_command("handshake", handshake_params("persist-1"))
        message = impostor.take(lambda m: "fatal_error" in m)
        self.assertIn("session_token missing", message["fatal_error"])
        real = harness.connect_peer(endpoint.port)
        self.addCleanup(real.close)
        answer = real.call("handshake", handshake_params("persist-1", token))
        self.assertIn("result", answer, answer)


class TestDuplicateAgentIds(unittest.TestCase):
    def test_first_agent_keeps_the_id(self):
        endpoint = harness.start_endpoint(self, PLAINTEXT)
        overrides = harness.merge_sections(AGENT_PLAINTEXT, {"DEFAULT": {
            "agent_id": "twin", "reconnect_max_delay": 5.0}})
        harness.start_agent(self, [endpoint.address], overrides)
        (first,) = harness.wait_until(
            lambda: [a for a in endpoint.agents() if a["agent_id"] == "twin"],
            harness.START_TIMEOUT, interval=0.2, what="the first twin")
        harness.start_agent(self, [endpoint.address], overrides)
        endpoint.wait_for_output(r"WARNING .*refused handshake from .* "
                                 r"\(agent_id twin; live link: %s\)"
                                 % re.escape(first["peer"].replace(
                                     "agent at ", "")), timeout=30)
        start = endpoint.count_output(r"refused handshake from")
        time.sleep(10)
        refusals = endpoint.count_output(r"refused handshake from") - start
        (now,) = [a for a in endpoint.agents() if a["agent_id"] == "twin"]
        self.assertEqual(first["peer"], now["peer"])
        self.assertEqual(first["connected_at"], now["connected_at"])
        self.assertEqual(0, endpoint.count_output(r"closing its old "
                                                  r"connection"))
        # The agent's backoff grows after each refusal (reconnect_max_delay
        # 5 s): a handful in 10 s, not the 2-3 a second of a reset backoff.
        self.assertGreaterEqual(refusals, 1)
        self.assertLessEqual(refusals, 12, "the second twin was refused %d "
                             "times in 10 s" % refusals)


if __name__ == "__main__":
    unittest.main()
