"""The `export` job: a weight file in, an ONNX model out (see cnncli.store.onnx_export)."""

import os
from dataclasses import dataclass
from pathlib import Path

from cnncli.errors import UsageError
from cnncli.store import modelfile
from cnncli.store.atomic import atomic_write_bytes, check_writable_target


@dataclass
class ExportOptions:
    model: str
    output: str | None = None  # None: the model's name with .onnx, beside it
    with_preprocess: bool = False
    overwrite: bool = False


def check_output(output, inputs, overwrite, option="-o/--output"):
    """Refuse an output path that is one of the inputs (UsageError), or that cannot be created (OutputError,
    exit 73: missing directory, exists without --overwrite), before any work starts."""
    for inp in inputs:
        if os.path.exists(output) and os.path.exists(inp) and os.path.samefile(output, inp):
            raise UsageError(f"{option}: {output} is an input of this command; choose another file")
    check_writable_target(output, overwrite)


def run(opts):
    """Export; returns {"model", "output", "bytes", "input", "with_preprocess"} for the summary line."""
    from cnncli.store import onnx_export

    onnx_export._onnx()  # not installed: say how to install it before reading anything
    out = Path(opts.output) if opts.output else modelfile.default_sidecar(opts.model, ".onnx")
    check_output(out, [opts.model], opts.overwrite)
    clf = modelfile.load(opts.model)
    data = onnx_export.to_bytes(clf, opts.with_preprocess)
    atomic_write_bytes(out, data)
    c, h, w = clf.model.input_shape
    shape = f"uint8 Nx{h}x{w}x{c}" if opts.with_preprocess else f"float32 Nx{c}x{h}x{w}"
    return {"model": str(opts.model), "output": str(out), "bytes": len(data), "input": shape,
            "with_preprocess": opts.with_preprocess}
