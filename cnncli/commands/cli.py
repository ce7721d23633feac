"""The command line: thin typed commands over the job modules, and the one place errors become exit codes.

Only this module imports typer and rich. Data goes to stdout, messages and progress to stderr; colour and
progress bars only on a terminal, never with NO_COLOR. See README.md for the exit codes.
"""

import math
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli import __version__
from cnncli.commands.streams import DataOut, reserve_std_fds, say, stderr_on_null
from cnncli.errors import (EXIT_GATE, EXIT_INTERNAL, EXIT_IOERR, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, CnnError,
                           UsageError, WriteError, one_line)

app = typer.Typer(
    help="Train, evaluate and run convolutional image classifiers on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _say(msg):
    say(msg)  # best effort: a closed or full stderr loses messages, never the run's work


def _require(cond, option, msg):
    if not cond:
        raise UsageError(f"{option}: {msg}")


def _unit_interval(value, option):
    _require(value is None or (math.isfinite(value) and 0 <= value <= 1), option,
             f"must be a number in [0, 1], got {value}")


def _positive_finite(value, option, allow_zero=False):
    if value is not None:
        _require(math.isfinite(value) and (value > 0 or (allow_zero and value == 0)), option,
                 f"must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")


class Color(str, Enum):
    auto = "auto"
    gray = "gray"
    rgb = "rgb"


class OptimizerName(str, Enum):
    adam = "adam"
    sgd = "sgd"


class ClassWeights(str, Enum):
    none = "none"
    auto = "auto"


@app.command()
def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Labeled image folder: DATA/<class>/ or DATA/train/<class>/ "
                                              "(+ val/, test/).", show_default=False)],
    output: Annotated[str, typer.Option("-o", "--output", help="Weight file to write.")] = "model.safetensors",
    arch: Annotated[str, typer.Option(help="Architecture spec or preset (tiny, m1, default).")] = "default",
    size: Annotated[Optional[int], typer.Option(help="Input size in pixels (square). Default: from the data.")] = None,
    color: Annotated[Color, typer.Option(help="auto: gray only if every training image is gray.")] = Color.auto,
    epochs: Annotated[Optional[int], typer.Option(
        help="Passes over the training images (default: auto, about 4,500 gradient steps, 3 to 50 epochs).",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per gradient step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 2e-3,
    optimizer: Annotated[OptimizerName, typer.Option(help="adam or sgd (momentum 0.9).")] = OptimizerName.adam,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (L2 for sgd, decoupled for adam).")] = 0.0,
    val_split: Annotated[float, typer.Option(help="Fraction held out for validation when there is no val/ folder.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for initial weights, split, shuffling and augmentation.")] = 0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips and 2-pixel shifts.")] = False,
    class_weights: Annotated[ClassWeights, typer.Option(help="auto: weight the loss against class imbalance.")] = ClassWeights.none,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better validation accuracy.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop training after this many seconds.")] = None,
    clip_norm: Annotated[Optional[float], typer.Option(help="Clip gradients to this global L2 norm.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Worker threads (default: all CPUs).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoint.")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable image instead of skipping it.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run writing the same output.")] = 0.0,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also draw the training curves into this file (.png, .svg or .pdf).")] = None,
    fail_on_collapse: Annotated[bool, typer.Option(
        help="Exit 3 without writing weights when training collapsed (one class for all, or a runaway loss).")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only warnings and errors on stderr.")] = False,
):
    """Train a classifier on a labeled image folder and write a weight file."""
    _require(output != "", "--output", "the file name is empty")
    _require(epochs is None or epochs >= 1, "--epochs", f"must be at least 1, got {epochs}")
    _require(batch_size >= 1, "--batch-size", f"must be at least 1, got {batch_size}")
    _positive_finite(lr, "--lr")
    _positive_finite(weight_decay, "--weight-decay", allow_zero=True)
    _require(math.isfinite(val_split) and 0 <= val_split < 1, "--val-split", f"must be in [0, 1), got {val_split}")
    _require(size is None or 4 <= size <= 1024, "--size", f"must be between 4 and 1024, got {size}")
    _require(0 <= seed < 2**32, "--seed", f"must be between 0 and 4294967295, got {seed}")
    _require(patience is None or patience >= 1, "--patience", f"must be at least 1, got {patience}")
    _positive_finite(max_time, "--max-time")
    _positive_finite(clip_norm, "--clip-norm")
    _require(threads is None or 1 <= threads <= 1024, "--threads", f"must be at least 1, got {threads}")
    _require(math.isfinite(wait) and wait >= 0, "--wait", f"must be a finite number >= 0, got {wait}")
    from cnncli.commands.train import TrainOptions, run

    opts = TrainOptions(data=str(data), output=str(output), arch=arch, size=size, color=color.value, epochs=epochs,
                        batch_size=batch_size, lr=lr, optimizer=optimizer.value, weight_decay=weight_decay,
                        val_split=val_split, seed=seed, augment=augment, class_weights=class_weights.value,
                        patience=patience, max_time=max_time, clip_norm=clip_norm, threads=threads,
                        overwrite=overwrite, resume=resume, strict=strict, wait=wait,
                        plot=str(plot) if plot else None, fail_on_collapse=fail_on_collapse)
    from cnncli.commands.progress import TrainReporter

    reporter = TrainReporter(quiet)
    try:
        summary = run(opts, reporter)
    finally:
        reporter.close()
    if "interrupted" in summary:
        _say(f"cnncli: checkpoint saved to {summary['checkpoint']} (epoch {summary['epoch'] + 1}, "
             f"batch {summary['batch'] + 1}); continue with: cnncli train {data} -o {output} --resume")
        raise typer.Exit(128 + summary["interrupted"])
    if not quiet:
        per_class = ", ".join(f"{c} {n}" for c, n in zip(summary["classes"], summary["images_per_class"]))
        lines = [f"images per class: {per_class}; skipped files: {summary['skipped_files']}"
                 + (f" (listed in {summary['bad_files']})" if "bad_files" in summary else ""),
                 f"epochs: {summary['epochs_run']} ({summary['stop_reason']}), best epoch {summary['best_epoch']}"]
        if "val_accuracy" in summary:
            lines.append(f"validation accuracy: {summary['val_accuracy']:.4f}")
        if "test_accuracy" in summary:
            lines.append(f"test accuracy: {summary['test_accuracy']:.4f}")
        lines.append(f"time: {summary['seconds']:.1f}s")
        lines.append(f"weights: {summary['output']} (history: {summary['history']})")
        _say("\n".join(lines))


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="Weight file.", show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
):
    """Show a weight file's architecture, layer shapes, classes, input and training summary."""
    import json

    from cnncli.store import modelfile

    clf = modelfile.load(model)
    m = clf.model
    layers = [{"layer": t, "output_shape": list(s), "params": p} for t, s, p in m.summary()]
    doc = {"file": str(model), "arch": m.spec, "classes": clf.classes,
           "input": {"channels": clf.channels, "height": m.input_shape[1], "width": m.input_shape[2],
                     "color": clf.color},
           "params": int(m.num_params()), "layers": layers, "threshold": clf.threshold, "train": clf.train}
    if json_out:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    c, h, w = m.input_shape
    out = [f"file: {one_line(model)}", f"arch: {m.spec}",
           f"input: {w}x{h}, {clf.color} ({c} channel{'s' if c > 1 else ''})",
           f"classes ({len(clf.classes)}): {', '.join(map(one_line, clf.classes))}", "layers:"]
    out += [f"  {i + 1:>3} {t:<16} {'x'.join(map(str, s)):>12} {p:>10,}" for i, (t, s, p) in enumerate(m.summary())]
    out.append(f"parameters: {m.num_params():,}")
    if clf.threshold is not None:
        out.append(f"threshold: {clf.threshold:g}")
    if clf.train:
        out.append("training: " + ", ".join(f"{k} {one_line(v)}" for k, v in clf.train.items() if v is not None))
    sys.stdout.write("\n".join(out) + "\n")


