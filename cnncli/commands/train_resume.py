"""What `train --resume` takes from an interrupted run, and what it refuses.

A resumed run continues with the interrupted run's options, read from its checkpoint. An option given with
--resume that would change the run (--epochs, --arch, --lr, ...) is refused, naming it and its saved value,
instead of being silently ignored. The checkpoint data record (the saved split with file digests) is tied
to its checkpoint by its SHA-256, stored in the checkpoint's metadata (which the checkpoint's own checksum
covers), so an edited record is refused rather than trained on.
"""

from dataclasses import asdict, fields

from cnncli.commands import outputs
from cnncli.errors import DataError, FormatError, NoInputError, UsageError
from cnncli.store import checkpoint, manifest

# Options that may differ on resume: where the data and outputs are (DATA spelt another way, the same -o),
# how the run is executed (--threads, --wait, -q: not run options), and what happens at the end without
# touching the weights (--plot replaces the saved one; --overwrite and --fail-on-collapse hold if either run
# gave them). Everything else is the interrupted run's and must not contradict it.
MAY_CHANGE = frozenset({"data", "output", "resume", "wait", "threads", "plot", "overwrite", "fail_on_collapse",
                        "no_cache"})
RECORD_DIGEST_KEY = "run_data_sha256"


def _flag(name):
    return "-o" if name == "output" else "--" + name.replace("_", "-")


def _shown(value):
    if value is None:
        return "the default"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def conflicts(opts, saved, given, used=None):
    """The options in `given` (names of TrainOptions fields typed on this command line) whose value in `opts`
    contradicts the interrupted run's `saved` options: [(name, given value, value it ran with)]. used: the values the
    run actually trained with where it left the choice to cnncli ({"size": 64, "color": "rgb", "epochs": 6}):
    typing the value it chose repeats it, so it is no contradiction."""
    now, used = asdict(opts), used or {}
    ran = {name: used[name] if value in (None, "auto") and name in used else value for name, value in saved.items()}
    return [(name, now[name], ran[name]) for name in sorted(given)
            if name not in MAY_CHANGE and name in saved and name in now and now[name] != ran[name]]


def resume_options(opts, side, given):
    """(the checkpoint as checkpoint.read gives it, the interrupted run's options merged with this command
    line's DATA, -o, --wait, --threads, --plot, --overwrite and --fail-on-collapse). UsageError (exit 2)
    without a checkpoint, or naming every option in `given` that contradicts the saved run."""
    if not side["checkpoint"].exists():
        raise UsageError(f"--resume: no checkpoint at {side['checkpoint']} (nothing to resume)")
    resumed = checkpoint.read(side["checkpoint"])
    known = {f.name for f in fields(opts)}
    saved = {k: v for k, v in resumed[4]["options"].items() if k in known}
    clf, cfg = resumed[0], resumed[2]
    differing = conflicts(opts, saved, given, {"size": clf.size, "color": clf.color, "epochs": cfg.epochs})
    if differing:
        raise UsageError("--resume: options that contradict the interrupted run's: "
                         + ", ".join(f"{_flag(n)} {_shown(v)} (it used {_shown(s)})" for n, v, s in differing)
                         + "; drop them, or start again with --overwrite instead of --resume")
    merged = {**asdict(opts), **saved, "data": opts.data, "output": opts.output, "resume": True, "wait": opts.wait,
              "threads": opts.threads, "overwrite": bool(saved.get("overwrite", True) or opts.overwrite),
              "fail_on_collapse": bool(saved.get("fail_on_collapse", False) or opts.fail_on_collapse),
              "no_cache": opts.no_cache,
              "plot": opts.plot or saved.get("plot")}
    if merged["plot"]:
        outputs.check_plot_suffix(merged["plot"])
    return resumed, type(opts)(**merged)


def saved_parts(ds, side, meta, current_files):
    """The parts an interrupted run drew, resolved against DATA as given now, and whether validation was drawn
    from the training folders. FormatError (exit 65) when the checkpoint data record is not the one its
    checkpoint was written with; DataError naming the files added, removed or changed since (current_files:
    {relative path: digest} of DATA now)."""
    where = side["checkpoint data record"]
    try:
        record = manifest.read_run_data(where)
    except NoInputError:
        raise NoInputError(f"{where}: missing, so the checkpoint cannot be resumed on the same files; "
                           "start again with --overwrite") from None
    if record["run_id"] != meta.get("run_id"):
        raise FormatError(f"{where}: belongs to another run than the checkpoint; start again with --overwrite")
    if record["sha256"] != meta.get(RECORD_DIGEST_KEY):
        raise FormatError(f"{where}: does not match the SHA-256 stored in {side['checkpoint']} (edited since the "
                          "checkpoint was written); restore it, or start again with --overwrite")
    changed = manifest.describe_changes(record["files"], current_files)
    if changed or record["classes"] != ds.classes:
        raise DataError(f"{ds.root}: the data changed since the checkpoint was written ({changed or 'classes'}); "
                        "--resume needs the same files: restore them, or start again with --overwrite")
    return {k: manifest.resolve_items(v, ds.root) for k, v in record["parts"].items()}, record["drawn"]
