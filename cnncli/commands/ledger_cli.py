"""`cnncli ledger export LEDGER`: a predict ledger's rows as csv, tsv or jsonl on stdout."""

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.errors import NoInputError, one_line

from cnncli.commands.options import HelpCommand, HelpGroup, examples

EXAMPLES = ("cnncli ledger export results.sqlite > results.csv", "cnncli ledger export results.sqlite --format jsonl")
app = typer.Typer(cls=HelpGroup, help="Read the SQLite ledger written by `predict --ledger`.", no_args_is_help=True,
                  epilog=examples(*EXAMPLES))

COLUMNS = ("path", "label", "probability", "probabilities", "ood_score", "threshold", "scored_at", "content_sha256",
           "model_sha256")


class ExportFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"


def _chain(first, rest):
    yield first
    yield from rest


def _write(out, fmt, cells):
    # Every cell is already one line without tabs (paths are stored escaped, JSON escapes control characters).
    if fmt == ExportFormat.csv:
        import csv  # here, not at import: the command line loads this module for every command

        csv.writer(out, lineterminator="\n").writerow(cells)
    else:
        out.write("\t".join(map(str, cells)) + "\n")


@app.command(cls=HelpCommand, epilog=examples(*EXAMPLES))
def export(
    ledger: Annotated[Path, typer.Argument(metavar="LEDGER", help="The ledger file (predict --ledger).", show_default=False)],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv, tsv or jsonl.")] = ExportFormat.csv,
):
    """Every row of the ledger, oldest first; `path` is stored escaped as predict prints it."""
    from cnncli.store.ledger import export_rows

    if not ledger.is_file():
        raise NoInputError(f"{ledger}: no such ledger file")
    out = sys.stdout
    rows = export_rows(ledger)
    first = next(rows, None)  # a file that is no ledger fails here, before anything is written
    if fmt != ExportFormat.jsonl:
        _write(out, fmt, COLUMNS)
    for rec in _chain(first, rows) if first is not None else ():
        rec["label"] = one_line(rec["label"])
        if fmt == ExportFormat.jsonl:
            rec["probabilities"] = json.loads(rec["probabilities"])
            out.write(json.dumps({k: rec[k] for k in COLUMNS}) + "\n")
        else:
            _write(out, fmt, ["" if rec[k] is None else rec[k] for k in COLUMNS])
    out.flush()
