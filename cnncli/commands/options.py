"""Pieces every command's options share: value checks, choices, help panels and the help layout.

The option signatures, and their defaults (written there once and shown by --help), are in cli.py.
"""

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from typer.core import TyperArgument, TyperCommand, TyperGroup

from cnncli.commands.coercion import install as lean_coercion
from cnncli.errors import UsageError

# Help panels, in the order a reader needs them.
DATA, MODEL, OPTIMISATION, OUTPUT, RUN = "Data", "Model", "Optimisation", "Output", "Run control"
MODEL_HELP = "Weight file (default: $CNNCLI_MODEL, else ./model.safetensors)."


class _PlainTypes:
    """--help without what says nothing: `<bool>` after a flag (a flag takes no value) and `<list[str]>` after a
    repeatable argument (its name is already followed by ...). Values are converted without pydantic where
    that gives the same result (commands/coercion.py)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            lean_coercion(p)
            if getattr(p, "is_flag", False) and not getattr(p, "count", False):
                p.metavar = ""
            elif isinstance(p, TyperArgument) and p.nargs != 1:
                p.display_type_rich = lambda ctx: None
        return params


class HelpCommand(_PlainTypes, TyperCommand):
    """Every cnncli command (cli.command registers them with it)."""


class HelpGroup(_PlainTypes, TyperGroup):
    """The `cnncli` group itself (its --version, --debug and --help)."""


def examples(*lines):
    """A help epilog listing example command lines, one per paragraph (rich help joins single lines)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def require(cond, option, msg):
    """UsageError "OPTION: msg" unless cond."""
    if not cond:
        raise UsageError(f"{option}: {msg}")


def positive_finite(value, option, allow_zero=False):
    """UsageError unless value is None or a finite number > 0 (>= 0 with allow_zero)."""
    if value is not None:
        require(math.isfinite(value) and (value > 0 or (allow_zero and value == 0)), option,
                f"must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")


def probability(value, option):
    """UsageError unless value is None or a number in [0, 1]."""
    require(value is None or (math.isfinite(value) and 0 <= value <= 1), option,
            f"must be a number in [0, 1], got {value}")


def _choices(name, *values):
    """A str Enum whose members are spelled like their values, for a typer option with a fixed set of values."""
    return Enum(name, [(v, v) for v in values], type=str)


Color = _choices("Color", "auto", "gray", "rgb")
Resize = _choices("Resize", "crop", "squash", "pad")
Augment = _choices("Augment", "none", "light", "photo")
AugmentOption = Annotated[Augment, typer.Option(help="light: flips, shifts; photo: crop, turn, colour (bare: light).",
                                                show_default=False, rich_help_panel=DATA)]
ArchOption = Annotated[str, typer.Option(
    help="Spec or preset: tiny, m1, default, photo. Unset: photo for RGB input of 64 px or more, else default.",
    show_default=False, rich_help_panel=MODEL)]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="No on-disk decode cache.", rich_help_panel=DATA)]
ResizeOption = Annotated[Resize, typer.Option(help="Centre square, or whole image (colour photos), or letterbox.",
                                              show_default=False, rich_help_panel=DATA)]
PatienceOption = Annotated[Optional[int], typer.Option(
    help="Stop after N epochs without gain (0: never; default: max(3, epochs/5)).",
    metavar="N", show_default=False, rich_help_panel=RUN)]
NoEarlyStop = Annotated[bool, typer.Option("--no-early-stop", help="Run every epoch (same as --patience 0).",
                                           rich_help_panel=RUN)]
InitOption = Annotated[Optional[Path], typer.Option(
    metavar="OLD", help="Fine-tune: start from the weights in this file.", show_default=False,
    rich_help_panel=MODEL)]
FreezeOption = Annotated[int, typer.Option(metavar="N", help="With --init: keep its first N weight layers fixed.",
                                           show_default=False, rich_help_panel=MODEL)]
# Help text is rich markup when typer draws help with rich (its default): there a bare `[dask]` was taken for a
# style tag and the help said `pip install 'cnncli'`. Plain help (TYPER_USE_RICH=0) would show the backslash.
_DASK_EXTRA = "'cnncli\\[dask]'" if typer.core.DEFAULT_MARKUP_MODE == "rich" else "'cnncli[dask]'"
Scheduler = Annotated[Optional[str], typer.Option(
    metavar="ADDRESS", help="Score on a Dask cluster: tcp://HOST:PORT, or local:N worker processes started here "
    "(default: $CNNCLI_SCHEDULER; none: this process). Needs pip install " + _DASK_EXTRA + ".", show_default=False,
    rich_help_panel=RUN)]
TTA = Annotated[bool, typer.Option("--tta", help="Average each image with its mirror image.", rich_help_panel=MODEL)]
NoProgress = Annotated[bool, typer.Option("--no-progress", rich_help_panel=RUN,
                                          help="No progress bar on a terminal (never drawn elsewhere).")]
# Options that took no value before they took one: given bare, they mean this value.
_BARE = {"--augment": ("light", tuple(m.value for m in Augment))}


def bare_option_values(args):
    """argv with each bare `--augment` (the plain flag it used to be: no mode after it) as `--augment=light`."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a in _BARE and (i + 1 == len(out) or out[i + 1] not in _BARE[a][1]):
            out[i] = f"{a}={_BARE[a][0]}"
    return out
OptimizerName = _choices("OptimizerName", "adam", "sgd")
ClassWeights = _choices("ClassWeights", "none", "auto")
PredictFormat = _choices("PredictFormat", "table", "tsv", "csv", "jsonl")
EvalSplit = _choices("EvalSplit", "train", "val", "test", "all")
EvalFormat = _choices("EvalFormat", "table", "json")
CheckFormat = _choices("CheckFormat", "text", "json")
ShowFormat = _choices("ShowFormat", "picture", "json")


def given_options(ctx):
    """The names of the parameters typed on this command line (not left at their defaults), for a click/typer
    context: e.g. {"data", "epochs"} for `train d --epochs 1`."""
    return frozenset(name for name in ctx.params
                     if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE")