class PredictFormat(str, Enum):
    table = "table"
    tsv = "tsv"
    csv = "csv"
    jsonl = "jsonl"


class EvalSplit(str, Enum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


_MODEL_HELP = "Weight file (default: $CNNCLI_MODEL, else ./model.safetensors)."


@app.command()
def predict(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Image files, folders (recursive), glob patterns, or - to read paths from stdin.",
        show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help=_MODEL_HELP, show_default=False)] = None,
    fmt: Annotated[Optional[PredictFormat], typer.Option(
        "--format", help="Output format (default: table on a terminal, tsv otherwise).", show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(
        help="Classes to show per image (default: 3 in the table, 1 otherwise).", show_default=False)] = None,
    all_probs: Annotated[bool, typer.Option("--all-probs", help="Also print every class's probability.")] = False,
    threshold: Annotated[Optional[float], typer.Option(
        help="Two-class models: predict the positive (second) class when its probability >= this "
             "(default: the model's stored threshold, else 0.5).", show_default=False)] = None,
    uncertain: Annotated[Optional[str], typer.Option(
        metavar="LOW:HIGH", help="Two-class models: label 'uncertain' when LOW <= P(positive) <= HIGH.",
        show_default=False)] = None,
    min_confidence: Annotated[Optional[float], typer.Option(
        metavar="P", help="Label 'unknown' when the top class probability is below P (default: the model's "
                          "stored value, else never).", show_default=False)] = None,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decoded and classified together.")] = 256,
):
    """Classify images; one result row per input on stdout, streamed as each batch finishes."""
    _require(inputs, "INPUTS", "give image files, folders, glob patterns or - for stdin")
    _require(top_k is None or top_k >= 1, "--top-k", f"must be at least 1, got {top_k}")
    _require(1 <= batch_size <= 65536, "--batch-size", f"must be between 1 and 65536, got {batch_size}")
    _require(threshold is None or (math.isfinite(threshold) and 0 <= threshold <= 1), "--threshold",
             f"must be a number in [0, 1], got {threshold}")
    _unit_interval(min_confidence, "--min-confidence")
    from cnncli.commands.predict import PredictOptions, parse_band, run

    opts = PredictOptions(inputs=list(inputs), model=str(model) if model else None,
                          format=fmt.value if fmt else None, top_k=top_k, all_probs=all_probs,
                          threshold=threshold, uncertain=parse_band(uncertain) if uncertain else None,
                          null=null, batch_size=batch_size, min_confidence=min_confidence)
    try:
        code = run(opts, on_error=lambda path, msg: _say(f"cnncli: {one_line(path)}: {msg}"))
    except BrokenPipeError:  # the reader stopped early (`| head -1`): that is a normal end, not a failure
        _quiet_broken_pipe()
        raise typer.Exit(0) from None
    if code:
        raise typer.Exit(code)


