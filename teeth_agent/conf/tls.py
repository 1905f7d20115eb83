"""[tls] options, and the consistency rules of every TLS setting.

TLS is on by default on both sides: the agent verifies the endpoint against
the CA of ``[tls] ca_file`` (never the system's trust store) and the
endpoint serves ``[endpoint] tls_cert_file``. A plaintext link takes an
explicit ``enabled = false`` / ``tls_enabled = false`` and is announced by a
WARNING at start-up. :func:`agent_settings` and :func:`endpoint_settings`
check the settings before anything starts and raise :class:`TLSConfigError`
(one line naming the options) for a combination that cannot be what the
operator meant.
"""

import logging

from oslo_config import cfg

from teeth_agent.conf import group as conf_group

LOG = logging.getLogger(__name__)

MINIMUM_VERSIONS = (("1.2", "TLS 1.2 and later (the default)"),
                    ("1.3", "TLS 1.3 only"))

group = cfg.OptGroup(
    "tls", title="TLS",
    help="Transport security between the agent and its endpoint.")

opts = [
    cfg.BoolOpt(
        "enabled",
        default=True,
        help="Connect to the endpoint over TLS and verify its certificate "
             "against ca_file. When enabled the agent never falls back to "
             "plaintext. Turning it off sends everything, disk commands "
             "included, in the clear; the agent logs a WARNING at start-up "
             "when it is off."),
    cfg.StrOpt(
        "ca_file",
        help="A PEM file of the certificate authorities that may sign the "
             "endpoint's certificate. Required when TLS is enabled: the "
             "agent never trusts the system's default store for its "
             "endpoint."),
    cfg.StrOpt(
        "cert_file",
        help="A PEM certificate the agent presents to the endpoint (mutual "
             "TLS), e.g. one made by teeth-endpoint issue-cert. Requires "
             "key_file unless the private key is in the same file."),
    cfg.StrOpt(
        "key_file",
        help="The PEM private key that belongs to cert_file."),
    cfg.BoolOpt(
        "check_hostname",
        default=True,
        help="Require the endpoint's certificate to name the host or IP "
             "address the agent connects to. Only turn this off when "
             "endpoints are reached by addresses their certificates cannot "
             "list; the agent logs a WARNING at start-up when it is off."),
    cfg.StrOpt(
        "minimum_version",
        default="1.2",
        choices=MINIMUM_VERSIONS,
        help="The oldest TLS version the agent accepts from its endpoint."),
]


class TLSConfigError(ValueError):
    """TLS settings that contradict each other or miss a required file."""


def register_opts(conf):
    conf_group.register(conf, group, opts)


def _pem_has_private_key(path):
    try:
        with open(path, "rb") as stream:
            return b"PRIVATE KEY-----" in stream.read()
    except OSError as exc:
        raise TLSConfigError("cannot read %s: %s" % (path, exc)) from None


def _check_pair(cert_option, cert_file, key_option, key_file):
    if key_file and not cert_file:
        raise TLSConfigError("%s is set but %s is not: a private key is "
                             "useless without its certificate"
                             % (key_option, cert_option))
    if cert_file and not key_file and not _pem_has_private_key(cert_file):
        raise TLSConfigError("%s (%s) holds no private key and %s is not "
                             "set" % (cert_option, cert_file, key_option))


def agent_settings(conf):
    """The checked ``[tls]`` settings of the agent.

    Returns None for a plaintext link (after a WARNING), else the keyword
    arguments of :func:`teeth_agent.transport.client_tls_context`. Raises
    :class:`TLSConfigError`.
    """
    tls = conf.tls
    if not tls.enabled:
        for name in ("cert_file", "key_file"):
            if getattr(tls, name):
                raise TLSConfigError(
                    "[tls] %s is set but [tls] enabled is false: a client "
                    "certificate needs TLS" % name)
        LOG.warning("[tls] enabled is false: the link to the endpoint is "
                    "PLAINTEXT, unauthenticated and unencrypted")
        return None
    if not tls.ca_file:
        raise TLSConfigError(
            "[tls] enabled needs [tls] ca_file (the CA that signs the "
            "endpoint's certificate); set enabled = false for a plaintext "
            "link")
    _check_pair("[tls] cert_file", tls.cert_file, "[tls] key_file",
                tls.key_file)
    if not tls.check_hostname:
        LOG.warning("[tls] check_hostname is false: any certificate signed "
                    "by %s is accepted for every endpoint address",
                    tls.ca_file)
    return {"ca_file": tls.ca_file, "cert_file": tls.cert_file or None,
            "key_file": tls.key_file or None,
            "check_hostname": tls.check_hostname,
            "minimum_version": tls.minimum_version}


