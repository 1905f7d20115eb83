"""A small certificate authority for teeth-agent deployments and tests.

TLS is on by default between agents and their endpoint, so every deployment
needs at least a CA certificate (which the agents trust) and a server
certificate for the endpoint. This module makes them with the
``cryptography`` package, the way ``teeth-endpoint issue-ca`` and
``teeth-endpoint issue-cert`` do, and the demo and the tests make throwaway
ones with it:

* :func:`make_ca`: a self-signed CA (EC P-256, ``CA:TRUE``, may only sign
  certificates and CRLs);
* :func:`make_server_certificate`: the endpoint's certificate, naming the
  DNS names and IP addresses agents (and the other endpoint processes) use
  to reach it, and marked as an endpoint's: the SAN URI
  ``teeth-endpoint:<first host>`` and both ``serverAuth`` and ``clientAuth``
  (it is the server to agents and to other endpoint processes, and the
  client of its own links to those: see :func:`is_endpoint_certificate`);
* :func:`make_agent_certificate`: one machine's client certificate, whose
  identity is the SAN URI ``teeth-agent:<agent_id>`` (``clientAuth``), the
  form the endpoint's ``agent_identity = certificate`` reads.

Private keys are written with mode 0600 (atomically: a partly written key
never appears under its final name); certificates with mode 0644.
"""

import datetime
import ipaddress
import os
import tempfile

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

#: The scheme of the SAN URI that names an agent in its client certificate.
AGENT_URI_SCHEME = "teeth-agent"
#: The scheme of the SAN URI that marks an endpoint's certificate. The peer
#: link between endpoint processes accepts only such certificates, and the
#: agents' port never takes one for an agent's.
ENDPOINT_URI_SCHEME = "teeth-endpoint"

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "endpoint.pem"
SERVER_KEY = "endpoint-key.pem"
AGENT_CERT = "agent.pem"
AGENT_KEY = "agent-key.pem"

DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 825
# Tolerate clocks a little behind the issuer's (freshly booted machines).
_BACKDATE = datetime.timedelta(hours=1)


class PKIError(Exception):
    """A certificate or key cannot be made, read or written."""


class Issued:
    """A certificate, its private key and where they were written."""

    def __init__(self, certificate, key, cert_path=None, key_path=None):
        self.certificate = certificate
        self.key = key
        self.cert_path = cert_path
        self.key_path = key_path


def agent_uri(agent_id):
    """The SAN URI naming ``agent_id``: ``teeth-agent:<agent_id>``."""
    return "%s:%s" % (AGENT_URI_SCHEME, agent_id)


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject, issuer, public_key, days):
    if days < 1:
        raise PKIError("a certificate must be valid for at least one day, "
                       "not %d" % days)
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                public_key), critical=False))


def _leaf_usage(builder, ca):
    ca_public = ca.certificate.public_key()
    return (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_public), critical=False))


def create_ca(common_name="teeth-agent CA", days=DEFAULT_CA_DAYS):
    """A new self-signed CA (not written anywhere); returns :class:`Issued`.
    """
    key = _new_key()
    name = _name(common_name)
    certificate = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256()))
    return Issued(certificate, key)


def _host_names(hosts):
    names = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            try:
                names.append(x509.DNSName(host))
            except ValueError as exc:
                raise PKIError("%r is neither an IP address nor a DNS name: "
                               "%s" % (host, exc)) from None
    if not names:
        raise PKIError("a server certificate needs at least one host name or "
                       "IP address")
    return names


def endpoint_uri(name):
    """The SAN URI marking an endpoint's certificate:
    ``teeth-endpoint:<name>``."""
    return "%s:%s" % (ENDPOINT_URI_SCHEME, name)


def create_server_certificate(ca, hosts, days=DEFAULT_DAYS):
    """The endpoint's certificate for ``hosts`` (DNS names and IP
    addresses), signed by ``ca`` (an :class:`Issued`), marked as an
    endpoint's (:func:`is_endpoint_certificate`)."""
    names = _host_names(hosts)
    key = _new_key()
    certificate = (
        _leaf_usage(_builder(_name(hosts[0]), ca.certificate.subject,
                             key.public_key(), days), ca)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH,
             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            names + [x509.UniformResourceIdentifier(
                endpoint_uri(hosts[0].strip()))]), critical=False)
        .sign(ca.key, hashes.SHA256()))
    return Issued(certificate, key)


