"""The checksum rules, in one place.

Every image and firmware download is verified against checksums the
server gives as ``{algorithm: hex digest}``. This module says which names
mean which algorithm, which algorithms are accepted and which are required;
the download code (:mod:`teeth_agent.fetch.download`), the standbye parameter
checks and the firmware checks all use it.

``normalise_name(name)``
    ``"SHA-256"`` and ``"sha256"`` name the same algorithm: lowercase, no
    dashes.

``select(hashes, allow_md5=False) -> (algorithm, hexdigest)``
    The image rule: the one checksum to verify, ``sha256`` preferred, then
    ``sha512``; ``md5`` only when the operator allows it (``[standbye]
    allow_md5``) and no strong checksum is given. Other names are ignored.

``check_all(hashes) -> {algorithm: hexdigest}``
    The firmware rule: every name must be an :data:`ACCEPTED` algorithm
    (each is verified), and one of them must be :data:`REQUIRED`.

Both raise :class:`InvalidHashes` (a :class:`ValueError`) naming the
problem and, in ``name``, the offending key (None when it is the whole
object).
"""

import re

#: One of these must be given; also the order of preference.
REQUIRED = ("sha256", "sha512")
#: Every algorithm a firmware image's checksums may use (each is verified).
ACCEPTED = ("sha256", "sha384", "sha512")
#: Accepted for images only where the operator allows it.
WEAK = ("md5",)
#: Hex digits of a digest of each known algorithm.
HEX_LENGTHS = {"md5": 32, "sha256": 64, "sha384": 96, "sha512": 128}


class InvalidHashes(ValueError):
    """A checksum object breaks the rules; ``name`` is the key at fault
    (as given) or None."""

    def __init__(self, msg, name=None):
        super().__init__(msg)
        self.name = name


def normalise_name(name):
    """The algorithm ``name`` means: lowercase, without dashes."""
    return str(name).lower().replace("-", "")


def select(hashes, allow_md5=False):
    """``(algorithm, lowercase hexdigest)`` to verify, from ``hashes``."""
    if not isinstance(hashes, dict) or not hashes:
        raise InvalidHashes("no checksum given")
    normalised = {}
    for name, digest in hashes.items():
        if not isinstance(digest, str):
            raise InvalidHashes("checksum %s must be a string" % name, name)
        normalised[normalise_name(name)] = (name, digest.strip().lower())
    allowed = REQUIRED + (WEAK if allow_md5 else ())
    for algorithm in allowed:
        if algorithm not in normalised:
            continue
        name, digest = normalised[algorithm]
        if len(digest) != HEX_LENGTHS[algorithm] or \
                not re.fullmatch(r"[0-9a-f]+", digest):
            raise InvalidHashes("%s checksum must be %d hexadecimal digits"
                                % (algorithm, HEX_LENGTHS[algorithm]), name)
        return algorithm, digest
    if any(weak in normalised for weak in WEAK):
        raise InvalidHashes("an md5 checksum alone is not accepted; give "
                            "sha256 or sha512")
    raise InvalidHashes("a sha256 or sha512 checksum is required")


def check_all(hashes):
    """``hashes`` with normalised names and lowercase digests, every one of
    which is to be verified (see the module documentation)."""
    if not isinstance(hashes, dict):
        raise InvalidHashes("must be an object of checksums")
    normalised = {}
    for name, digest in hashes.items():
        algorithm = normalise_name(name)
        if algorithm not in ACCEPTED:
            raise InvalidHashes("unsupported algorithm; use one of %s"
                                % ", ".join(ACCEPTED), name)
        length = HEX_LENGTHS[algorithm]
        if not isinstance(digest, str) or len(digest) != length or \
                any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise InvalidHashes("must be %d hex digits" % length, name)
        normalised[algorithm] = digest.lower()
    if not any(algorithm in normalised for algorithm in REQUIRED):
        raise InvalidHashes("needs a %s checksum" % " or ".join(REQUIRED))
    return normalised
