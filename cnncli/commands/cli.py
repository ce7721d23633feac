"""The command line: what a user can type, as thin typed commands over the job modules.

Typer and rich are imported only in cnncli/commands (shared option pieces: options.py; running the app and
turning outcomes into exit codes: entry.py). Data goes to stdout, messages and progress to stderr; colour and
progress bars only on a terminal, never with NO_COLOR. See README.md for the exit codes.
"""

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cnncli import __version__
from cnncli.commands.options import (DATA, MODEL, MODEL_HELP, OPTIMISATION, OUTPUT, RUN, CheckFormat, ClassWeights,
                                     Color, EvalFormat, NoCacheOption, EvalSplit, HelpCommand, HelpGroup, NoEarlyStop,
                                     InitOption, FreezeOption, OptimizerName, PatienceOption, PredictFormat, Augment,
                                     AugmentOption, Resize, ResizeOption, Scheduler, ShowFormat, TTA, examples,
                                     NoProgress, given_options, positive_finite, probability, require, ArchOption)
from cnncli.commands.ledger_cli import app as ledger_app
from cnncli.commands.streams import say
from cnncli.errors import EXIT_GATE, one_line

app = typer.Typer(
    cls=HelpGroup,
    help="Train, evaluate and run convolutional image classifiers on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(*lines, **kw):
    """app.command with the help layout of options.HelpCommand and these example lines under the help."""
    return app.command(cls=HelpCommand, epilog=examples(*lines), **kw)


def _say(msg):
    say(msg)  # best effort: a closed or full stderr loses messages, never the run's work


def _print_report(report, as_json, as_text):
    """A report on stdout: one line of JSON, or as_text(report) for people."""
    import json

    sys.stdout.write(json.dumps(report) + "\n" if as_json else as_text(report))
    sys.stdout.flush()


# The defaults in these signatures are the only ones: the job option classes (TrainOptions, EvalOptions, ...)
# and engine.training.TrainConfig take every value from here, and --help shows them.
@command("cnncli train photos/             # photos/<class>/*.jpg -> model.safetensors",
         "cnncli train photos/ -o cats.safetensors --arch m1 --epochs 10 --augment",
         "cnncli train photos/ -o cats.safetensors --resume  # after Ctrl-C")
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Labeled image folder: DATA/<class>/ or "
                                         "DATA/train/<class>/ (+ val/, test/).", show_default=False)],
    size: Annotated[Optional[int], typer.Option(help="Input size in pixels (square). Default: from the data.",
                                                rich_help_panel=DATA)] = None,
    color: Annotated[Color, typer.Option(help="auto: gray only if every training image is gray.",
                                         rich_help_panel=DATA)] = Color.auto,
    val_split: Annotated[float, typer.Option(help="Held out if no val/ (small colour photos: none).",
                                             rich_help_panel=DATA)] = 0.2,
    augment: AugmentOption = Augment.none,
    resize: ResizeOption = Resize.crop,
    class_weights: Annotated[ClassWeights, typer.Option(help="auto: weight the loss against class imbalance.",
                                                        rich_help_panel=DATA)] = ClassWeights.none,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad image.",
                                         rich_help_panel=DATA)] = False,
    no_cache: NoCacheOption = False, arch: ArchOption = "default",
    seed: Annotated[int, typer.Option(help="Seed for weights, split, shuffling, augmentation.",
                                      rich_help_panel=MODEL)] = 0,
    init: InitOption = None, freeze: FreezeOption = 0,
    epochs: Annotated[Optional[int], typer.Option(
        help="Passes over the training images (default: about 4,500 gradient steps, 3 to 50 epochs).",
        show_default=False, rich_help_panel=OPTIMISATION)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per gradient step.",
                                            rich_help_panel=OPTIMISATION)] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).",
                                      rich_help_panel=OPTIMISATION)] = 2e-3,
    optimizer: Annotated[OptimizerName, typer.Option(help="adam or sgd (momentum 0.9).",
                                                     rich_help_panel=OPTIMISATION)] = OptimizerName.adam,
    weight_decay: Annotated[float, typer.Option(help="L2 for sgd, decoupled for adam.",
                                                rich_help_panel=OPTIMISATION)] = 0.0,
    clip_norm: Annotated[Optional[float], typer.Option(help="Clip gradients to this global L2 norm.",
                                                       rich_help_panel=OPTIMISATION)] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="Weight file to write.",
                                        rich_help_panel=OUTPUT)] = "model.safetensors",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.",
                                            rich_help_panel=OUTPUT)] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the training curves into this file (.png, .svg "
                                                 "or .pdf).", rich_help_panel=OUTPUT)] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only warnings and errors on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
    fail_on_collapse: Annotated[bool, typer.Option(
        "--fail-on-collapse", help="Exit 3, writing nothing, if training collapsed (one class, runaway loss).",
        rich_help_panel=RUN)] = False,
    patience: PatienceOption = None, no_early_stop: NoEarlyStop = False,
    max_time: Annotated[Optional[float], typer.Option(help="Stop training after this many seconds.",
                                                      rich_help_panel=RUN)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.",
                                         rich_help_panel=RUN)] = False,
    threads: Annotated[Optional[int], typer.Option(help="Threads: 1-1024 (default: all CPUs).",
                                                   rich_help_panel=RUN)] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a run on this output.",
                                        rich_help_panel=RUN)] = 0.0,
):
    """Train a classifier on a labeled image folder and write a weight file."""
    require(output != "", "--output", "the file name is empty")
    require(epochs is None or epochs >= 1, "--epochs", f"must be at least 1, got {epochs}")
    require(batch_size >= 1, "--batch-size", f"must be at least 1, got {batch_size}")
    positive_finite(lr, "--lr")
    positive_finite(weight_decay, "--weight-decay", allow_zero=True)
    require(0 <= val_split < 1, "--val-split", f"must be in [0, 1), got {val_split}")
    require(size is None or 4 <= size <= 1024, "--size", f"must be between 4 and 1024, got {size}")
    require(0 <= seed < 2**32, "--seed", f"must be between 0 and 4294967295, got {seed}")
    positive_finite(max_time, "--max-time")
    positive_finite(clip_norm, "--clip-norm")
    require(threads is None or 1 <= threads <= 1024, "--threads", f"must be between 1 and 1024, got {threads}")
    positive_finite(wait, "--wait", allow_zero=True)
    from cnncli.commands.progress import TrainReporter, summary_lines
    from cnncli.commands.train import TrainOptions, run

    opts = TrainOptions(data=str(data), output=str(output), arch=arch, size=size, color=color.value, epochs=epochs,
                        batch_size=batch_size, lr=lr, optimizer=optimizer.value, weight_decay=weight_decay,
                        val_split=val_split, seed=seed, augment=augment.value, no_early_stop=no_early_stop,
                        resize=resize.value, class_weights=class_weights.value, init=init and str(init), freeze=freeze,
                        patience=patience, max_time=max_time, clip_norm=clip_norm, threads=threads,
                        overwrite=overwrite, resume=resume, strict=strict, wait=wait,
                        plot=str(plot) if plot else None, fail_on_collapse=fail_on_collapse, no_cache=no_cache)
    reporter = TrainReporter(quiet)
    try:
        summary = run(opts, reporter, given=given_options(ctx))
    finally:
        reporter.close()
    if "interrupted" in summary:
        _say(f"cnncli: checkpoint saved to {one_line(summary['checkpoint'])} (epoch {summary['epoch'] + 1}, "
             f"batch {summary['batch'] + 1}); continue with: "
             f"cnncli train {one_line(data)} -o {one_line(output)} --resume")
        raise typer.Exit(128 + summary["interrupted"])
    if not quiet:
        _say("\n".join(summary_lines(summary)))


