"""Image and firmware downloads through an HTTP proxy on 127.0.0.1.

A small forward proxy, written here, serves absolute-URI GETs and CONNECT
tunnels, and knows the image store by a name only it can resolve
(``images.test``), as a data centre's proxy does. The downloads use the
agent's own code (:func:`teeth_agent.fetch.download.fetch`) with
:class:`teeth_agent.fetch.proxy.Proxies` from options or the environment.
"""

import base64
import hashlib
import http.client
import http.server
import logging
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
import unittest
from unittest import mock
import urllib.parse
import uuid

from teeth_agent.cmd import agent as agent_cmd
from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.fetch import proxy
from teeth_agent import kernel_cmdline
from teeth_agent import pki
from tests.functional import harness
from tests.functional import standbye_http

STORE = "images.test"
USER, PASSWORD = "fetcher", "s3cret-proxy-pw"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _authorized(self):
        wanted = self.server.credentials
        given = self.headers.get("Proxy-Authorization")
        self.server.seen.append((self.command, self.path, given))
        if wanted is None or given == "Basic " + base64.b64encode(
                wanted.encode()).decode():
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _upstream(self, host, port):
        return self.server.hosts.get((host, port))

    def do_GET(self):
        if not self._authorized():
            return
        parsed = urllib.parse.urlsplit(self.path)
        port = parsed.port or 80
        upstream = self._upstream(parsed.hostname, port)
        if parsed.scheme != "http" or upstream is None:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        connection = http.client.HTTPConnection(*upstream, timeout=30)
        headers = {name: value for name, value in self.headers.items()
                   if not name.lower().startswith("proxy-")}
        target = parsed.path + ("?" + parsed.query if parsed.query else "")
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection"):
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        connection.close()

    def do_CONNECT(self):
        if not self._authorized():
            return
        host, _, port = self.path.rpartition(":")
        upstream = self._upstream(host, int(port))
        if upstream is None:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        remote = socket.create_connection(upstream, timeout=30)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.server.tunnels.append(self.path)
        local = self.connection
        try:
            while True:
                ready, _, _ = select.select([local, remote], [], [], 30)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (remote if sock is local else local).sendall(data)
        finally:
            remote.close()
            self.close_connection = True