def _san_uris(certificate):
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _usages(certificate):
    try:
        return set(certificate.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def is_endpoint_certificate(certificate):
    """Whether ``certificate`` (a ``cryptography`` certificate) is an
    endpoint's, as :func:`create_server_certificate` makes them: a SAN URI
    ``teeth-endpoint:...``, no SAN URI ``teeth-agent:...``, and both
    ``serverAuth`` and ``clientAuth``. An agent's certificate (only
    ``clientAuth``, a ``teeth-agent:`` URI) never is; nor is a server
    certificate the same CA signed for something else (an image server:
    no marker). Whether the CA signed it is the TLS handshake's check."""
    uris = _san_uris(certificate)
    marked = any(uri.startswith(ENDPOINT_URI_SCHEME + ":") for uri in uris)
    agent = any(uri.startswith(AGENT_URI_SCHEME + ":") for uri in uris)
    needed = {ExtendedKeyUsageOID.SERVER_AUTH,
              ExtendedKeyUsageOID.CLIENT_AUTH}
    return marked and not agent and needed <= _usages(certificate)


def is_endpoint_certificate_der(data):
    """:func:`is_endpoint_certificate` of a DER certificate (what a TLS
    socket's ``getpeercert(binary_form=True)`` gives); False for None or
    bytes that are no certificate."""
    if not data:
        return False
    try:
        return is_endpoint_certificate(x509.load_der_x509_certificate(data))
    except ValueError:
        return False


def load_certificate(path):
    """The first PEM certificate in ``path``. Raises :class:`PKIError`."""
    try:
        with open(path, "rb") as stream:
            return x509.load_pem_x509_certificate(stream.read())
    except (OSError, ValueError) as exc:
        raise PKIError("cannot load the certificate %s: %s"
                       % (path, exc)) from None


def create_agent_certificate(ca, agent_id, days=DEFAULT_DAYS):
    """One machine's client certificate, naming ``agent_id`` in its SAN URI
    ``teeth-agent:<agent_id>`` and its subject CN, signed by ``ca``."""
    if not agent_id or any(c.isspace() for c in agent_id):
        raise PKIError("an agent_id must be a non-empty word, not %r"
                       % (agent_id,))
    key = _new_key()
    certificate = (
        _leaf_usage(_builder(_name(agent_id), ca.certificate.subject,
                             key.public_key(), days), ca)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(agent_uri(agent_id))]),
            critical=False)
        .sign(ca.key, hashes.SHA256()))
    return Issued(certificate, key)


# -- files ------------------------------------------------------------------

def _write_atomically(path, data, mode):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write(issued, cert_path, key_path):
    """Write a certificate (0644) and its key (0600, unencrypted PEM);
    sets and returns ``issued``'s paths."""
    try:
        _write_atomically(cert_path, issued.certificate.public_bytes(
            serialization.Encoding.PEM), 0o644)
        _write_atomically(key_path, issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
    except OSError as exc:
        raise PKIError("cannot write %s / %s: %s"
                       % (cert_path, key_path, exc)) from None
    issued.cert_path = cert_path
    issued.key_path = key_path
    return issued


def load(cert_path, key_path):
    """Read a certificate and its unencrypted PEM key (e.g. the CA's)."""
    try:
        with open(cert_path, "rb") as stream:
            certificate = x509.load_pem_x509_certificate(stream.read())
        with open(key_path, "rb") as stream:
            key = serialization.load_pem_private_key(stream.read(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise PKIError("cannot load %s / %s: %s"
                       % (cert_path, key_path, exc)) from None
    if certificate.public_key().public_numbers() != \
            key.public_key().public_numbers():
        raise PKIError("the key %s does not belong to the certificate %s"
                       % (key_path, cert_path))
    return Issued(certificate, key, cert_path, key_path)


def _refuse_overwrite(*paths):
    existing = [path for path in paths if os.path.exists(path)]
    if existing:
        raise PKIError("refusing to overwrite %s" % ", ".join(existing))


def make_ca(directory, common_name="teeth-agent CA", days=DEFAULT_CA_DAYS):
    """Create a CA in ``directory`` (``ca.pem``, ``ca-key.pem``); never
    overwrites an existing one."""
    cert_path = os.path.join(directory, CA_CERT)
    key_path = os.path.join(directory, CA_KEY)
    _refuse_overwrite(cert_path, key_path)
    return write(create_ca(common_name, days), cert_path, key_path)


def make_server_certificate(ca, hosts, directory, days=DEFAULT_DAYS):
    """Issue and write ``endpoint.pem`` and ``endpoint-key.pem``."""
    cert_path = os.path.join(directory, SERVER_CERT)
    key_path = os.path.join(directory, SERVER_KEY)
    _refuse_overwrite(cert_path, key_path)
    return write(create_server_certificate(ca, list(hosts), days),
                 cert_path, key_path)


def make_agent_certificate(ca, agent_id, directory, days=DEFAULT_DAYS):
    """Issue and write ``agent.pem`` and ``agent-key.pem`` for one
    machine."""
    cert_path = os.path.join(directory, AGENT_CERT)
    key_path = os.path.join(directory, AGENT_KEY)
    _refuse_overwrite(cert_path, key_path)
    return write(create_agent_certificate(ca, agent_id, days),
                 cert_path, key_path)


def make_throwaway(directory, hosts=("127.0.0.1", "localhost")):
    """A CA and an endpoint certificate for ``hosts`` in ``directory``
    (the demo's and the tests'); returns ``(ca, server)``."""
    ca = make_ca(directory, common_name="teeth-agent throwaway CA", days=30)
    server = make_server_certificate(ca, hosts, directory, days=30)
    return ca, server