@command("cnncli info                      # ./model.safetensors (or $CNNCLI_MODEL)",
         "cnncli info cats.safetensors --json | jq .classes")
def info(
    model: Annotated[Optional[Path], typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
):
    """Show a weight file's architecture, layer shapes, classes, input and training summary."""
    from cnncli.commands.info import describe, format_text
    from cnncli.commands.model_path import resolve_model
    _print_report(describe(resolve_model(model)), json_out, format_text)


@command("cnncli predict img.png                       # uses ./model.safetensors",
         "cnncli predict photos/ 'more/**/*.jpg' -m cats.safetensors --format jsonl",
         "find in -name '*.png' -print0 | cnncli predict -0 - --format csv > out.csv")
def predict(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        metavar="INPUT", help="Image files, folders (recursive), glob patterns, or - to read paths from stdin.",
        show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help=MODEL_HELP, show_default=False,
                                                  rich_help_panel=MODEL)] = None,
    threshold: Annotated[Optional[float], typer.Option(
        help="Two-class models: predict the positive (second) class when its probability >= this "
             "(default: the model's stored threshold, else 0.5).", show_default=False, rich_help_panel=MODEL)] = None,
    uncertain: Annotated[Optional[str], typer.Option(
        metavar="LOW:HIGH", help="Two-class models: label 'uncertain' when LOW <= P(positive) <= HIGH.",
        show_default=False, rich_help_panel=MODEL)] = None,
    min_confidence: Annotated[Optional[float], typer.Option(
        metavar="P", help="Label 'unknown' when the top class probability is below P (default: the model's "
                          "stored value, else never).", show_default=False, rich_help_panel=MODEL)] = None,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.",
                                       rich_help_panel=DATA)] = False,
    fmt: Annotated[Optional[PredictFormat], typer.Option(
        "--format", help="Default: table on a terminal, tsv otherwise.", show_default=False,
        rich_help_panel=OUTPUT)] = None,
    top_k: Annotated[Optional[int], typer.Option(
        help="Classes to show per image (default: 3 in the table, 1 otherwise).", show_default=False,
        rich_help_panel=OUTPUT)] = None,
    all_probs: Annotated[bool, typer.Option("--all-probs", help="Also print every class's probability.",
                                            rich_help_panel=OUTPUT)] = False,
    batch_size: Annotated[int, typer.Option(help="Images decoded and classified together.",
                                            rich_help_panel=RUN)] = 256,
    shard: Annotated[Optional[str], typer.Option(
        metavar="I/N", help="Only the inputs of shard I of N (0 <= I < N, by a hash of the path).",
        show_default=False, rich_help_panel=DATA)] = None,
    ledger: Annotated[Optional[Path], typer.Option(
        help="SQLite ledger: score only images it has not seen with this model; record them.",
        show_default=False, rich_help_panel=RUN)] = None,
    new_only: Annotated[bool, typer.Option("--new-only", help="With --ledger: print only images scored now.",
                                           rich_help_panel=RUN)] = False,
    sort_into: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Link each image into DIR/<label>/ (never moves or replaces files).",
        show_default=False, rich_help_panel=OUTPUT)] = None,
    copy: Annotated[bool, typer.Option("--copy", help="With --sort-into: copy instead of linking.",
                                       rich_help_panel=OUTPUT)] = False,
    log_timestamps: Annotated[bool, typer.Option(
        "--log-timestamps", help="Prefix the end-of-run summary with the UTC time (or CNNCLI_LOG_TIMESTAMPS=1).",
        rich_help_panel=RUN)] = False,
    tta: TTA = False, no_progress: NoProgress = False, scheduler: Scheduler = None, no_cache: NoCacheOption = False,
):
    """Classify images; one result row per input on stdout, streamed as each batch finishes."""
    require(inputs, "INPUT", "give image files, folders, glob patterns or - for stdin")
    require(top_k is None or top_k >= 1, "--top-k", f"must be at least 1, got {top_k}")
    require(1 <= batch_size <= 65536, "--batch-size", f"must be between 1 and 65536, got {batch_size}")
    probability(threshold, "--threshold")
    probability(min_confidence, "--min-confidence")
    from cnncli.commands.predict import PredictOptions, parse_band, run
    from cnncli.commands.predict_extras import batch_options

    opts = PredictOptions(inputs=list(inputs), model=str(model) if model else None,
                          format=fmt.value if fmt else None, top_k=top_k, all_probs=all_probs,
                          threshold=threshold, uncertain=parse_band(uncertain) if uncertain else None,
                          null=null, batch_size=batch_size, min_confidence=min_confidence, tta=tta, no_cache=no_cache)
    batch_options(opts, shard, ledger, new_only, sort_into, copy, log_timestamps, no_progress, scheduler)
    try:
        code = run(opts, on_error=lambda path, msg: _say(f"cnncli: {one_line(path)}: {msg}"))
    except BrokenPipeError:  # the reader stopped early (`| head -1`): that is a normal end, not a failure
        from cnncli.commands.entry import quiet_broken_pipe
        quiet_broken_pipe()
        raise typer.Exit(0) from None
    if code:
        raise typer.Exit(code)


