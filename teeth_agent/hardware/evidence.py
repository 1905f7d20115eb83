"""Erasure evidence: the signed per-device record of a ``decom.disk_erase``.

A record is one device's entry of the erase result (its identity, the
method, its NIST SP 800-88 category, the read-back, the times and the tool
that did it). With ``[decom] evidence_key`` the agent signs each record with
an Ed25519 key, so an auditor can check a report later without trusting the
endpoint that stored it (``teeth-agent verify-evidence``).

What is signed, byte for byte (``docs/decom.md`` "Erasure evidence"):
:data:`DOMAIN` followed by the canonical JSON of the record without its
``signature`` field: keys sorted, no whitespace (``","`` and ``":"``
separators), non-ASCII characters as themselves, UTF-8, no NaN or
infinity. ``signing_key_fingerprint`` is part of what is signed, so a
record cannot be passed off as signed by another key. The domain prefix
keeps a signature over a record from being valid for any other message
the same key might sign.

Threats: a hostile endpoint or storage edits a record (any field changes
the canonical bytes, so the signature fails); a record signed by another
key (the fingerprint and the signature both fail); a record stripped of its
signature (reported as unsigned, never as valid). The key file is checked
at start-up like an SSH host key: a regular file (not a symbolic link),
owned by root or the agent's user, readable by its owner alone.
"""

import base64
import dataclasses
import datetime
import hashlib
import json
import os
import stat

from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives import serialization


#: Prefixed to the canonical JSON before signing (and verifying).
DOMAIN = b"teeth-agent erase evidence v1\n"

#: The record fields the signature adds; ``signature`` alone is left out of
#: the signed bytes.
SIGNATURE = "signature"
FINGERPRINT = "signing_key_fingerprint"

#: The file modes a key file may have.
KEY_MODES = (0o600, 0o400)

#: The largest key file read (an Ed25519 PEM is about 120 bytes).
MAX_KEY_BYTES = 16 * 1024


class EvidenceKeyError(ValueError):
    """The evidence key file cannot be used; the message says why."""


class EvidenceFormatError(ValueError):
    """An evidence file holds no record that can be checked."""


