"""The `train` job: folder in, weight file out, with checkpoints, resume and clean interrupts.

No typer or rich here: the command line passes options in and receives progress through a reporter
object with the methods info, warn, batch, epoch_end (see cli.TrainReporter).
"""

import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnncli.commands import outputs, train_auto, train_budget, train_init, train_options, train_resume
from cnncli.commands.stop_request import StopRequest
from cnncli.data import audit, folders
from cnncli.data.augment import augment_function

from cnncli.engine import kernels

from cnncli.store import checkpoint, manifest, modelfile

from cnncli.store import weights
from cnncli.store.atomic import OutputLock, atomic_write_bytes, check_writable_target
from cnncli.errors import DataError, DivergedError, GateError, OutputError, SpecError, UsageError, one_line
from cnncli.report.lines import csv_row
from cnncli.data.images import input_scaling
from cnncli.engine.decision import decide
from cnncli.engine.health import check_collapse
from cnncli.engine.model import Model
from cnncli.engine.optim import make_optimizer
from cnncli.engine.training import TrainConfig, TrainState, class_weights_auto, evaluate, fit

CHECKPOINT_KIND = "checkpoint"


@dataclass
class TrainOptions:
    """train's options, all given by the command line (cli.train's signature holds the defaults)."""

    data: str
    output: str
    arch: str
    size: int | None
    color: str
    epochs: int | None  # None: auto_epochs()
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    val_split: float
    seed: int
    augment: str  # none, light or photo (data/augment.py)
    resize: str  # crop, squash or pad (data/images.py)
    class_weights: str
    patience: int | None  # None: train_options.patience picks it; 0: never stop early
    max_time: float | None
    clip_norm: float | None
    threads: int | None
    overwrite: bool
    resume: bool
    strict: bool
    wait: float
    plot: str | None
    fail_on_collapse: bool
    no_cache: bool = False  # decode every image, read and write no decode cache (store/decode_cache.py)
    no_early_stop: bool = False
    init: str | None = None  # weight file to start from (commands/train_init.py)
    freeze: int = 0  # with init: the first N layers with parameters stay fixed
    automatic: tuple = ()  # the options train_auto chose, e.g. ("--resize squash",); kept by --resume


AUTO_STEPS, AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 4500, 3, 50


def auto_epochs(n_images, batch_size):
    """The default epoch count: about AUTO_STEPS gradient steps, so small folders get many passes and large
    ones few (Fashion-MNIST's 48,000 training images at batch 64: 6 epochs), clamped to [3, 50]."""
    steps_per_epoch = max(1, math.ceil(n_images / batch_size))
    return min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, round(AUTO_STEPS / steps_per_epoch)))


def sidecars(output):
    """The files kept beside a weight file, by role (the names README's "Training" table lists)."""
    return {name: modelfile.default_sidecar(output, suffix) for name, suffix in
            (("checkpoint", ".ckpt.safetensors"), ("checkpoint data record", ".ckpt.data.json"),
             ("history", ".history.csv"), ("split manifest", ".split.json"), ("bad-files list", ".bad-files.tsv"))}


def _history_csv(history):
    cols = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time"]
    cell = lambda v: f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)  # noqa: E731
    rows = [csv_row(cols)] + [csv_row([cell(rec.get(k)) for k in cols]) for rec in history]
    return "".join(rows).encode()


def _parts(ds, opts):
    """{"train": items, "val": items | [], "test": items | []} and whether the validation part was drawn from
    the training folders (the flat layout, --val-split > 0)."""
    train_items, val_items, drawn = ds.train, ds.val or [], False
    if not val_items and opts.val_split > 0:
        train_items, val_items = folders.stratified_split(ds.train, opts.val_split, opts.seed)
        drawn = True
    return {"train": train_items, "val": val_items, "test": ds.test or []}, drawn


def _auto_size(opts, ds, parts, report):
    """The input size from the training images' headers (folders.choose_size); above 64 px as far as time and
    memory allow (train_budget.auto_size), said in one info line."""
    median = folders.choose_size([p for p, _ in ds.train], cap=train_budget.AUTO_SIZE_MAX, seed=opts.seed)
    n_train = len(parts["train"])
    size, why = train_budget.auto_size(median, opts.arch, len(ds.classes), n_train, len(_all_paths(ds)),
                                       opts.epochs or auto_epochs(n_train, opts.batch_size))
    if why:
        report.info(why)
    return size


def _all_paths(ds):
    return [p for part in (ds.train, ds.val or [], ds.test or []) for p, _ in part]