@command("cnncli eval photos/          # photos/test/, else val/, else held-out files",
         "cnncli eval photos/ --fail-under accuracy=0.9,sensitivity.lo=0.8  # 3: below",
         "cnncli eval photos/ --pick-threshold sensitivity=0.95 --save-threshold", name="eval")
def eval_(
    data: Annotated[Path, typer.Argument(
        metavar="DATA", help="Labeled folder: DATA/test/ is scored, else DATA/val/, else the held-out part recorded at training "
             "time, else DATA/<class>/.", show_default=False)],
    split: Annotated[Optional[EvalSplit], typer.Option(
        help="Score this part of DATA (and pick thresholds on it). Default: score test/ (else val/), pick on "
             "the validation part, never on test/.", show_default=False, rich_help_panel=DATA)] = None,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help=MODEL_HELP, show_default=False,
                                                  rich_help_panel=MODEL)] = None,
    threshold: Annotated[Optional[float], typer.Option(
        help="Two-class models: decision threshold (default: the model's, else 0.5).", show_default=False,
        rich_help_panel=MODEL)] = None,
    pick_threshold: Annotated[Optional[str], typer.Option(
        metavar="RULE", help="Choose the threshold on the validation part: sensitivity=X, specificity=X or youden.",
        show_default=False, rich_help_panel=MODEL)] = None,
    save_threshold: Annotated[bool, typer.Option("--save-threshold", help="Write the picked threshold (and "
                                                 "--min-confidence) into the weight file.", rich_help_panel=MODEL)
                              ] = False,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Fit temperature scaling on the validation part; store the temperature in the weight "
        "file.", rich_help_panel=MODEL)] = False,
    min_confidence: Annotated[Optional[float], typer.Option(
        metavar="P", help="Report how many images a top-probability cut-off of P would call 'unknown'.",
        show_default=False, rich_help_panel=MODEL)] = None,
    fmt: Annotated[EvalFormat, typer.Option("--format", help="table or json.",
                                            rich_help_panel=OUTPUT)] = EvalFormat.table,
    errors: Annotated[int, typer.Option(help="List the N most confidently wrong files.", metavar="N",
                                        rich_help_panel=OUTPUT)] = 0,
    plot: Annotated[Optional[Path], typer.Option(
        help="Draw the confusion matrices (and ROC and precision-recall curves for two classes) into this file "
             "(.png, .svg or .pdf).", show_default=False, rich_help_panel=OUTPUT)] = None,
    errors_image: Annotated[Optional[Path], typer.Option(
        help="Draw the N (--errors, default 16) most confidently wrong images with their labels into this "
             "PNG, SVG or PDF.",
        show_default=False, rich_help_panel=OUTPUT)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --plot and --errors-image replace existing "
                                            "files.", rich_help_panel=OUTPUT)] = False,
    fail_under: Annotated[Optional[list[str]], typer.Option(
        metavar="METRIC=BAR", help="Exit 3 when a metric is below the bar, e.g. accuracy=0.9 or "
                                   "sensitivity.lo=0.9 (95% lower bound) (repeatable).",
        show_default=False, rich_help_panel=RUN)] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run writing the model file.",
                                        rich_help_panel=RUN)] = 0.0,
    shard: Annotated[Optional[str], typer.Option(
        metavar="I/N", help="Score only shard I of N of the images (0 <= I < N, by a hash of the path).",
        show_default=False, rich_help_panel=DATA)] = None,
    tta: TTA = False, no_progress: NoProgress = False, scheduler: Scheduler = None, no_cache: NoCacheOption = False,
):
    """Score a model on labeled images: accuracy, per-class metrics, confusion matrix, ROC for two classes."""
    require(errors >= 0, "--errors", f"must be >= 0, got {errors}")
    probability(threshold, "--threshold")
    require(threshold is None or pick_threshold is None, "--threshold", "cannot be combined with --pick-threshold")
    positive_finite(wait, "--wait", allow_zero=True)
    probability(min_confidence, "--min-confidence")
    from cnncli.commands.evaluate import EvalOptions, format_table, run
    from cnncli.commands.shard import parse_shard
    from cnncli.commands.model_path import resolve_model

    opts = EvalOptions(data=str(data), model=str(resolve_model(str(model) if model else None)), threshold=threshold,
                       pick_threshold=pick_threshold, save_threshold=save_threshold, errors=errors,
                       errors_image=str(errors_image) if errors_image else None,
                       fail_under=fail_under, plot=str(plot) if plot else None, wait=wait,
                       split=split.value if split else None, overwrite=overwrite, calibrate=calibrate,
                       min_confidence=min_confidence, tta=tta, progress=not no_progress, scheduler=scheduler,
                       no_cache=no_cache)
    opts.shard = parse_shard(shard) if shard else None
    report = run(opts, on_warn=lambda msg: _say(f"warning: {one_line(msg)}"))
    if report is None:
        return
    _print_report(report, fmt == EvalFormat.json, format_table)
    for failed in report.get("gate_failures") or []:  # one line per missed bar
        _say(f"cnncli: quality gate failed: {one_line(failed)}")
    if report.get("gate_failures"):
        raise typer.Exit(EXIT_GATE)