@app.command(name="eval")
def eval_(
    data: Annotated[Path, typer.Argument(
        help="Labeled folder: DATA/test/ is scored, else DATA/val/, else the held-out part recorded at training "
             "time, else DATA/<class>/.", show_default=False)],
    split: Annotated[Optional[EvalSplit], typer.Option(
        help="Score this part of DATA (and pick thresholds on it). Default: score test/ (else val/), pick on "
             "the validation part, never on test/.", show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help=_MODEL_HELP, show_default=False)] = None,
    fmt: Annotated[EvalFormat, typer.Option("--format", help="table or json.")] = EvalFormat.table,
    threshold: Annotated[Optional[float], typer.Option(
        help="Two-class models: decision threshold (default: the model's, else 0.5).", show_default=False)] = None,
    pick_threshold: Annotated[Optional[str], typer.Option(
        metavar="RULE", help="Choose the threshold on the validation part: sensitivity=X, specificity=X or youden.",
        show_default=False)] = None,
    save_threshold: Annotated[bool, typer.Option(
        help="Write the picked threshold (and --min-confidence) into the weight file.")] = False,
    calibrate: Annotated[bool, typer.Option(
        help="Fit temperature scaling on the validation part; store the temperature in the weight file.")] = False,
    min_confidence: Annotated[Optional[float], typer.Option(
        metavar="P", help="Report how many images a top-probability cut-off of P would call 'unknown'.",
        show_default=False)] = None,
    errors: Annotated[int, typer.Option(help="List the N most confidently wrong files.", metavar="N")] = 0,
    errors_image: Annotated[Optional[Path], typer.Option(
        help="Draw the N (--errors, default 16) most confidently wrong images with their labels into this "
             "PNG, SVG or PDF.", show_default=False)] = None,
    fail_under: Annotated[Optional[list[str]], typer.Option(
        metavar="METRIC=BAR", help="Exit 3 when a metric is below the bar, e.g. accuracy=0.9 or "
                                   "sensitivity.lo=0.9 (95% lower bound) (repeatable).",
        show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Draw the confusion matrices (and ROC and precision-recall curves for two classes) into this file "
             "(.png, .svg or .pdf).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Let --plot and --errors-image replace existing files.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run writing the model file.")] = 0.0,
):
    """Score a model on labeled images: accuracy, per-class metrics, confusion matrix, ROC for two classes."""
    import json

    _require(errors >= 0, "--errors", f"must be >= 0, got {errors}")
    _require(threshold is None or (math.isfinite(threshold) and 0 <= threshold <= 1), "--threshold",
             f"must be a number in [0, 1], got {threshold}")
    _require(threshold is None or pick_threshold is None, "--threshold", "cannot be combined with --pick-threshold")
    _require(math.isfinite(wait) and wait >= 0, "--wait", f"must be a finite number >= 0, got {wait}")
    _unit_interval(min_confidence, "--min-confidence")
    from cnncli.commands.evaluate import EvalOptions, format_table, run
    from cnncli.commands.predict import resolve_model

    opts = EvalOptions(data=str(data), model=str(resolve_model(str(model) if model else None)), threshold=threshold,
                       pick_threshold=pick_threshold, save_threshold=save_threshold, errors=errors,
                       errors_image=str(errors_image) if errors_image else None,
                       fail_under=fail_under, plot=str(plot) if plot else None, wait=wait,
                       split=split.value if split else None, overwrite=overwrite, calibrate=calibrate,
                       min_confidence=min_confidence)
    report = run(opts, on_warn=lambda msg: _say(f"warning: {one_line(msg)}"))
    sys.stdout.write(json.dumps(report) + "\n" if fmt == EvalFormat.json else format_table(report))
    sys.stdout.flush()
    for failed in report.get("gate_failures") or []:  # one line per missed bar
        _say(f"cnncli: quality gate failed: {one_line(failed)}")
    if report.get("gate_failures"):
        raise typer.Exit(EXIT_GATE)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Weight file to export.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="ONNX file to write (default: the model's name with .onnx).",
        show_default=False)] = None,
    with_preprocess: Annotated[bool, typer.Option(
        "--with-preprocess", help="The graph takes uint8 NxHxWxC images and normalises them itself.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
):
    """Write the model as ONNX (softmax included; classes and preprocessing in its metadata)."""
    from cnncli.commands.export import ExportOptions, run

    done = run(ExportOptions(model=str(model), output=str(output) if output else None,
                             with_preprocess=with_preprocess, overwrite=overwrite))
    _say(f"wrote {one_line(done['output'])} ({done['bytes']:,} bytes; input {done['input']}, "
         "output probabilities float32 NxK)")


class CheckFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def check(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Labeled image folder: DATA/<class>/ or "
                                         "DATA/train/<class>/ (+ val/, test/).", show_default=False)],
    fmt: Annotated[CheckFormat, typer.Option("--format", help="text or json.")] = CheckFormat.text,
):
    """Audit a labeled folder: duplicates within and across splits and classes, unreadable files, class
    balance, tiny images, sizes and modes. Exit 3 when a duplicate crosses splits or classes."""
    import json

    from cnncli.commands.check import exit_code, format_text
    from cnncli.data.audit import audit

    report = audit(data)
    sys.stdout.write(json.dumps(report) + "\n" if fmt == CheckFormat.json else format_text(report))
    sys.stdout.flush()
    code = exit_code(report)
    if code:
        _say(f"cnncli: check: {report['leaks']} duplicate group(s) across splits, {report['conflicts']} across "
             "classes")
        raise typer.Exit(code)