def _read(opts, ds, report, resumed, side):
    """(parts, drawn, input size, _decode's result) of a new run (or a resumed one's saved parts)."""
    if resumed:
        parts, drawn = train_resume.saved_parts(ds, side, resumed[4], manifest.fingerprint(_all_paths(ds), ds.root))
    else:
        parts, drawn = _parts(ds, opts)
    size = opts.size or (resumed[0].size if resumed else _auto_size(opts, ds, parts, report))
    color = resumed[0].color if resumed else opts.color
    resize = resumed[0].resize if resumed else opts.resize
    if not resumed:
        _build(opts, 3 if color == "rgb" else 1, size, len(ds.classes))  # a bad --arch fails before any decoding
    report.info(f"reading {len(parts['train'])} training images in {len(ds.classes)} classes from {one_line(ds.root)} "
                f"(input {size}x{size}, resize {resize})")
    return parts, drawn, size, _decode(ds, parts, opts, report, size, color, resize)


def _decode(ds, parts, opts, report, size, color, resize):
    """Decode the parts into (train, val | None, test | None) as folders.Loaded and the colour used."""
    def on_bad(path, reason):
        report.warn(f"skipped {one_line(path)}: {one_line(reason)}")

    cache = train_budget.open_cache(opts.no_cache, report)
    kw = dict(size=size, strict=opts.strict, on_bad=on_bad, classes=ds.classes, resize=resize,
              decoder=cache.decode if cache else None)
    train = folders.load_images(parts["train"], color=color, **kw)
    fixed = "rgb" if train.channels == 3 else "gray"
    val = folders.load_images(parts["val"], color=fixed, **kw) if parts["val"] else None
    test = folders.load_images(parts["test"], color=fixed, **kw) if parts["test"] else None
    if cache is not None:
        report.info(f"decoded {cache.decoded}, {cache.hits} from cache")
        if cache.off_reason:
            report.info(f"decode cache not written: {one_line(cache.off_reason)}")
        elif cache.written:
            cache.trim()
    return train, val, test, fixed


def _checkpoint_tensors(model, optimizer, state):
    tensors = checkpoint.stack_named("model/", model.state_dict())
    tensors.update(checkpoint.stack_named("opt/", {k: v for k, v in optimizer.state.items() if k != "step"}))
    if state.best_weights is not None:
        tensors.update(checkpoint.stack_named("best/", state.best_weights))
    return tensors


def _save_checkpoint(path, clf, optimizer, state, cfg, opts, meta_extra):
    meta = clf.metadata()
    st = asdict(state)
    st.pop("best_weights")
    st["best_score"] = None if not math.isfinite(state.best_score) else state.best_score
    meta.update({"kind": CHECKPOINT_KIND, "state": st, "config": asdict(cfg), "optimizer_step": optimizer.state["step"],
                 "options": {k: v for k, v in asdict(opts).items() if k not in ("resume", "wait")},
                 **meta_extra})
    weights.save(path, _checkpoint_tensors(clf.model, optimizer, state), meta)


def _build(opts, channels, size, n_classes):
    """The model --arch describes for this input, or a usage error naming the layer that does not fit."""
    try:
        model = Model(opts.arch, (channels, size, size), n_classes, seed=opts.seed)
    except SpecError as exc:
        raise UsageError(f"--arch: {exc}") from None
    if opts.batch_size > model.training_batch_limit():  # README "Weight files", limits
        raise UsageError(f"--batch-size: {opts.batch_size} images of {model.activations:,} activation values each "
                         f"exceed the per-batch limit; use --batch-size {model.training_batch_limit()} or less, "
                         "or a smaller --size")
    return model


def run(opts, report, given=frozenset()):
    """Train as the options say; returns a summary dict. `given`: the names of the options typed on the
    command line (with --resume, those must not contradict the checkpoint). Raises CnnError subclasses for
    user-facing failures."""
    out = Path(opts.output)
    train_options.check(opts)
    if opts.plot:
        outputs.check_plot_suffix(opts.plot)
    check_writable_target(out, overwrite=True)  # the folder, before a lock file is made in it (exit 73)
    if opts.threads:
        kernels.set_threads(opts.threads)
    with modelfile.output_lock(out, wait=opts.wait), StopRequest() as stop:
        return _run_locked(opts, report, out, sidecars(out), stop, given)


def _check_outputs(opts, out, side, ds=None):
    """The output rules (commands/outputs.py) for the weights, every sidecar and the plot; with `ds`, also
    that none of them is one of its images."""
    outs = {"weight file": out, **side, **({"--plot file": Path(opts.plot)} if opts.plot else {})}
    if ds is not None:
        outputs.check_not_inputs(outs, _all_paths(ds), root=ds.root)
        return
    if not opts.resume and side["checkpoint"].exists() and not opts.overwrite:
        raise OutputError(f"{side['checkpoint']}: an interrupted run left this checkpoint; continue it with "
                          "--resume, or start again with --overwrite")
    # files a resumed run wrote itself before the interrupt
    own = ("checkpoint", "checkpoint data record", "history", "bad-files list") if opts.resume else ()
    outputs.check_outputs(outs, opts.overwrite, own=own)