def utc_timestamp(when=None):
    """``when`` (a POSIX time, default now) as RFC 3339 UTC with
    milliseconds: ``"2026-12-01T23:59:01.250Z"``."""
    moment = datetime.datetime.fromtimestamp(
        when if when is not None else datetime.datetime.now(
            datetime.timezone.utc).timestamp(), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + \
        "%03dZ" % (moment.microsecond // 1000)


def canonical_json(value):
    """The canonical UTF-8 JSON of ``value`` (see the module docstring)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def signed_bytes(record):
    """The bytes a signature of ``record`` covers."""
    return DOMAIN + canonical_json(
        {key: value for key, value in record.items() if key != SIGNATURE})


def fingerprint(public_key):
    """``"sha256:<hex>"`` of the raw 32-byte Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw,
                                  serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _read_key_file(path):
    """The bytes of the key file ``path``, after the ownership and mode
    checks, made on the opened file itself (no swap in between)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY)
    except FileNotFoundError:
        raise EvidenceKeyError("the [decom] evidence_key file %s does not "
                               "exist." % path) from None
    except OSError as exc:
        if os.path.islink(path):
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s is a symbolic link; name "
                "the key file itself." % path) from None
        raise EvidenceKeyError("the [decom] evidence_key file %s cannot be "
                               "opened: %s." % (path, exc.strerror or exc)
                               ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EvidenceKeyError("the [decom] evidence_key %s is not a "
                                   "regular file." % path)
        if info.st_uid not in {0, os.geteuid()}:
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s is owned by uid %d; it "
                "must be owned by root or by the agent's user (uid %d)."
                % (path, info.st_uid, os.geteuid()))
        mode = stat.S_IMODE(info.st_mode)
        if mode not in KEY_MODES:
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s has mode %04o; it must be "
                "0600 or 0400 (readable by its owner alone)." % (path, mode))
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_BYTES:
        raise EvidenceKeyError("the [decom] evidence_key file %s is larger "
                               "than %d bytes, so it is no Ed25519 key."
                               % (path, MAX_KEY_BYTES))
    return data


class Signer:
    """Signs erase records with one Ed25519 private key."""

    def __init__(self, private_key):
        self._key = private_key
        self.public_key = private_key.public_key()
        self.fingerprint = fingerprint(self.public_key)

    @classmethod
    def from_file(cls, path):
        """Load the PEM private key at ``path`` (strict checks, see the
        module docstring). Raises :class:`EvidenceKeyError`."""
        data = _read_key_file(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s is encrypted; the agent "
                "needs an unencrypted key." % path) from None
        except (ValueError, UnsupportedAlgorithm):
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s is not a PEM private key."
                % path) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise EvidenceKeyError(
                "the [decom] evidence_key file %s holds a %s key; it must "
                "be an Ed25519 key." % (path, type(key).__name__.replace(
                    "PrivateKey", "").lstrip("_") or "different"))
        return cls(key)

    def sign(self, record):
        """A copy of ``record`` with :data:`FINGERPRINT` and
        :data:`SIGNATURE` (base64 of the 64-byte signature)."""
        signed = {key: value for key, value in record.items()
                  if key not in (SIGNATURE, FINGERPRINT)}
        signed[FINGERPRINT] = self.fingerprint
        signature = self._key.sign(signed_bytes(signed))
        signed[SIGNATURE] = base64.b64encode(signature).decode("ascii")
        return signed


def load_public_key(path):
    """The Ed25519 public key in the PEM file ``path``.

    Raises :class:`EvidenceKeyError`.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise EvidenceKeyError("the public key file %s cannot be read: %s."
                               % (path, exc.strerror or exc)) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise EvidenceKeyError("the public key file %s is not a PEM public "
                               "key." % path) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise EvidenceKeyError("the public key file %s holds no Ed25519 "
                               "key." % path)
    return key


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What :func:`verify_record` found: ``valid`` and why (a sentence
    fragment)."""

    valid: bool
    reason: str


def verify_record(record, public_key):
    """Check the signature of one record against ``public_key``.

    Returns a :class:`Verdict`; never raises for a bad record.
    """
    if not isinstance(record, dict):
        return Verdict(False, "the record is not a JSON object")
    signature = record.get(SIGNATURE)
    if signature is None:
        return Verdict(False, "the record has no signature")
    if not isinstance(signature, str):
        return Verdict(False, "the signature is not a string")
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return Verdict(False, "the signature is not base64")
    expected = fingerprint(public_key)
    if record.get(FINGERPRINT) != expected:
        return Verdict(False, "the record names signing key %s, not the "
                       "given key %s" % (record.get(FINGERPRINT), expected))
    try:
        payload = signed_bytes(record)
    except ValueError:
        return Verdict(False, "the record holds a value canonical JSON "
                       "does not allow")
    try:
        public_key.verify(raw, payload)
    except InvalidSignature:
        return Verdict(False, "the signature does not match the record "
                       "(it was changed after signing)")
    return Verdict(True, "signature valid")


#: Outcomes of a result entry for which no erase was attempted: such an
#: entry carries no evidence and the agent does not sign it.
NOT_ERASE_RECORDS = ("skipped", "excluded")

#: The only fields of such an entry (``covered_by`` and ``namespaces`` when
#: it stands for an NVMe namespace a reset replaced).
NOT_ERASE_FIELDS = frozenset(("path", "outcome", "reason", "detail",
                              "covered_by", "namespaces"))


def check_record(record, public_key):
    """Check one record of an evidence file: a :class:`Verdict`, or None
    when there is nothing to check.

    Every record that carries a signature (or names a signing key) is
    verified, whatever its ``outcome``: a signed erase record edited to
    ``skipped`` fails. Nothing is checked only for an unsigned entry for
    which no erase was attempted (``outcome`` skipped or excluded) that
    holds nothing but the fields such an entry has; an unsigned one with
    anything more (a serial, a method, timestamps) is invalid: the agent
    would have signed it, so it is an erase record with its signature
    removed, or made up. Other unsigned records are invalid too.
    """
    if isinstance(record, dict) and SIGNATURE not in record and \
            FINGERPRINT not in record and \
            record.get("outcome") in NOT_ERASE_RECORDS:
        extra = sorted(set(record) - NOT_ERASE_FIELDS)
        if not extra:
            return None
        return Verdict(False, "the record has no signature, and its outcome "
                       "%s comes with fields only an erase record has (%s): "
                       "a signed record whose signature was removed, or one "
                       "made up" % (record["outcome"], ", ".join(extra)))
    return verify_record(record, public_key)


def parse_records(text):
    """The records in an evidence file, as ``[(label, value)]``.

    ``text`` is one JSON value (a record, a list of records, or a
    ``decom.disk_erase`` result or task state holding ``devices``) or JSON
    lines (one record per line, blank lines ignored). ``label`` names the
    record in a report ("line 3", "devices[1]"). A line that is not JSON is
    kept as ``None`` so that it counts as invalid. Raises
    :class:`EvidenceFormatError` when there is nothing to check.
    """
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            records.extend(_records_of(value, "line %d" % number))
    else:
        records = _records_of(whole, None)
    if not records:
        raise EvidenceFormatError("the file holds no erase record.")
    return records


def _records_of(value, label):
    if isinstance(value, dict):
        for holder in ("result", "details"):
            if isinstance(value.get(holder), dict) and \
                    "devices" in value[holder]:
                value = value[holder]
                break
    if isinstance(value, dict) and isinstance(value.get("devices"), list):
        prefix = "%s: " % label if label else ""
        return [("%sdevices[%d]" % (prefix, index), entry)
                for index, entry in enumerate(value["devices"])]
    if isinstance(value, list):
        prefix = "%s: " % label if label else ""
        return [("%s[%d]" % (prefix, index), entry)
                for index, entry in enumerate(value)]
    return [(label or "record", value)]


def describe(record):
    """A short name of a record for a report line."""
    if not isinstance(record, dict):
        return "not a record"
    parts = [str(record.get("path") or "?")]
    if record.get("serial"):
        parts.append("serial %s" % record["serial"])
    return " ".join(parts)