class ShowFormat(str, Enum):
    picture = "picture"
    json = "json"


@app.command()
def show(
    model: Annotated[Path, typer.Argument(help="Weight file.", show_default=False)],
    image: Annotated[Optional[Path], typer.Argument(
        help="An image: adds its feature maps and a saliency map for the predicted class.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Picture file (.png, .svg, .pdf), or a folder for one PNG per part "
                               "(default: show.png; none with --format json).", show_default=False)] = None,
    fmt: Annotated[ShowFormat, typer.Option("--format", help="picture, or json (raw numbers on stdout).")] = ShowFormat.picture,
    max_maps: Annotated[int, typer.Option(help="Feature maps drawn per layer.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace existing picture files.")] = False,
):
    """Look inside a model: first-layer filters, an image's feature maps per layer, and saliency."""
    _require(1 <= max_maps <= 256, "--max-maps", f"must be between 1 and 256, got {max_maps}")
    from cnncli.commands.show import ShowOptions, run

    opts = ShowOptions(model=str(model), image=str(image) if image else None,
                       output=str(output) if output else None, json=fmt == ShowFormat.json, max_maps=max_maps,
                       overwrite=overwrite)
    for path in run(opts, write=sys.stdout.write):
        _say(f"wrote {one_line(path)}")