app.add_typer(ledger_app, name="ledger")


@command("cnncli export model.safetensors              # -> model.onnx",
         "cnncli export cats.safetensors -o cats.onnx --with-preprocess --overwrite")
def export(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Weight file to export.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="ONNX file to write (default: the model's name with .onnx).",
        show_default=False)] = None,
    with_preprocess: Annotated[bool, typer.Option(
        "--with-preprocess", help="The graph takes uint8 NxHxWxC images and normalises them itself.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
):
    """Write the model as ONNX (softmax included; classes and preprocessing in its metadata)."""
    from cnncli.commands.export import ExportOptions, run

    done = run(ExportOptions(model=str(model), output=str(output) if output else None,
                             with_preprocess=with_preprocess, overwrite=overwrite))
    _say(f"wrote {one_line(done['output'])} ({done['bytes']:,} bytes; input {done['input']}, "
         "output probabilities float32 NxK)")


@command("cnncli check photos/     # exit 3 when a duplicate crosses splits or classes",
         "cnncli check photos/ --format json | jq .leaks")
def check(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Labeled image folder: DATA/<class>/ or "
                                         "DATA/train/<class>/ (+ val/, test/).", show_default=False)],
    fmt: Annotated[CheckFormat, typer.Option("--format", help="text or json.")] = CheckFormat.text,
):
    """Audit a labeled folder: duplicates within and across splits and classes, unreadable files, class
    balance, tiny images, sizes and modes. Exit 3 when a duplicate crosses splits or classes."""
    from cnncli.commands.check import exit_code, format_text
    from cnncli.data.audit import audit

    report = audit(data)
    _print_report(report, fmt == CheckFormat.json, format_text)
    code = exit_code(report)
    if code:
        _say(f"cnncli: check: {report['leaks']} duplicate group(s) across splits, {report['conflicts']} across "
             "classes")
        raise typer.Exit(code)


