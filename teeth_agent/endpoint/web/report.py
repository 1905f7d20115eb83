"""The erasure report, as JSON and as CSV.

The CSV is meant to be opened in a spreadsheet, so a cell that starts
with a character a spreadsheet reads as a formula (``= + - @``, a tab or
a carriage return) is prefixed with an apostrophe: an agent cannot plant
a formula in the operator's spreadsheet.
"""

import csv
import io
import json

from teeth_agent.endpoint.web import records as records_mod

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str)
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def as_csv(records):
    """The records as CSV text (a header line, then one line each)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(records_mod.COLUMNS)
    for record in records:
        writer.writerow([_cell(record.get(column))
                         for column in records_mod.COLUMNS])
    return out.getvalue()


def as_json(records, generated_at):
    """The records as one JSON document, each with its full device
    entry."""
    return json.dumps({"generated_at": generated_at,
                       "columns": list(records_mod.COLUMNS),
                       "records": list(records)},
                      indent=1, sort_keys=True, default=str,
                      ensure_ascii=True)
