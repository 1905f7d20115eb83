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
