"""train's options that depend on each other, and what is derived from them: early stopping (--patience,
--no-early-stop) and its report line; fine-tuning (--init, --freeze) against --resume.

No typer or rich here: the checks raise UsageError (exit 2), which the command line reports in one line.
"""

from cnncli.engine.training import default_patience
from cnncli.errors import UsageError


def check(opts):
    """UsageError for a --patience below 0, or one above 0 together with --no-early-stop; for --init with
    --resume, a negative --freeze, or --freeze without --init."""
    if opts.patience is not None and opts.patience < 0:
        raise UsageError(f"--patience: must be at least 0, got {opts.patience}")
    if opts.patience and opts.no_early_stop:
        raise UsageError(f"--patience {opts.patience} contradicts --no-early-stop; give one of them")
    if opts.init and opts.resume:
        raise UsageError("--init cannot be combined with --resume (the checkpoint already holds the weights); "
                         "drop --init to continue, or start again with --overwrite")
    if opts.freeze < 0:
        raise UsageError(f"--freeze: must be at least 0, got {opts.freeze}")
    if opts.freeze and not opts.init:
        raise UsageError(f"--freeze {opts.freeze} needs --init (frozen random weights would stay random)")


def patience(opts, epochs, has_val):
    """The early-stopping patience of a new run of `epochs` epochs: None (never stop early) without a
    validation set, with --no-early-stop or with --patience 0; else --patience, else default_patience(epochs)."""
    if not has_val or opts.no_early_stop or opts.patience == 0:
        return None
    return opts.patience or default_patience(epochs)


def stop_line(state, cfg):
    """The info line of a run that stopped early (engine.training.TrainState, TrainConfig)."""
    return (f"stopped at epoch {state.epoch} of {cfg.epochs}: no better validation score for {cfg.patience} "
            f"epochs; kept epoch {state.best_epoch}")