class ForwardProxy(http.server.ThreadingHTTPServer):
    """The forward proxy: ``hosts`` maps (name, port) to a real
    127.0.0.1 address; ``credentials`` ("user:password") when it wants
    them; ``seen`` and ``tunnels`` record what it was asked."""

    daemon_threads = True

    def __init__(self, credentials=None):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.credentials = credentials
        self.hosts = {}
        self.seen = []
        self.tunnels = []
        self._thread = threading.Thread(target=self.serve_forever,
                                        daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data
        return len(data)


class ProxyDownloadTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="teeth-proxy-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.payload = os.urandom(300 * 1024)
        self.image = os.path.join(self.dir, "image.raw")
        with open(self.image, "wb") as handle:
            handle.write(self.payload)
        self.digest = hashlib.sha256(self.payload).hexdigest()
        self.store = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.store.__exit__)
        self.store.add("/image.raw", self.image)
        self.store_port = self.store.server_address[1]

    def start_proxy(self, credentials=None):
        server = ForwardProxy(credentials).__enter__()
        self.addCleanup(server.__exit__)
        server.hosts[(STORE, 80)] = ("127.0.0.1", self.store_port)
        return server

    def fetch(self, url, proxies, **kwargs):
        sink = Sink()
        result = download.fetch(
            [url], {"sha256": self.digest}, sink, retries=0, backoff=0,
            timeout=20, redirects=http_source.RedirectPolicy(
                kwargs.pop("allowed", ()), proxies=proxies), **kwargs)
        return result, bytes(sink.data)

    def test_http_through_the_configured_proxy_with_credentials(self):
        server = self.start_proxy("%s:%s" % (USER, PASSWORD))
        configured = server.url.replace("http://", "http://%s:%s@"
                                        % (USER, PASSWORD))
        proxies = proxy.Proxies.configured(configured, [])
        with self.assertLogs("teeth_agent.fetch", logging.DEBUG) as logs:
            result, data = self.fetch("http://%s/image.raw" % STORE,
                                      proxies)
        self.assertEqual(self.payload, data)
        self.assertEqual(self.digest, result["hexdigest"])
        method, uri, auth = server.seen[-1]
        self.assertEqual(("GET", "http://%s/image.raw" % STORE),
                         (method, uri))
        self.assertTrue(auth.startswith("Basic "))
        # The store never saw the proxy's credentials.
        self.assertFalse(any(name.lower().startswith("proxy-")
                             for headers in self.store.headers
                             for name in headers))
        text = "\n".join(logs.output)
        self.assertIn("through proxy http://***@127.0.0.1", text)
        self.assertNotIn(PASSWORD, text)

    def test_wrong_proxy_credentials_fail_without_showing_them(self):
        server = self.start_proxy("%s:%s" % (USER, PASSWORD))
        configured = server.url.replace("http://", "http://%s:wrong-pw@"
                                        % USER)
        with self.assertRaises(errors.DownloadError) as caught:
            self.fetch("http://%s/image.raw" % STORE,
                       proxy.Proxies.configured(configured, []))
        self.assertIn("407", str(caught.exception))
        self.assertNotIn("wrong-pw", str(caught.exception))

    def test_https_through_a_connect_tunnel(self):
        ca = harness.tls_material().ca
        made = pki.make_server_certificate(ca, [STORE],
                                           os.path.join(self.dir, "tls"))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(made.cert_path, made.key_path)
        self.store.socket = context.wrap_socket(self.store.socket,
                                                server_side=True)
        server = self.start_proxy()
        server.hosts[(STORE, 443)] = ("127.0.0.1", self.store_port)
        environ = {"https_proxy": server.url, "no_proxy": "other.test"}
        result, data = self.fetch(
            "https://%s/image.raw" % STORE,
            proxy.Proxies.configured(None, [], environ=environ),
            ssl_context=harness.tls_material().client_context())
        self.assertEqual(self.payload, data)
        self.assertEqual(["%s:443" % STORE], server.tunnels)

    def test_no_proxy_and_loopback_go_direct(self):
        server = self.start_proxy()
        proxies = proxy.Proxies.configured(server.url, ["images.test"])
        # images.test cannot be resolved here: going direct fails, which
        # shows the proxy was not used.
        with self.assertRaises(errors.DownloadError):
            self.fetch("http://%s/image.raw" % STORE, proxies)
        result, data = self.fetch(self.store.url("/image.raw"), proxies)
        self.assertEqual(self.payload, data)
        self.assertEqual([], server.seen)

    def test_redirect_policy_still_applies_through_the_proxy(self):
        server = self.start_proxy()
        self.store.redirects["/moved"] = "http://127.0.0.1:%d/image.raw" \
            % self.store_port
        proxies = proxy.Proxies.configured(server.url, [])
        with self.assertRaises(errors.NoUsableURL) as caught:
            self.fetch("http://%s/moved" % STORE, proxies)
        self.assertIn("127.0.0.1 is a loopback address", str(caught.exception))
        # Allowed by allowed_redirect_networks, it is followed.
        result, data = self.fetch("http://%s/moved" % STORE, proxies,
                                  allowed=["127.0.0.0/8"])
        self.assertEqual(self.payload, data)


class ProxySettingsTest(unittest.TestCase):
    def test_environment_lower_case_wins_and_options_override(self):
        environ = {"HTTP_PROXY": "http://upper:1", "http_proxy":
                   "http://lower:2", "NO_PROXY": "a.test"}
        proxies = proxy.Proxies.configured(None, [], environ=environ)
        self.assertEqual(("lower", 2), (proxies.http.host, proxies.http.port))
        self.assertIsNone(proxies.for_url("http://x.a.test/i"))
        chosen = proxy.Proxies.configured("http://opt:3", ["10.0.0.0/8"],
                                          environ=environ)
        self.assertEqual("opt", chosen.for_url("https://b.test/i").host)
        self.assertIsNone(chosen.for_url("http://10.1.2.3/i"))
        self.assertEqual("opt", chosen.for_url("http://a.test/i").host)

    def test_a_proxy_of_another_scheme_is_refused(self):
        with self.assertRaises(proxy.ProxyConfigError) as caught:
            proxy.Proxies.configured("socks5://p:1080", [])
        self.assertIn("must be an http:// proxy URL", str(caught.exception))


