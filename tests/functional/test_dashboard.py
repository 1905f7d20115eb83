"""The web dashboard in a real browser, against real processes.

A real ``teeth-endpoint serve`` with ``[dashboard] enabled`` and a real
``teeth-agent`` (with the ``testing`` extension) run on 127.0.0.1;
headless Chromium (:mod:`tests.functional.browser`) loads the page. The
tests check that it loads without console errors, that a task started
with ``teeth-endpoint call`` appears and its bar reaches 100 % while the
page is never reloaded, its ETA cell showing an estimate meanwhile (a
screenshot is saved as an artifact), and that
HTML and script an agent sends in a log record are shown as text and never
run.
"""

import base64
import csv
import io
import json
import os
import re
import socket
import sys
import textwrap
import unittest
import urllib.request

from teeth_agent import pki
from tests.functional import browser
from tests.functional import harness
from tests.functional import multi

AGENT_ID = "web-test-agent"
HOSTILE = ('<img src=x onerror="window.__pwned=1">'
           '<script>window.__pwned=2</script>\u202eevil')


class TestDashboardInBrowser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = harness.make_workdir(cls, cls_level=True)
        cls.endpoint = harness.start_endpoint(
            cls, {"dashboard": {"enabled": True,
                                "listen": "127.0.0.1:0"}},
            workdir=cls.workdir, cls_level=True)
        match = cls.endpoint.wait_for_output(
            r"teeth-endpoint dashboard at (http://127\.0\.0\.1:\d+/)")
        cls.url = match.group(1)
        cls.agent = harness.start_agent(
            cls, [cls.endpoint.address], {"DEFAULT": {"agent_id": AGENT_ID}},
            workdir=cls.workdir, cls_level=True)
        harness.wait_until(
            lambda: any(a["agent_id"] == AGENT_ID
                        for a in cls.endpoint.agents()),
            harness.START_TIMEOUT, interval=0.2, what="agent connected")
        cls.driver = browser.start_browser(cls, cls.workdir, cls_level=True)

    def load(self):
        self.driver.get(self.url)
        harness.wait_until(lambda: self.agent_state() == "connected",
                           harness.START_TIMEOUT, interval=0.1,
                           what="the agent shown as connected")
        harness.wait_until(
            lambda: self.texts("#live") == ["live"],
            harness.START_TIMEOUT, interval=0.1, what="live updates")

    def texts(self, selector):
        """The text of every element matching ``selector``, read in one
        script run: the page replaces rows on every live update, so
        element handles kept across WebDriver calls can go stale."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]),"
            " e => e.innerText);", selector)

    def agent_cells(self):
        return self.texts(
            "#agents tbody tr[data-agent='%s'] td" % AGENT_ID)

    def agent_state(self):
        cells = self.agent_cells()
        return cells[1] if len(cells) > 1 else None

    def task(self, task_id):
        """``(state, progress value, percent text, ETA text)`` of a task
        row (the ETA cell is the one under the ``ETA`` heading)."""
        return self.driver.execute_script(
            "const row = Array.from(document.querySelectorAll("
            "'#tasks tbody tr')).find(r => r.dataset.task === arguments[0]);"
            "if (!row) { return null; }"
            "const heads = Array.from(document.querySelectorAll("
            "'#tasks thead th'), h => h.textContent.trim());"
            "return [row.dataset.state, row.querySelector('progress').value,"
            " row.querySelector('.percent').textContent.trim(),"
            " row.children[heads.indexOf('ETA')].textContent.trim()];",
            "%s/%s" % (AGENT_ID, task_id))

    def test_page_loads_without_console_errors(self):
        browser.console_errors(self.driver)
        self.load()
        self.assertEqual("teeth-endpoint dashboard", self.driver.title)
        cells = self.agent_cells()
        self.assertEqual("TLS", cells[2])
        # The endpoint process holding the link: host:pid.
        self.assertTrue(cells[5].endswith(
            ":%d" % self.endpoint.process.pid), cells[5])
        self.assertEqual([], browser.console_errors(self.driver))

    def test_task_bar_moves_to_100_without_reload(self):
        self.load()
        self.driver.execute_script("window.__notReloaded = 'yes';")
        done = self.endpoint.cli(
            "call", AGENT_ID, "testing.sleep",
            json.dumps({"task_id": "web-bar", "seconds": 6, "steps": 6}),
            "--no-follow")
        self.assertEqual(0, done.returncode, done.stderr)
        seen = []
        etas = []

        def finished():
            row = self.task("web-bar")
            if row is not None:
                seen.append(row[1])
                if row[0] == "running" and 0 < row[1] < 100:
                    etas.append(row[3])
            return row is not None and row[0] == "complete"
        harness.wait_until(finished, 60, interval=0.1,
                           what="the task's bar at 100 %")
        state, value, text, eta = self.task("web-bar")
        self.assertEqual(100, value)
        self.assertEqual("100.0 %", text)
        self.assertTrue(any(0 < v < 100 for v in seen),
                        "the bar never showed a value between 0 and 100: "
                        "%s" % sorted(set(seen)))
        # While it ran, the ETA cell showed M:SS (or --:-- before the
        # agent had an estimate), and at least once a real estimate that
        # fits a six-second task; once complete, nothing.
        self.assertTrue(etas, "no running row was seen")
        for shown in etas:
            self.assertRegex(shown, r"^(\d+:\d\d|--:--)$")
        estimates = [int(shown.split(":")[0]) * 60 + int(shown.split(":")[1])
                     for shown in etas if shown != "--:--"]
        self.assertTrue(estimates, "the ETA never showed an estimate: %s"
                        % sorted(set(etas)))
        self.assertTrue(all(0 <= value <= 30 for value in estimates),
                        sorted(set(etas)))
        self.assertEqual("", eta)
        self.assertEqual("yes", self.driver.execute_script(
            "return window.__notReloaded;"))
        path = os.path.join(browser.artifacts_dir(),
                            "dashboard-task-complete.png")
        self.assertTrue(self.driver.save_screenshot(path))
        self.assertGreater(os.path.getsize(path), 1000)
        self.assertEqual([], browser.console_errors(self.driver))

    def test_hostile_log_text_is_shown_not_run(self):
        self.load()
        done = self.endpoint.cli(
            "call", AGENT_ID, "testing.echo",
            json.dumps({"value": 1, "log_message": HOSTILE}))
        self.assertEqual(0, done.returncode, done.stderr)

        def shown():
            return [text for text in self.texts("#logs td.message")
                    if "onerror" in text]
        texts = harness.wait_until(shown, 30, interval=0.1,
                                   what="the hostile log record shown")
        self.assertIn('<img src=x onerror="window.__pwned=1">', texts[0])
        self.assertIn("<script>window.__pwned=2</script>", texts[0])
        self.assertIsNone(self.driver.execute_script(
            "return window.__pwned === undefined ? null : window.__pwned;"))
        self.assertEqual([], self.driver.find_elements(
            "css selector", "#logs img, #logs script"))
        self.assertEqual([], browser.console_errors(self.driver))

    def test_a_rogue_agents_markup_everywhere_is_text(self):
        rogue_id = '<img src=x onerror="window.__pwned=3">rogue'
        peer = harness.connect_peer(self.endpoint.port, name="rogue agent")
        self.addCleanup(peer.close)
        answer = peer.call("handshake", {
            "agent_id": rogue_id, "protocol_versions": ["v1"],
            "agent_version": "<script>window.__pwned=4</script>",
            "tasks": []})
        self.assertIn("result", answer, answer)
        for params in ({"task_id": "<b>t</b>", "state": "running",
                        "method": "<i>m</i>", "percent": 50.0},
                       {"task_id": "<b>t</b>", "state": "error",
                        "method": "<i>m</i>",
                        "msg": '<img src=x onerror="window.__pwned=5">'}):
            self.assertIn("result", peer.call("task_status", params))
        self.load()

        def shown():
            rows = self.driver.execute_script(
                "return Array.from(document.querySelectorAll("
                "'#agents tbody tr, #tasks tbody tr'), r => r.textContent);")
            return [row for row in rows if "rogue" in row] or None
        rows = harness.wait_until(shown, 30, interval=0.1,
                                  what="the rogue agent and its task shown")
        page = " ".join(rows)
        self.assertIn('<img src=x onerror="window.__pwned=3">rogue', page)
        self.assertIn("<script>window.__pwned=4</script>", page)
        self.assertIn("<b>t</b>", page)
        self.assertIn('<img src=x onerror="window.__pwned=5">', page)
        self.assertIsNone(self.driver.execute_script(
            "return window.__pwned === undefined ? null : window.__pwned;"))
        self.assertEqual([], self.driver.find_elements(
            "css selector", "main img, main script, main b, main i"))
        self.assertEqual([], browser.console_errors(self.driver))


class TestDashboardFromTheDatabase(unittest.TestCase):
    """The erasure report comes from the endpoint's database: an erase
    recorded before a restart is in the report after it."""

    def start(self, workdir):
        endpoint = harness.start_endpoint(
            self, {"dashboard": {"enabled": True, "listen": "127.0.0.1:0"}},
            workdir=workdir)
        match = endpoint.wait_for_output(
            r"teeth-endpoint dashboard at (http://127\.0\.0\.1:\d+/)")
        return endpoint, match.group(1)

    def test_erasure_records_survive_a_restart(self):
        workdir = harness.make_workdir(self)
        endpoint, url = self.start(workdir)
        peer = harness.connect_peer(endpoint.port, name="raw agent")
        self.addCleanup(peer.close)
        self.assertIn("result", peer.call("handshake", {
            "agent_id": "db-agent", "protocol_versions": ["v1"],
            "agent_version": "raw 1.0", "tasks": []}))
        self.assertIn("result", peer.call("task_status", {
            "task_id": "erase-db", "state": "complete",
            "method": "decom.disk_erase",
            "result": {"devices": [{
                "path": "/dev/sdx", "outcome": "erased",
                "method": "ata_secure_erase", "nist_category": "purge",
                "verified": True, "bytes": 4096, "serial": "SERIAL-1"}]}}))
        peer.close()
        endpoint.stop()
        endpoint, url = self.start(workdir)
        with urllib.request.urlopen(url + "api/erasures.csv",
                                    timeout=10) as response:
            rows = list(csv.DictReader(io.StringIO(
                response.read().decode("utf-8"))))
        self.assertEqual([("db-agent", "erase-db", "complete", "/dev/sdx",
                           "SERIAL-1", "raw 1.0", "4096")],
                         [(r["agent_id"], r["task_id"], r["task_state"],
                           r["path"], r["serial"], r["agent_version"],
                           r["bytes"]) for r in rows])
        with urllib.request.urlopen(url + "api/state",
                                    timeout=10) as response:
            state = json.loads(response.read())
        self.assertEqual(["/dev/sdx"],
                         [r["path"] for r in state["erasures"]])
        # The agent is known from the database, disconnected.
        self.assertEqual([("db-agent", "disconnected")],
                         [(a["agent_id"], a["state"])
                          for a in state["agents"]])


class TestDashboardRefusesToStartExposed(unittest.TestCase):
    """A dashboard off loopback without TLS or its token: ``serve`` stops
    with one line and exit status 2 before it listens; with both it serves
    HTTPS and answers only requests that present the token (Bearer or
    Basic), 401 to the others."""

    def serve(self, dashboard, endpoint=None):
        workdir = harness.make_workdir(self)
        sections = harness.endpoint_sections(
            os.path.join(workdir, "control.sock"),
            {"dashboard": dashboard, "endpoint": endpoint or {}})
        config = harness.write_config(os.path.join(workdir, "e.conf"),
                                      sections)
        return harness.run_command(harness.endpoint_cli_argv(
            config, "serve"), timeout=60), config

    def test_without_tls(self):
        done, _ = self.serve({"enabled": True, "listen": "0.0.0.0:0"},
                             harness.PLAINTEXT_ENDPOINT["endpoint"])
        self.assertEqual(2, done.returncode, done.stderr)
        self.assertEqual(
            ["teeth-endpoint: cannot start: [dashboard] listen 0.0.0.0:0 "
             "is not a loopback address, so the dashboard serves HTTPS "
             "only, with the certificate of [endpoint] tls_cert_file, and "
             "TLS is not set up there"],
            [line for line in done.stderr.splitlines()
             if line.startswith("teeth-endpoint:")])
        self.assertNotIn("Traceback", done.stderr)
        self.assertNotIn("listening", done.stdout)

    def test_a_taken_port_stops_serve_before_it_says_listening(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done, _ = self.serve({"enabled": True,
                              "listen": "127.0.0.1:%d" % port})
        self.assertEqual(2, done.returncode, done.stderr)
        self.assertEqual(
            ["teeth-endpoint: cannot start: the dashboard cannot listen on "
             "127.0.0.1:%d: Address already in use" % port],
            [line for line in done.stderr.splitlines()
             if line.startswith("teeth-endpoint:")])
        self.assertNotIn("teeth-endpoint listening", done.stdout)

    def test_without_a_token_then_with_one(self):
        done, config = self.serve({"enabled": True, "listen": "0.0.0.0:0"})
        self.assertEqual(2, done.returncode, done.stderr)
        self.assertIn("run teeth-endpoint dashboard-token first",
                      done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        made = harness.run_command(harness.endpoint_cli_argv(
            config, "dashboard-token", "--json"))
        self.assertEqual(0, made.returncode, made.stderr)
        token = json.loads(made.stdout)["token"]
        self.assertGreaterEqual(len(token), 43)
        self.assertIn("shown only now", made.stderr)
        state_dir = os.path.join(os.path.dirname(config), "endpoint-state")
        self.assertEqual(os.path.join(state_dir, "dashboard-token.sha256"),
                         json.loads(made.stdout)["hash_file"])
        # Now served with it, off loopback: on the veth address of a
        # network namespace (only this machine reaches it; every address
        # of 127.0.0.0/8 counts as loopback), asked for from the other
        # namespace, as from another host, over HTTPS with the test CA.
        hosts = multi.Hosts(self)
        address = hosts.address(0)
        workdir = harness.make_workdir(self)
        certificate = pki.make_server_certificate(
            harness.tls_material().ca, [address],
            os.path.join(workdir, "pki"))
        served = multi.start_serve(self, workdir, {
            "endpoint": {"state_dir": state_dir,
                         "tls_cert_file": certificate.cert_path,
                         "tls_key_file": certificate.key_path},
            "dashboard": {"enabled": True, "listen": "%s:0" % address}},
            hosts.run(0, "teeth-dashboard-host"))
        url = served.wait_for_output(
            r"teeth-endpoint dashboard at (https://\S+/)").group(1)
        self.assertRegex(url, r"^https://%s:\d+/$" % re.escape(address))
        basic = base64.b64encode(("operator:" + token).encode()).decode()
        wrong = base64.b64encode(b"operator:" + b"x" * 43).decode()
        asked = {
            "none": None,
            "bearer": "Bearer " + token,
            "basic": "Basic " + basic,
            "wrong bearer": "Bearer " + "x" * 43,
            "wrong basic": "Basic " + wrong,
        }
        answers = self.ask(hosts.run(1, "teeth-dashboard-client"), url,
                           asked)
        self.assertEqual({"none": 401, "bearer": 200, "basic": 200,
                          "wrong bearer": 401, "wrong basic": 401},
                         {name: answer["status"]
                          for name, answer in answers.items()})
        self.assertEqual('Basic realm="teeth-endpoint", charset="UTF-8"',
                         answers["none"]["authenticate"])
        for name in ("bearer", "basic"):
            self.assertIn("<title>teeth-endpoint dashboard</title>",
                          answers[name]["body"])
            self.assertEqual("max-age=31536000", answers[name]["hsts"])
        for name in ("none", "wrong bearer", "wrong basic"):
            self.assertNotIn("<title>", answers[name]["body"])

    def ask(self, prefix, url, asked):
        """GET ``url`` through the argv ``prefix`` (another namespace) once
        per ``{name: Authorization header or None}``, trusting only the
        test CA; ``{name: {status, authenticate, hsts, body}}``."""
        script = textwrap.dedent("""
            import json, ssl, sys, urllib.error, urllib.request
            url, cafile, asked = sys.argv[1], sys.argv[2], json.loads(
                sys.argv[3])
            context = ssl.create_default_context(cafile=cafile)
            answers = {}
            for name, header in asked.items():
                request = urllib.request.Request(url)
                if header:
                    request.add_header("Authorization", header)
                try:
                    response = urllib.request.urlopen(
                        request, context=context, timeout=20)
                except urllib.error.HTTPError as error:
                    response = error
                answers[name] = {
                    "status": response.status,
                    "authenticate": response.headers.get("WWW-Authenticate"),
                    "hsts": response.headers.get(
                        "Strict-Transport-Security"),
                    "body": response.read().decode("utf-8", "replace")}
            print(json.dumps(answers))
            """)
        done = harness.run_command(
            list(prefix) + [sys.executable, "-c", script, url,
                            harness.tls_material().ca_file,
                            json.dumps(asked)], timeout=120)
        self.assertEqual(0, done.returncode, done.stderr)
        return json.loads(done.stdout)
