"""The dashboard's listener: routes, headers, the login, the bounds.

A real :class:`DashboardServer` listens on 127.0.0.1 (port 0) in front of
an in-process endpoint whose agents are fakes (:mod:`.fakes`). The test
runs on the hub; its HTTP requests run in an OS thread
(``transport.run_in_thread``) so the hub keeps answering the server's
reads meanwhile.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time

from oslo_config import cfg

from teeth_agent import conf as teeth_conf
from teeth_agent.endpoint import errors
from teeth_agent.endpoint.web import auth
from teeth_agent.endpoint.web import http as web_http
from teeth_agent import pki
from teeth_agent import transport
from tests import base
from tests.unit.endpoint.web import fakes


def request(port, path, method="GET", headers=None, context=None,
            host="127.0.0.1"):
    """``(status, headers, body)`` of one request (blocking: run it in a
    thread)."""
    if context is not None:
        connection = http.client.HTTPSConnection(host, port, timeout=10,
                                                 context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class Stream:
    """A raw Server-Sent Events reader (blocking: use from a thread)."""

    def __init__(self, port, headers=""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(("GET /api/events HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                           "%s\r\n" % headers).encode())
        self.buffer = b""

    def head(self):
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head.decode()

    def event(self):
        """The next ``(event, data)``, comments and retry lines skipped."""
        while True:
            while b"\n\n" not in self.buffer:
                self._read()
            block, _, self.buffer = self.buffer.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in
                          block.decode().splitlines()
                          if ": " in line and not line.startswith(":"))
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])

    def _read(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the stream ended")
        self.buffer += data

    def close(self):
        self.sock.close()


class DashboardTestCase(base.TestCase):
    def start(self, **kwargs):
        self.fleet = fakes.Fleet()
        self.server = web_http.DashboardServer(self.fleet.endpoint, port=0,
                                               **kwargs)
        self.port = self.server.start()
        self.addCleanup(self.server.stop)
        return self.server

    def get(self, path, **kwargs):
        return transport.run_in_thread(request, self.port, path, **kwargs)


class TestRoutesAndHeaders(DashboardTestCase):
    def setUp(self):
        super().setUp()
        self.start()

    def test_every_answer_has_the_security_headers(self):
        for path in ("/", "/static/app.js", "/api/state", "/metrics",
                     "/nothing-here", "/api/erasures.csv"):
            status, headers, _ = self.get(path)
            self.assertEqual(web_http.CONTENT_SECURITY_POLICY,
                             headers["Content-Security-Policy"], path)
            self.assertIn("script-src 'self'",
                          headers["Content-Security-Policy"])
            self.assertNotIn("unsafe", headers["Content-Security-Policy"])
            self.assertEqual("nosniff", headers["X-Content-Type-Options"])
            self.assertEqual("no-referrer", headers["Referrer-Policy"])
            self.assertEqual("DENY", headers["X-Frame-Options"])
            self.assertEqual("teeth-endpoint", headers["Server"])

    def test_the_page_has_no_inline_script_or_style(self):
        status, headers, body = self.get("/")
        self.assertEqual(200, status)
        page = body.decode()
        self.assertEqual(1, page.count("<script"))
        self.assertIn('<script src="/static/app.js" defer></script>', page)
        self.assertNotIn("style=", page)
        self.assertNotIn("<style", page)
        self.assertNotIn(" on", page.replace(" one", ""))
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)

    def test_static_files_only_by_their_names(self):
        for name, content_type in web_http.STATIC.items():
            status, headers, _ = self.get("/static/" + name)
            self.assertEqual((200, content_type),
                             (status, headers["Content-Type"]))
        for path in ("/static/../http.py", "/static/", "/static/app.js/",
                     "/static/%2e%2e/auth.py", "//etc/passwd"):
            self.assertEqual(404, self.get(path)[0], path)

    def test_read_only_other_methods_are_refused(self):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, headers, body = self.get("/api/state", method=method)
            self.assertEqual(405, status, method)
            self.assertEqual("GET, HEAD", headers["Allow"])
            self.assertIn(b"read-only", body)

    def test_head_answers_without_a_body(self):
        status, headers, body = self.get("/", method="HEAD")
        self.assertEqual(200, status)
        self.assertEqual(b"", body)
        self.assertGreater(int(headers["Content-Length"]), 100)

    def test_a_foreign_host_name_is_refused_without_a_login(self):
        # DNS rebinding: a web site whose name now points at 127.0.0.1.
        status, _, body = self.get("/api/state",
                                   headers={"Host": "evil.example"})
        self.assertEqual(421, status)
        for host in ("127.0.0.1:%d" % self.port, "localhost",
                     "[::1]:%d" % self.port, "127.0.0.2"):
            self.assertEqual(200, self.get("/api/state",
                                           headers={"Host": host})[0], host)

    def test_state_shows_agents_tasks_logs_and_erasures(self):
        fleet = self.fleet
        fleet.connect("a", tls=True)
        fleet.connect("b")
        fleet.disconnect("b")
        fleet.task("a", "t1", "running", method="decom.disk_erase",
                   percent=42.5, eta=60)
        fleet.task("a", "t0", "complete", method="decom.disk_erase",
                   result=fakes.erase_result(("/dev/sda", "erased", 10)))
        fleet.log("a", "<script>alert(1)</script>")
        status, headers, body = self.get("/api/state")
        self.assertEqual("application/json", headers["Content-Type"])
        state = json.loads(body)
        agents = {agent["agent_id"]: agent for agent in state["agents"]}
        self.assertEqual("connected", agents["a"]["state"])
        self.assertTrue(agents["a"]["tls"])
        self.assertEqual(1, agents["a"]["running_tasks"])
        self.assertTrue(agents["a"]["holder"].endswith(":%d" % os.getpid()))
        self.assertEqual("disconnected", agents["b"]["state"])
        self.assertIsNotNone(agents["b"]["last_seen"])
        tasks = {task["task_id"]: task for task in state["tasks"]}
        self.assertEqual((42.5, 60), (tasks["t1"]["percent"],
                                      tasks["t1"]["eta"]))
        self.assertEqual("t1", state["tasks"][0]["task_id"])  # running 1st
        self.assertEqual("<script>alert(1)</script>",
                         state["logs"][-1]["message"])
        self.assertEqual(["/dev/sda"],
                         [row["path"] for row in state["erasures"]])
        # Even a browser that ignored the type would find no markup.
        self.assertNotIn(b"<", body)
        self.assertIn(b"\\u003cscript\\u003e", body)

    def test_erasure_reports_download_as_json_and_csv(self):
        self.fleet.connect("a")
        self.fleet.task("a", "e1", "complete", method="decom.disk_erase",
                        result=fakes.erase_result(
                            ("/dev/sda", "erased", 10),
                            ("=HYPERLINK(\"http://x\")", "failed", 0)))
        status, headers, body = self.get("/api/erasures.csv")
        self.assertEqual(200, status)
        self.assertEqual("text/csv; charset=utf-8", headers["Content-Type"])
        self.assertRegex(headers["Content-Disposition"],
                         r'^attachment; filename="erasures-\d{8}T\d{6}Z'
                         r'\.csv"$')
        lines = body.decode().splitlines()
        self.assertTrue(lines[0].startswith("agent_id,task_id,task_state"))
        self.assertIn("a,e1,complete,", lines[1])
        self.assertIn("'=HYPERLINK", lines[2])
        status, headers, body = self.get("/api/erasures.json")
        report = json.loads(body)
        self.assertEqual(2, len(report["records"]))
        self.assertEqual(10, report["records"][0]["device"]["bytes"])
        self.assertIn("attachment", headers["Content-Disposition"])

    def test_metrics_are_the_prometheus_text_format(self):
        self.fleet.connect("a")
        status, headers, body = self.get("/metrics")
        self.assertEqual(200, status)
        self.assertTrue(headers["Content-Type"].startswith("text/plain"))
        self.assertIn(b'teeth_endpoint_agents_connected{tls="false"} 1.0',
                      body)


class BlockingRecords:
    """A record source that does I/O (as a database does): the dashboard
    must call it from its own threads, never on the hub."""

    blocking = True

    def __init__(self, records=(), fail=None):
        self.records = list(records)
        self.fail = fail
        self.threads = set()

    def erasure_records(self, limit=None):
        self.threads.add(threading.current_thread().name)
        if self.fail:
            raise self.fail
        return self.records if limit is None else self.records[-limit:]


class TestBlockingRecordSource(DashboardTestCase):
    def test_a_blocking_source_is_read_off_the_hub(self):
        source = BlockingRecords([{"agent_id": "a", "task_id": "e",
                                   "path": "/dev/sdq", "outcome": "erased",
                                   "device": {"path": "/dev/sdq"}}])
        self.start(records=source)
        state = json.loads(self.get("/api/state")[2])
        self.assertEqual(["/dev/sdq"], [r["path"] for r in state["erasures"]])
        self.assertIsNone(state["erasures_error"])
        self.assertNotIn("device", state["erasures"][0])
        body = self.get("/api/erasures.csv")[2].decode()
        self.assertIn("/dev/sdq", body)
        self.assertNotIn(threading.current_thread().name, source.threads)
        self.assertTrue(source.threads)

    def test_a_failing_source_is_one_line_and_503(self):
        self.start(records=BlockingRecords(fail=RuntimeError(
            "database is locked\nsecond line")))
        status, _, body = self.get("/api/erasures.json")
        self.assertEqual(503, status)
        self.assertEqual(b"The erasure records cannot be read now: database "
                         b"is locked\n", body)
        # The picture and the stream go on without the records.
        status, _, body = self.get("/api/state")
        self.assertEqual(200, status)
        state = json.loads(body)
        self.assertEqual([], state["erasures"])
        self.assertEqual("The erasure records cannot be read now: "
                         "database is locked", state["erasures_error"])
        stream = transport.run_in_thread(Stream, self.port)
        self.addCleanup(stream.close)
        transport.run_in_thread(stream.head)
        event, state = transport.run_in_thread(stream.event)
        self.assertEqual(("state", "The erasure records cannot be read "
                          "now: database is locked"),
                         (event, state["erasures_error"]))
        # The page and the metrics do not need the records.
        self.assertEqual(200, self.get("/")[0])
        self.assertEqual(200, self.get("/metrics")[0])


class TestLogin(DashboardTestCase):
    def setUp(self):
        super().setUp()
        self.state_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.state_dir)
        self.token = auth.issue_token(self.state_dir)
        self.start(token_hash=auth.load_hash(self.state_dir))

    def test_without_the_token_every_route_asks_for_it(self):
        for path in ("/", "/api/state", "/api/events", "/metrics",
                     "/api/erasures.csv", "/static/app.js"):
            status, headers, body = self.get(path)
            self.assertEqual(401, status, path)
            self.assertIn("Basic", headers["WWW-Authenticate"])
            self.assertNotIn(b"teeth_endpoint", body)

    def test_bearer_and_basic_with_the_token(self):
        bearer = {"Authorization": "Bearer " + self.token}
        self.assertEqual(200, self.get("/metrics", headers=bearer)[0])
        basic = base64.b64encode(("operator:" + self.token).encode())
        self.assertEqual(200, self.get("/", headers={
            "Authorization": "Basic " + basic.decode()})[0])
        # With the token a host name other than loopback is fine.
        bearer["Host"] = "dashboard.example"
        self.assertEqual(200, self.get("/api/state", headers=bearer)[0])

    def test_wrong_or_malformed_credentials(self):
        wrong = [
            "Bearer " + self.token[:-1],
            "Bearer " + auth.load_hash(self.state_dir),  # the hash itself
            "Bearer",
            "Basic !!!",
            "Basic " + base64.b64encode(self.token.encode()).decode(),
            "Digest " + self.token,
            "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
        ]
        for header in wrong:
            self.assertEqual(401, self.get("/api/state", headers={
                "Authorization": header})[0], header)


class TestTLS(DashboardTestCase):
    def test_https_with_the_endpoint_certificate(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        ca, server = pki.make_throwaway(directory)
        self.start(tls_context=web_http.server_tls_context(
            server.cert_path, server.key_path))
        context = ssl.create_default_context(cafile=ca.cert_path)
        status, headers, _ = self.get("/api/state", context=context)
        self.assertEqual(200, status)
        self.assertIn("max-age", headers["Strict-Transport-Security"])
        self.assertTrue(self.server.url.startswith("https://"))
        # Plain HTTP to the HTTPS port gets no answer.
        with self.assertRaises((ConnectionError, http.client.HTTPException,
                                OSError)):
            self.get("/api/state")


class TestBounds(DashboardTestCase):
    def test_streams_past_max_event_clients_get_503(self):
        self.start(max_event_clients=1)
        first = transport.run_in_thread(Stream, self.port)
        self.addCleanup(first.close)
        self.assertIn("200", transport.run_in_thread(first.head))
        status, headers, body = self.get("/api/events")
        self.assertEqual(503, status)
        self.assertEqual("30", headers["Retry-After"])
        self.assertIn(b"max_event_clients", body)
        # The page itself is still served.
        self.assertEqual(200, self.get("/")[0])
        metrics = self.get("/metrics")[2]
        self.assertIn(b"teeth_endpoint_dashboard_event_clients 1.0", metrics)
        self.assertIn(
            b"teeth_endpoint_dashboard_event_clients_dropped_total 1.0",
            metrics)

    def test_a_hundred_tabs_neither_stall_the_hub_nor_lock_out_the_page(self):
        self.start(max_connections=64, max_event_clients=32)
        self.fleet.connect("a")

        def open_tabs():
            tabs, statuses = [], []
            for _ in range(100):
                tab = Stream(self.port)
                try:
                    statuses.append(tab.head().split()[1])
                    tabs.append(tab)
                except (ConnectionError, OSError):
                    statuses.append("closed")
                    tab.close()
            return tabs, statuses
        tabs, statuses = transport.run_in_thread(open_tabs)
        for tab in tabs:
            self.addCleanup(tab.close)
        self.assertEqual(32, statuses.count("200"))
        self.assertEqual(68, statuses.count("503"))
        # None of the 32 open streams reads; the hub goes on, the page and
        # the metrics are still served, and updates still reach a stream.
        self.fleet.task("a", "t", "running", percent=5.0)
        self.assertEqual(200, self.get("/")[0])
        self.assertEqual(200, self.get("/api/state")[0])
        open_stream = tabs[0]
        event, _ = transport.run_in_thread(open_stream.event)
        self.assertEqual("state", event)
        event, batch = transport.run_in_thread(open_stream.event)
        self.assertEqual(["t"], [t["task_id"] for t in batch["tasks"]])

    def test_connections_past_max_connections_get_503(self):
        self.start(max_connections=2, max_event_clients=1, write_timeout=5)
        idle = [socket.create_connection(("127.0.0.1", self.port))
                for _ in range(2)]
        for sock in idle:
            self.addCleanup(sock.close)
        transport.sleep(0.3)  # both accepted and holding their slots
        status, _, _ = self.get("/")
        self.assertEqual(503, status)
        for sock in idle:
            sock.close()

        def served():
            # The closed connections' threads give their slots back soon.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if request(self.port, "/")[0] == 200:
                        return True
                except OSError:
                    pass
                time.sleep(0.05)
            return False
        self.assertTrue(transport.run_in_thread(served))

    def test_the_stream_sends_the_picture_then_the_changes(self):
        self.start()
        self.fleet.connect("a")
        stream = transport.run_in_thread(Stream, self.port)
        self.addCleanup(stream.close)
        head = transport.run_in_thread(stream.head)
        self.assertIn("Content-Type: text/event-stream", head)
        event, state = transport.run_in_thread(stream.event)
        self.assertEqual("state", event)
        self.assertEqual(["a"], [a["agent_id"] for a in state["agents"]])
        for percent in (10.0, 20.0, 30.0):
            self.fleet.task("a", "t1", "running", method="testing.sleep",
                            percent=percent)
        self.fleet.log("a", "line\nwith a break and \u2028")
        event, batch = transport.run_in_thread(stream.event)
        self.assertEqual("batch", event)
        # Coalesced: the newest status of the task, once.
        self.assertEqual([("t1", 30.0)],
                         [(t["task_id"], t["percent"])
                          for t in batch["tasks"]])
        self.assertEqual(["line\nwith a break and \u2028"],
                         [row["message"] for row in batch["logs"]])
        self.fleet.disconnect("a")
        event, batch = transport.run_in_thread(stream.event)
        self.assertEqual(["disconnected"],
                         [a["state"] for a in batch["agents"]])


class TestFromConf(base.TestCase):
    def conf(self, **dashboard):
        conf = cfg.ConfigOpts()
        teeth_conf.register_endpoint_opts(conf)
        conf([])
        self.state_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.state_dir)
        conf.set_override("state_dir", self.state_dir, group="endpoint")
        conf.set_override("tls_enabled", False, group="endpoint")
        conf.set_override("enabled", True, group="dashboard")
        for name, value in dashboard.items():
            conf.set_override(name, value, group="dashboard")
        return conf

    def build(self, conf):
        return web_http.DashboardServer.from_conf(conf, fakes.Fleet().endpoint)

    def test_loopback_needs_neither_tls_nor_a_token(self):
        server = self.build(self.conf())
        self.assertIsNone(server.token_hash)
        self.assertIsNone(server.tls_context)
        self.assertEqual(("127.0.0.1", 8780), (server.host, server.port))

    def test_not_loopback_without_tls_is_refused(self):
        with self.assertRaises(errors.EndpointConfigError) as caught:
            self.build(self.conf(listen="0.0.0.0:8780"))
        self.assertIn("serves HTTPS only", str(caught.exception))

    def test_not_loopback_without_a_token_is_refused(self):
        conf = self.conf(listen="0.0.0.0:8780")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        _, server = pki.make_throwaway(directory)
        conf.set_override("tls_enabled", True, group="endpoint")
        conf.set_override("tls_cert_file", server.cert_path,
                          group="endpoint")
        conf.set_override("tls_key_file", server.key_path, group="endpoint")
        with self.assertRaises(auth.TokenFileError) as caught:
            self.build(conf)
        self.assertIn("run teeth-endpoint dashboard-token first",
                      str(caught.exception))
        auth.issue_token(self.state_dir)
        built = self.build(conf)
        self.assertIsNotNone(built.tls_context)
        self.assertIsNotNone(built.token_hash)

    def test_require_token_on_loopback(self):
        conf = self.conf(require_token=True)
        with self.assertRaises(auth.TokenFileError):
            self.build(conf)
        auth.issue_token(self.state_dir)
        self.assertIsNotNone(self.build(conf).token_hash)

    def test_streams_may_not_take_every_connection(self):
        with self.assertRaises(errors.EndpointConfigError) as caught:
            self.build(self.conf(max_connections=8, max_event_clients=8))
        self.assertIn("max_event_clients (8) must be below",
                      str(caught.exception))

    def test_a_taken_port_is_one_line(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = self.build(self.conf(listen="127.0.0.1:%d" % port))
        with self.assertRaises(errors.EndpointConfigError) as caught:
            server.start()
        self.assertIn("cannot listen on 127.0.0.1:%d" % port,
                      str(caught.exception))
        server.stop()  # never started: nothing to undo