class KernelCommandLineTest(unittest.TestCase):
    def test_the_ramdisk_sets_the_proxy_on_the_kernel_command_line(self):
        directory = tempfile.mkdtemp(prefix="teeth-proxy-cmdline-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "cmdline")
        with open(path, "w") as handle:
            handle.write("quiet teeth_agent.standbye.proxy=http://10.0.0.3:"
                         "3128 teeth_agent.standbye.no_proxy=10.0.0.0/8,"
                         "images.local\n")
        with mock.patch.object(kernel_cmdline, "RUN_DIR",
                               os.path.join(directory, "run")), \
                mock.patch.object(agent_cmd.logsetup, "setup_logging"):
            conf = agent_cmd.prepare(["--config-dir", directory],
                                     kernel_cmdline_path=path)
        proxies = proxy.Proxies.configured(conf.standbye.proxy,
                                           conf.standbye.no_proxy)
        self.assertEqual(("10.0.0.3", 3128),
                         (proxies.https.host, proxies.https.port))
        self.assertIsNone(proxies.for_url("http://images.local/i"))
        self.assertIsNone(proxies.for_url("https://10.9.8.7/i"))


class AgentThroughProxyTest(unittest.TestCase):
    """A real agent process with ``[standbye] proxy`` caches an image the
    image store serves under a name only the proxy can resolve: the
    command's download goes through the proxy (its log shows the request,
    with the configured credentials). Fails when the extension stops
    passing the option on (the agent then cannot reach the store).
    ``no_proxy`` is checked by tests/unit/extensions/test_proxy_wiring.py
    (a host that must go direct would need a name resolvable here, and
    every name but localhost, which is never proxied, is resolved by
    DNS)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="teeth-proxy-agent-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.payload = os.urandom(256 * 1024)
        image = os.path.join(self.dir, "image.raw")
        with open(image, "wb") as handle:
            handle.write(self.payload)
        self.digest = hashlib.sha256(self.payload).hexdigest()
        self.store = standbye_http.ImageServer().__enter__()
        self.addCleanup(self.store.__exit__)
        self.store.add("/image.raw", image)
        self.proxy = ForwardProxy("%s:%s" % (USER, PASSWORD)).__enter__()
        self.addCleanup(self.proxy.__exit__)
        self.proxy.hosts[(STORE, 80)] = ("127.0.0.1",
                                         self.store.server_address[1])
        server = harness.start_server(self)
        work = harness.make_workdir(self)
        self.cache_dir = os.path.join(work, "cache")
        configured = self.proxy.url.replace(
            "http://", "http://%s:%s@" % (USER, PASSWORD))
        self.agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"enabled_extensions": ["standbye"]},
            "standbye": {"image_cache_dir": self.cache_dir,
                         "work_dir": os.path.join(work, "standbye"),
                         "download_retries": 0,
                         "proxy": configured}}, workdir=work)
        try:
            self.peer, _ = harness.accept_handshake(server, timeout=60)
        except AssertionError as exc:
            raise AssertionError("%s\nagent output:\n%s"
                                 % (exc, self.agent.output()[-4000:]))
        self.addCleanup(self.peer.close)

    def cache(self, task_id, url):
        """Run ``standbye.cache_images`` of one image; its final status."""
        response = self.peer.call("standbye.cache_images", {
            "task_id": task_id,
            "images": [{"id": str(uuid.uuid4()), "urls": [url],
                        "hashes": {"sha256": self.digest},
                        "size": len(self.payload)}]})
        self.assertIn("result", response, response)
        final = self.peer.take(
            lambda message: harness.is_task_status(message, task_id) and
            message["params"].get("state") in ("complete", "error"),
            timeout=120, what="the final status of %s" % task_id)
        return final["params"]

    def test_cache_images_goes_through_the_configured_proxy(self):
        status = self.cache("c1", "http://%s/image.raw" % STORE)
        self.assertEqual("complete", status["state"],
                         "%s\nagent output:\n%s"
                         % (status, self.agent.output()[-4000:]))
        (entry,) = status["result"]["images"]
        self.assertEqual(("cached", len(self.payload)),
                         (entry["status"], entry["size"]))
        with open(os.path.join(self.cache_dir, entry["id"] + ".image"),
                  "rb") as f:
            self.assertEqual(self.payload, f.read())
        method, uri, auth = self.proxy.seen[-1]
        self.assertEqual(("GET", "http://%s/image.raw" % STORE),
                         (method, uri))
        self.assertTrue(auth and auth.startswith("Basic "))
        # The store saw the request through the proxy, without its
        # credentials; the agent's log does not show the password.
        self.assertTrue(self.store.headers)
        self.assertFalse(any(name.lower().startswith("proxy-")
                             for headers in self.store.headers
                             for name in headers))
        self.assertNotIn(PASSWORD, self.agent.output())
