"""HTTP(S) proxies for image and firmware downloads.

A data centre often reaches its image store only through a forward proxy.
:class:`Proxies` says which proxy, if any, carries a download URL:

- ``[standbye] proxy`` (one ``http://[user:password@]host:port`` URL for
  both schemes) and ``[standbye] no_proxy``, when ``proxy`` is set (the
  kernel command line sets them in the ramdisk:
  ``teeth_agent.standbye.proxy=http://10.0.0.3:3128``);
- else the environment's ``http_proxy``, ``https_proxy`` and ``no_proxy``
  (read with :func:`urllib.request.getproxies_environment`, so the
  lower-case name wins, as everywhere else).

``no_proxy`` is a list of host names (``example.com`` also covers its
sub-domains, a leading dot changes nothing), IP addresses, networks in CIDR
form (``10.0.0.0/8``), each optionally with ``:port``, or ``*`` (no proxy
at all). Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) are
always reached directly: a proxy would read them as its own.

An ``http://`` URL goes to the proxy as an absolute-URI request; an
``https://`` one through a ``CONNECT`` tunnel, the TLS session (and its
certificate check) being with the image store itself, never the proxy.
Only ``http://`` proxies are supported: a proxy URL of another scheme is a
:class:`ProxyConfigError`.

The proxy changes how bytes travel, not where a download may go: the
redirect policy (:class:`teeth_agent.fetch.http_source.RedirectPolicy`) is
applied to every redirect target before the request is sent to the proxy,
so ``allowed_redirect_networks`` still decides. Credentials in a proxy URL
are sent as ``Proxy-Authorization`` and never logged
(:func:`teeth_agent.fetch.urls.redact`).
"""

import base64
import dataclasses
import ipaddress
import typing
import urllib.parse
import urllib.request

from teeth_agent.fetch import urls


class ProxyConfigError(ValueError):
    """A proxy setting that cannot be used (one sentence)."""


@dataclasses.dataclass(frozen=True)
class Proxy:
    """One proxy: where it listens and the header that authenticates."""

    host: str
    port: int
    url: str
    authorization: typing.Optional[str] = None

    @classmethod
    def parse(cls, url, where):
        """The proxy of ``url``; ``where`` names the setting in errors."""
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ProxyConfigError("%s is not a proxy URL" % where) from None
        if "://" not in url:
            # "proxy:3128", the way some tools accept it.
            return cls.parse("http://" + url.strip(), where)
        if parts.scheme.lower() != "http":
            raise ProxyConfigError(
                "%s must be an http:// proxy URL (%s://: this agent talks "
                "to proxies in plain HTTP and tunnels https:// downloads "
                "with CONNECT)" % (where, parts.scheme.lower()))
        if not parts.hostname:
            raise ProxyConfigError("%s names no proxy host" % where)
        authorization = None
        if parts.username is not None or parts.password is not None:
            credentials = "%s:%s" % (
                urllib.parse.unquote(parts.username or ""),
                urllib.parse.unquote(parts.password or ""))
            authorization = "Basic " + base64.b64encode(
                credentials.encode("utf-8")).decode("ascii")
        return cls(parts.hostname, port or 80, url.strip(), authorization)

    def shown(self):
        """The proxy URL for a log line (credentials hidden)."""
        return urls.redact(self.url)

    def headers(self):
        """The headers a request to (or a tunnel through) it carries."""
        if self.authorization is None:
            return {}
        return {"Proxy-Authorization": self.authorization}


def _parse_no_proxy(entries):
    rules = []
    for entry in entries:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return ["*"]
        host, port = entry, None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif entry.count(":") == 1:
            name, _, number = entry.partition(":")
            if number.isdigit():
                host, port = name, int(number)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            network = None
        rules.append((network, host.lstrip("."), port))
    return rules


class Proxies:
    """Which proxy carries a URL: see the module documentation."""

    def __init__(self, http=None, https=None, no_proxy=()):
        self.http = http
        self.https = https
        self._no_proxy = _parse_no_proxy(no_proxy)

    @classmethod
    def from_environment(cls, environ=None):
        """The proxies of ``http_proxy``/``https_proxy``/``no_proxy``."""
        if environ is None:
            found = urllib.request.getproxies_environment()
        else:
            found = {}
            for name, value in environ.items():
                if value and name.lower().endswith("_proxy"):
                    scheme = name[:-len("_proxy")].lower()
                    # The lower-case name wins, as for every other tool.
                    if name.islower() or scheme not in found:
                        found[scheme] = value
        return cls(
            Proxy.parse(found["http"], "http_proxy")
            if found.get("http") else None,
            Proxy.parse(found["https"], "https_proxy")
            if found.get("https") else None,
            found.get("no", "").split(","))

    @classmethod
    def configured(cls, proxy=None, no_proxy=(), environ=None):
        """``[standbye] proxy`` and ``no_proxy`` when ``proxy`` is set,
        else the environment's."""
        if proxy:
            chosen = Proxy.parse(proxy, "[standbye] proxy")
            return cls(chosen, chosen, no_proxy)
        return cls.from_environment(environ)

    def bypassed(self, host, port):
        """Whether ``host:port`` is reached directly: a loopback host
        (which a proxy would read as its own) or one ``no_proxy``
        names."""
        host = (host or "").lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if host == "localhost" or host.endswith(".localhost") or \
                (address is not None and address.is_loopback):
            return True
        for rule in self._no_proxy:
            if rule == "*":
                return True
            network, name, rule_port = rule
            if rule_port is not None and rule_port != port:
                continue
            if network is not None:
                if address is not None and address in network:
                    return True
                continue
            if host == name or host.endswith("." + name):
                return True
        return False

    def for_url(self, url):
        """The :class:`Proxy` that carries ``url``, or None (direct)."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        chosen = self.https if scheme == "https" else self.http
        if chosen is None:
            return None
        port = parts.port or (443 if scheme == "https" else 80)
        if self.bypassed(parts.hostname, port):
            return None
        return chosen

    def describe(self):
        """The proxies for a log line, credentials hidden."""
        shown = []
        for scheme, chosen in (("http", self.http), ("https", self.https)):
            if chosen is not None:
                shown.append("%s via %s" % (scheme, chosen.shown()))
        return ", ".join(shown) or "no proxy"
