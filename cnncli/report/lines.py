"""One-line records for tables that scripts read: the single place where a cell is escaped.

`predict --format tsv/csv` rows and train's `MODEL.history.csv` are written here. Every text cell goes
through errors.one_line first (backslash, tab, CR, LF and other control characters escaped, bytes that are
not UTF-8 as \\xNN), so a record is always one line of UTF-8; csv rows then get the csv module's quoting.
"""

import csv
import io

from cnncli.errors import one_line


def _cells(cells):
    return [one_line(c) if isinstance(c, str) else c for c in cells]


def csv_row(cells) -> str:
    """cells (any sequence of str / numbers) -> one CSV record ending in "\\n" (csv.writer's minimal quoting)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(_cells(cells))
    return buf.getvalue()


def tsv_row(cells) -> str:
    """cells -> one tab-separated record ending in "\\n"; escaping leaves no tab or newline inside a cell."""
    return "\t".join(str(c) for c in _cells(cells)) + "\n"


def row(fmt: str, cells) -> str:
    """The record for fmt "csv" or "tsv"."""
    return csv_row(cells) if fmt == "csv" else tsv_row(cells)
