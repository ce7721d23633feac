"""The `export` job: a weight file in, an ONNX model out (see cnncli.store.onnx_export)."""

from dataclasses import dataclass
from pathlib import Path

from cnncli.commands import outputs
from cnncli.errors import UsageError
from cnncli.store import modelfile
from cnncli.store.atomic import atomic_write_bytes


@dataclass
class ExportOptions:
    model: str
    output: str | None = None  # None: the model's name with .onnx, beside it
    with_preprocess: bool = False
    overwrite: bool = False


def run(opts):
    """Export; returns {"model", "output", "bytes", "input", "with_preprocess"} for the summary line."""
    from cnncli.store import onnx_export

    onnx_export.require_onnx()  # not installed: say how to install it before reading anything
    out = Path(opts.output) if opts.output else modelfile.default_sidecar(opts.model, ".onnx")
    if out.suffix.lower() != ".onnx":  # never an image, a weight file or anything else a run reads
        raise UsageError(f"{out}: the ONNX file's name must end in .onnx")
    target = {"ONNX file": out}
    outputs.check_outputs(target, opts.overwrite)  # the rules every output follows (commands/outputs.py)
    outputs.check_not_inputs(target, [opts.model])
    clf = modelfile.load(opts.model)
    data = onnx_export.to_bytes(clf, opts.with_preprocess)
    atomic_write_bytes(out, data)
    c, h, w = clf.model.input_shape
    shape = f"uint8 Nx{h}x{w}x{c}" if opts.with_preprocess else f"float32 Nx{c}x{h}x{w}"
    return {"model": str(opts.model), "output": str(out), "bytes": len(data), "input": shape,
            "with_preprocess": opts.with_preprocess}