def _version_callback(value: bool):
    if value:
        sys.stdout.write(f"cnncli {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                         help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
):
    """cnncli: train, evaluate and run CNN image classifiers on a CPU. Exit codes: see README.md."""


def _quiet_broken_pipe():
    # The reader went away (e.g. `| head -1`): stop quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _on_sigterm(signum, frame):
    # Unwind like Ctrl-C does, so `finally` blocks run: predict's decode workers are stopped, locks released.
    raise SystemExit(EXIT_SIGTERM)


def _plain_help_without_color():
    # NO_COLOR: typer's rich help would still send bold and dim escapes to a terminal; no colour system, none.
    if os.environ.get("NO_COLOR"):
        try:
            import typer.rich_utils

            typer.rich_utils.COLOR_SYSTEM = None
        except ImportError:  # pragma: no cover - typer without rich: plain help anyway
            pass


def main(argv=None):
    """Entry point: run the app and map every outcome to a documented exit code."""
    reserve_std_fds()  # before anything is opened: no file may land on fd 1 or 2
    if sys.stderr is None:
        sys.stderr = stderr_on_null()
    saved_stdout = sys.stdout
    data_closed = saved_stdout is None
    sys.stdout = DataOut(saved_stdout if not data_closed else open(os.devnull, "w"), closed=data_closed)
    import threading

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    _plain_help_without_color()
    try:
        code = _run(argv)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
        except WriteError as exc:
            _say(f"cnncli: error: {one_line(exc)}")
            code = EXIT_IOERR if code in (EXIT_OK, EXIT_GATE, 1) else code
    finally:
        sys.stdout = saved_stdout
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)
    sys.exit(code)


def _traceback():
    import traceback

    try:
        traceback.print_exc()
    except (OSError, ValueError):  # stderr closed or full: nowhere to show it
        pass


def _run(argv):
    """Run the command line argv (None: sys.argv); returns the exit code."""
    try:  # typer >= 0.29 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.exceptions import ClickException

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CNNCLI_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        args.remove("--debug")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="cnncli", standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        exc.show(file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:
        code = EXIT_SIGINT
    except CnnError as exc:
        if debug:
            _traceback()
        if isinstance(exc, UsageError):
            sub = next((a for a in args if a in command.commands), None) if hasattr(command, "commands") else None
            _say(f"Usage error: {one_line(exc)}\nTry 'cnncli {sub + ' ' if sub else ''}-h' for help.")
        else:
            _say(f"cnncli: error: {one_line(exc)}")
        code = exc.exit_code
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except BrokenPipeError:
        _quiet_broken_pipe()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no locals
        if debug:
            _traceback()
        first = str(exc).splitlines()[0] if str(exc).strip() else ""
        _say(f"cnncli: internal error: {type(exc).__name__}: {one_line(first)} "
             "(run again with --debug for a traceback)")
        code = EXIT_INTERNAL
    # typer turns Ctrl-C into a bare exit status 130, so the reason is said here, once, however the run ended.
    if code in (EXIT_SIGINT, EXIT_SIGTERM):
        _say("cnncli: interrupted" if code == EXIT_SIGINT else "cnncli: terminated")
    return code