def endpoint_settings(conf):
    """The checked TLS settings of ``[endpoint]``.

    Returns None for plaintext (after a WARNING), else the keyword
    arguments of :func:`teeth_agent.transport.server_tls_context`. Raises
    :class:`TLSConfigError`.
    """
    group = conf.endpoint
    if not group.tls_enabled:
        if group.tls_require_client_cert:
            raise TLSConfigError(
                "[endpoint] tls_require_client_cert is true but "
                "tls_enabled is false: client certificates need TLS")
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            if getattr(group, name):
                raise TLSConfigError(
                    "[endpoint] %s is set but tls_enabled is false" % name)
        LOG.warning("[endpoint] tls_enabled is false: agents connect in "
                    "PLAINTEXT, unauthenticated and unencrypted")
        return None
    if not group.tls_cert_file and not group.tls_key_file:
        raise TLSConfigError(
            "[endpoint] tls_enabled needs tls_cert_file and tls_key_file "
            "(teeth-endpoint issue-cert --server makes them); set "
            "tls_enabled = false for plaintext")
    _check_pair("[endpoint] tls_cert_file", group.tls_cert_file,
                "[endpoint] tls_key_file", group.tls_key_file)
    if group.tls_require_client_cert and not group.tls_ca_file:
        raise TLSConfigError(
            "[endpoint] tls_require_client_cert needs tls_ca_file (the CA "
            "that signs the agents' certificates)")
    return {"cert_file": group.tls_cert_file,
            "key_file": group.tls_key_file or None,
            "ca_file": group.tls_ca_file or None,
            "require_client_cert": group.tls_require_client_cert,
            "minimum_version": group.tls_minimum_version}


#: The addresses a peer port may listen on but nobody can dial.
_WILDCARDS = ("0.0.0.0", "::", "")


def _host_port(option, text, port_required=True):
    """``host:port`` (``[v6]:port``) -> ``(host, port)``; port None when
    it is not required and absent."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            port = ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, None
        elif ":" in host:
            # A bare IPv6 address without a port.
            host, port = text, None
    if port is None and not port_required:
        return host, None
    if port is None or not port.isdigit() or not 0 <= int(port) < 65536:
        raise TLSConfigError("[endpoint] %s %r is not host:port (e.g. "
                             "0.0.0.0:9998, [::]:9998)" % (option, text))
    return host, int(port)


def peer_settings(conf):
    """The checked settings of the peer link (``[endpoint] peer_listen``),
    or None when it is off.

    Returns ``{"host", "port", "advertise_host", "advertise_port",
    "cert_file", "key_file", "ca_file", "minimum_version"}``
    (``advertise_port`` None: the port bound). Raises
    :class:`TLSConfigError`: there is no plaintext peer link, so the
    listen address, the endpoint's certificate and key and a CA are all
    required.
    """
    group = conf.endpoint
    if not group.peer_listen.strip():
        for name in ("peer_advertise", "peer_ca_file"):
            if getattr(group, name).strip():
                raise TLSConfigError("[endpoint] %s is set but peer_listen "
                                     "is empty" % name)
        return None
    host, port = _host_port("peer_listen", group.peer_listen)
    if group.peer_advertise.strip():
        advertise_host, advertise_port = _host_port(
            "peer_advertise", group.peer_advertise, port_required=False)
        if advertise_host in _WILDCARDS:
            raise TLSConfigError("[endpoint] peer_advertise %r is no "
                                 "address another machine can dial"
                                 % group.peer_advertise)
    elif host in _WILDCARDS:
        raise TLSConfigError(
            "[endpoint] peer_listen %s listens on every address: set "
            "peer_advertise to the host name or address the other "
            "processes dial (one the certificate names)"
            % group.peer_listen)
    else:
        advertise_host, advertise_port = host, None
    if not group.tls_cert_file:
        raise TLSConfigError(
            "[endpoint] peer_listen needs tls_cert_file and tls_key_file, "
            "an endpoint certificate (teeth-endpoint issue-cert --server); "
            "the peer link is never plaintext")
    _check_pair("[endpoint] tls_cert_file", group.tls_cert_file,
                "[endpoint] tls_key_file", group.tls_key_file)
    ca_file = group.peer_ca_file.strip() or group.tls_ca_file
    if not ca_file:
        raise TLSConfigError(
            "[endpoint] peer_listen needs peer_ca_file or tls_ca_file (the "
            "CA that signs the endpoint certificates)")
    return {"host": host, "port": port, "advertise_host": advertise_host,
            "advertise_port": advertise_port,
            "cert_file": group.tls_cert_file,
            "key_file": group.tls_key_file or None, "ca_file": ca_file,
            "minimum_version": group.tls_minimum_version}
