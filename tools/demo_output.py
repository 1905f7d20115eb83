"""How the demo prints: headings and pretty JSON."""

import json
import sys

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def heading(text):
    print("\n%s== %s ==%s" % (BOLD, text, RESET), flush=True)


def show(obj, limit=40):
    lines = json.dumps(obj, indent=2, sort_keys=True).splitlines()
    for line in lines[:limit]:
        print("   " + line)
    if len(lines) > limit:
        print("   ... (%d more lines)" % (len(lines) - limit))
    sys.stdout.flush()