def _run_locked(opts, report, out, side, stop, given):
    t0 = time.monotonic()
    resumed, budget = None, train_budget.train_memory()
    if opts.resume:
        resumed, opts = train_resume.resume_options(opts, side, given)
        report.info(f"resuming from {one_line(side['checkpoint'])} at epoch {resumed[1].epoch + 1}, "
                    f"batch {resumed[1].batch + 1}")
    init, opts = train_init.load(opts, given) if opts.init else (None, opts)  # before anything is written
    _check_outputs(opts, out, side)
    ds = folders.scan_dataset(opts.data, on_warn=report.warn)
    _check_outputs(opts, out, side, ds)
    run_id = resumed[4].get("run_id") if resumed else uuid.uuid4().hex
    typed, opts = opts, train_auto.choose(opts, given, ds, report)
    parts, drawn, size, (train, val, test, color) = _read(opts, ds, report, resumed, side)
    if opts.automatic and color == "gray" and not resumed:  # colour headers, gray pixels: trains as before
        opts = train_auto.undone(typed, report)
        parts, drawn, size, (train, val, test, color) = _read(opts, ds, report, resumed, side)
    # The files and their digests, written with the first checkpoint, so that --resume can prove it sees
    # the same data (a run that fails before its first checkpoint leaves no record behind).
    record = None if resumed else (run_id, ds.root, ds.classes, parts, manifest.fingerprint(_all_paths(ds), ds.root),
                                   drawn)
    for name, part in (("validation", val), ("test", test)):  # leaks make the reported figures optimistic
        msg = audit.overlap_warning(name, train, part)
        if msg:
            report.warn(msg)
    channels = train.channels
    if resumed:
        clf, state, cfg, opt_state, _ = resumed
        if clf.classes != ds.classes or clf.model.input_shape != (channels, size, size):
            raise DataError(f"{opts.data}: the data no longer matches the checkpoint "
                            f"(classes or image size changed); start again with --overwrite")
        model = clf.model
        optimizer = make_optimizer(cfg.optimizer, cfg.weight_decay)
        optimizer.state = {"step": resumed[4]["optimizer_step"], **opt_state}
    else:
        opts = train_budget.pick_arch(opts, given, channels, size, len(ds.classes), budget, report)
        model = _build(opts, channels, size, len(ds.classes))
        from_init = train_init.start_from(model, init, opts, ds.classes, report) if init else {}
        mean, std = (init.mean, init.std) if init else input_scaling(train.x)  # as the init weights saw images
        clf = modelfile.Classifier(model, ds.classes, color, mean, std, resize=opts.resize, train=from_init)
        weights_by_class = (class_weights_auto(train.y, len(ds.classes)) if opts.class_weights == "auto" else None)
        epochs = opts.epochs or auto_epochs(len(train.y), opts.batch_size)
        cfg = TrainConfig(epochs=epochs, batch_size=opts.batch_size, lr=opts.lr, optimizer=opts.optimizer,
                          weight_decay=opts.weight_decay, seed=opts.seed,
                          augment=opts.augment,
                          class_weights=weights_by_class, patience=train_options.patience(opts, epochs, bool(val)),
                          max_time=opts.max_time, clip_norm=opts.clip_norm, freeze=opts.freeze)
        state, optimizer = TrainState(), None
    bad = train.bad + (val.bad if val else []) + (test.bad if test else [])
    if bad:
        atomic_write_bytes(side["bad-files list"], "".join(f"{one_line(p)}\t{one_line(r)}\n" for p, r in bad).encode())
    counts = np.bincount(train.y, minlength=len(ds.classes)).tolist()
    data_path = os.path.abspath(ds.root)
    meta_extra = {"data": data_path, "run_id": run_id,  # the record's SHA-256 ties it to the checkpoint
                  train_resume.RECORD_DIGEST_KEY: resumed[4].get(train_resume.RECORD_DIGEST_KEY) if resumed else None}
    per_epoch = math.ceil(len(train.y) / cfg.batch_size)
    last_tick = [time.monotonic(), 0]

    def on_batch(st, loss, lr):
        now = time.monotonic()
        report.batch(st, per_epoch, cfg.epochs, loss, st.running["correct"] / max(1, st.running["seen"]),
                     st.running["seen"] / max(1e-9, now - last_tick[0]))

    def checkpoint(st, optimizer):
        nonlocal record
        if record is not None:
            meta_extra[train_resume.RECORD_DIGEST_KEY] = manifest.write_run_data(side["checkpoint data record"],
                                                                                 *record)
            record = None
        _save_checkpoint(side["checkpoint"], clf, optimizer, st, cfg, opts, meta_extra)

    def on_epoch(st, optimizer):
        atomic_write_bytes(side["history"], _history_csv(st.history))
        checkpoint(st, optimizer)
        report.epoch_end(st.history[-1], cfg.epochs)
        last_tick[0] = time.monotonic()

    micro = train_budget.micro_batch(model, budget, cfg.batch_size)
    report.info(f"training {model.spec} ({model.num_params():,} parameters) on {len(train.y)} images, "
                f"validating on {len(val.y) if val else 0}" + train_budget.describe(micro, budget))
    stop.armed = True
    try:
        # Overflow on the way to a NaN loss is reported once, by fit's DivergedError, not as numpy warnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            state, optimizer = fit(model, train.x, train.y, cfg, clf.to_float,
                                   val.x if val else None, val.y if val else None, state=state,
                                   optimizer=optimizer, on_batch=on_batch, on_epoch=on_epoch, should_stop=stop,
                                   augment=augment_function(cfg.augment), micro_batch=micro)
    except DivergedError:
        _discard(side)
        raise
    finally:
        stop.armed = False
    if state.stop_reason == "interrupted":
        checkpoint(state, optimizer)
        return {"interrupted": stop.signum, "checkpoint": str(side["checkpoint"]), "epoch": state.epoch,
                "batch": state.batch}
    if state.stop_reason == "early-stopped":
        report.info(train_options.stop_line(state, cfg))
    summary = {"classes": ds.classes, "images_per_class": counts, "skipped_files": len(bad),
               "epochs_run": state.epoch, "best_epoch": state.best_epoch, "stop_reason": state.stop_reason,
               "seconds": round(time.monotonic() - t0, 1), "output": str(out)}
    val_predicted = None
    if val is not None:
        _, summary["val_accuracy"], val_proba = evaluate(model, val.x, val.y, clf.to_float)
        val_predicted = decide(val_proba)
    if test is not None:
        summary["test_accuracy"] = evaluate(model, test.x, test.y, clf.to_float)[1]
    clf.train = {**clf.train, "epochs": state.epoch, "best_epoch": state.best_epoch, "seed": cfg.seed,
                 "optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                 "batch_size": cfg.batch_size, "augment": cfg.augment, "class_weights": cfg.class_weights,
                 "val_accuracy": summary.get("val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
                 "stop_reason": state.stop_reason, "epochs_planned": cfg.epochs, "patience": cfg.patience,
                 "images": len(train.y), "data": data_path, "run_id": run_id,
                 **({"automatic": list(opts.automatic)} if opts.automatic else {})}
    try:
        found = check_collapse(state.history, val.y if val is not None else None, val_predicted, len(clf.classes),
                               cfg.lr, opts.fail_on_collapse)
    except GateError:
        _discard(side)
        raise
    for text in found:
        report.warn(text)
        clf.train.setdefault("warnings", []).append(text)
    modelfile.save(out, clf)
    _finish_files(side, ds, parts, drawn, bool(bad), opts, run_id, summary)
    if opts.plot:
        from cnncli.report import training_chart  # matplotlib only when a picture is asked for

        training_chart.plot_history(opts.plot, state.history, state.best_epoch,
                                    f"{model.spec} on {ds.root} ({clf.size}x{clf.size} {clf.color})")
    return summary


def _discard(side):
    """Nothing of a failed run (diverged, or collapsed under --fail-on-collapse) stays: resuming its
    checkpoint would fail again, and its history and bad-files list would describe weights that were never
    written, and block the next run without --overwrite."""
    _remove(side["checkpoint"], side["checkpoint data record"], side["history"], side["bad-files list"])


def _remove(*paths):
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _finish_files(side, ds, parts, drawn, any_bad, opts, run_id, summary):
    """After the weights were saved: their split manifest (tied by run_id), no stale sidecars of the model
    they replaced, no checkpoint."""
    if drawn:
        manifest.write_manifest(side["split manifest"], ds.root, ds.classes, parts["train"], parts["val"],
                                opts.seed, opts.val_split, run_id=run_id)
        summary["split"] = str(side["split manifest"])
    else:
        _remove(side["split manifest"])
    if any_bad:
        summary["bad_files"] = str(side["bad-files list"])
    else:
        _remove(side["bad-files list"])
    _remove(side["checkpoint"], side["checkpoint data record"])
    summary["history"] = str(side["history"])
