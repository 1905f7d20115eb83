"""A local image server for the standbye tests: 127.0.0.1 only.

Serves files from a dict of URL path -> file path, honours ``Range``
(``bytes=a-`` and ``bytes=a-b``, answering 206 with ``Content-Range``),
and can be told to misbehave: answer a status code, drop the connection
after some bytes (once), ignore ``Range``, redirect (``redirects``: URL
path -> Location) or send a body one byte every ``drip`` seconds.
"""

import http.server
import os
import re
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        self.server.log.append(fmt % args)

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.headers.append(dict(self.headers))
        location = server.redirects.get(self.path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = server.statuses.get(self.path)
        path = server.files.get(self.path)
        if status is not None or path is None:
            self.send_response(status or 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start, end = 0, size - 1
        ranged = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d"
                             % (start, end, size))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        limit = server.drop_after.get(self.path)
        if server.drip.get(self.path):
            self._drip(path, start, end, server.drip[self.path])
            return
        with open(path, "rb") as stream:
            stream.seek(start)
            remaining = end - start + 1
            sent = 0
            while remaining:
                chunk = stream.read(min(remaining, 1024 * 1024))
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[:limit - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    server.drop_after.pop(self.path, None)
                    server.dropped.append(self.path)
                    return
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
                sent += len(chunk)
                remaining -= len(chunk)

    def _drip(self, path, start, end, interval):
        with open(path, "rb") as stream:
            stream.seek(start)
            data = stream.read(end - start + 1)
        for index in range(len(data)):
            try:
                self.wfile.write(data[index:index + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(interval)


class ImageServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` on 127.0.0.1; ``url(path)`` names one."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}
        self.statuses = {}
        self.drop_after = {}
        self.dropped = []
        self.ignore_range = False
        self.redirects = {}
        self.drip = {}
        self.requests = []
        self.headers = []
        self.log = []
        self._thread = threading.Thread(target=self.serve_forever,
                                        daemon=True)

    def add(self, url_path, file_path):
        self.files[url_path] = file_path
        return self.url(url_path)

    def url(self, url_path):
        return "http://127.0.0.1:%d%s" % (self.server_address[1], url_path)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