@command("cnncli show model.safetensors                 # first-layer filters -> show.png",
         "cnncli show model.safetensors cat.png -o inside.png --overwrite")
def show(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Weight file.", show_default=False)],
    image: Annotated[Optional[Path], typer.Argument(
        metavar="IMAGE", help="An image: adds its feature maps and a saliency map for the predicted class.",
        show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Picture file (.png, .svg, .pdf), or a folder for one PNG per part "
                               "(default: show.png; none with --format json).", show_default=False)] = None,
    fmt: Annotated[ShowFormat, typer.Option("--format", help="picture, or json (raw numbers on stdout).")
                   ] = ShowFormat.picture,
    max_maps: Annotated[int, typer.Option(help="Feature maps drawn per layer.")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing picture files.")] = False,
):
    """Look inside a model: first-layer filters, an image's feature maps per layer, and saliency."""
    require(1 <= max_maps <= 256, "--max-maps", f"must be between 1 and 256, got {max_maps}")
    from cnncli.commands.show import ShowOptions, run

    opts = ShowOptions(model=str(model), image=str(image) if image else None,
                       output=str(output) if output else None, json=fmt == ShowFormat.json, max_maps=max_maps,
                       overwrite=overwrite)
    for path in run(opts, write=sys.stdout.write, warn=lambda msg: _say(f"warning: {one_line(msg)}")):
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


def main(argv=None):
    """Entry point (the `cnncli` script, python -m cnncli): run the app on argv (None: sys.argv) and exit with the
    documented code for how it ended (commands/entry.py)."""
    from cnncli.commands.entry import run

    run(app, argv)
