"""Pictures drawn with matplotlib: the common figure style, and writing a figure to PNG, SVG or PDF.

matplotlib is imported inside `figure()` only, never when this module is imported, so commands that draw
nothing (a one-image `predict`, `--help`) never load it. Figures are `matplotlib.figure.Figure` objects on
the non-interactive Agg canvas (no pyplot, no GUI, no global state). `save` renders to memory and writes
through `atomic_write_bytes`, so a reader never sees a half-written picture.
"""

from __future__ import annotations

import io
import os


# The picture format follows the output file's suffix.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
DPI = 110
BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.7,
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
    "svg.hashsalt": "cnncli",  # stable SVG element ids: the same data gives the same file
}


def chart_format(path) -> str:
    """'png', 'svg' or 'pdf' from the suffix of ``path`` (any letter case); ValueError for anything else."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: cannot draw a '{suffix or '(no suffix)'}' picture "
                         f"(use {', '.join(FORMATS)})")
    return FORMATS[suffix]


def _matplotlib():
    import logging

    # A read-only home makes matplotlib warn about its font cache on stderr; that is not the user's problem.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    import matplotlib

    return matplotlib


def style():
    """Context manager applying cnncli's rc settings; draw a figure (create it and its axes) inside it."""
    return _matplotlib().rc_context(_STYLE)


def figure(width: float, height: float, **kwargs):
    """A new Figure of ``width`` x ``height`` inches, laid out by matplotlib's constrained layout (labels
    never overlap or leave the frame). Call it inside ``style()``."""
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kwargs)


def render(fig, fmt: str) -> bytes:
    """The figure encoded as ``fmt`` ('png', 'svg' or 'pdf'), without dates or tool versions in it, so the
    same data always gives the same bytes."""
    meta = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
            "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}[fmt]
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta, facecolor="white")
    return buf.getvalue()


def save(fig, path) -> None:
    """Write ``fig`` to ``path`` atomically in the format its suffix names (see ``chart_format``).

    Raises ValueError for an unknown suffix, WriteError when the file cannot be written.
    """
    from cnncli.store.atomic import atomic_write_bytes

    atomic_write_bytes(path, render(fig, chart_format(path)))
