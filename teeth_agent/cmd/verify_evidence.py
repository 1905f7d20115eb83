"""``teeth-agent verify-evidence FILE --public-key PEM``: check signed erase
records.

FILE is one record, a list of records, a ``decom.disk_erase`` result (or
the task state holding it) or JSON lines, ``-`` for standard input. One
line is printed per record, ``valid`` or ``INVALID`` with the reason.
Every signed record is verified whatever its outcome; an unsigned entry
for which no erase was attempted (skipped, excluded, with only the fields
such an entry has) is listed and checks nothing
(:func:`evidence.check_record`). Exit status: 0 when every record is
valid and at least one was verified, 1 when any is invalid or none was
verified, 2 when the file or the key cannot be used. Needs no agent
configuration: an auditor runs it anywhere the package is installed.
"""

import argparse
import sys

from teeth_agent.hardware import evidence

#: The largest evidence file read (a machine's report is a few KiB).
MAX_FILE_BYTES = 64 * 1024 * 1024


def _parser():
    parser = argparse.ArgumentParser(
        prog="teeth-agent verify-evidence",
        description="Check the Ed25519 signatures of erase evidence records "
                    "written by decom.disk_erase.")
    parser.add_argument("file", help="The evidence file: a record, a list "
                        "of records, a disk_erase result or JSON lines; - "
                        "reads standard input.")
    parser.add_argument("--public-key", required=True,
                        help="The PEM file of the Ed25519 public key that "
                             "should have signed the records.")
    return parser


def _read(path):
    if path == "-":
        return sys.stdin.read(MAX_FILE_BYTES + 1)
    with open(path, encoding="utf-8") as stream:
        return stream.read(MAX_FILE_BYTES + 1)


def main(argv, out=None, err=None):
    """Run the command with ``argv`` (the words after ``verify-evidence``);
    return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        key = evidence.load_public_key(args.public_key)
        text = _read(args.file)
        if len(text) > MAX_FILE_BYTES:
            raise evidence.EvidenceFormatError(
                "the file is larger than %d bytes." % MAX_FILE_BYTES)
        records = evidence.parse_records(text)
    except (evidence.EvidenceKeyError, evidence.EvidenceFormatError) as exc:
        print("teeth-agent verify-evidence: %s" % exc, file=err)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print("teeth-agent verify-evidence: cannot read %s: %s."
              % (args.file, getattr(exc, "strerror", None) or exc), file=err)
        return 2
    invalid = verified = 0
    for label, record in records:
        verdict = evidence.check_record(record, key)
        if verdict is None:
            print("%s: %s: not an erase record (outcome %s, unsigned): "
                  "nothing to check" % (label, evidence.describe(record),
                                        record["outcome"]), file=out)
            continue
        if verdict.valid:
            verified += 1
        else:
            invalid += 1
        print("%s: %s: %s: %s" % (label, evidence.describe(record),
                                  "valid" if verdict.valid else "INVALID",
                                  verdict.reason), file=out)
    if not verified and not invalid:
        print("teeth-agent verify-evidence: nothing was verified: the file "
              "holds no signed erase record, only %d entr%s for which no "
              "erase was attempted." % (len(records), "y" if len(records) ==
                                        1 else "ies"), file=err)
        return 1
    return 1 if invalid else 0
