"""``teeth-agent verify-evidence FILE --public-key PEM``: check signed erase
records.

FILE is one record, a list of records, a ``decom.disk_erase`` result (or
the task state holding it) or JSON lines, ``-`` for standard input. One
line is printed per record, ``valid`` or ``INVALID`` with the reason;
entries of a result for which nothing was erased (skipped, excluded) are
listed and do not count. Exit status: 0 when every record is valid, 1 when
any is invalid, 2 when the file or the key cannot be used. Needs no agent
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
    invalid = 0
    for label, record in records:
        if isinstance(record, dict) and \
                record.get("outcome") in evidence.NOT_ERASE_RECORDS:
            print("%s: %s: not an erase record (outcome %s)"
                  % (label, evidence.describe(record), record["outcome"]),
                  file=out)
            continue
        verdict = evidence.verify_record(record, key)
        if not verdict.valid:
            invalid += 1
        print("%s: %s: %s: %s" % (label, evidence.describe(record),
                                  "valid" if verdict.valid else "INVALID",
                                  verdict.reason), file=out)
    return 1 if invalid else 0
