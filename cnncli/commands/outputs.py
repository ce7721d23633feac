"""The rules every output path of a command follows, in one place (train's weights, sidecars and plot;
eval's plot):

- checked before any image is decoded: the folder exists and takes new files (exit 73);
- an existing file is replaced only with --overwrite (exit 73);
- never one of the run's input files (an image of DATA, the model eval reads), nor a new image file inside
  DATA, which the next run would read (exit 73);
- never another output of the same run, however it is spelt (exit 73);
- show: nothing in (or below) the folder of the image it inspects, which may be a class folder of DATA
  (exit 73);
- plots: the suffix names the format, .png, .svg or .pdf; any other is a usage error (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from cnncli.data.images import has_image_extension
from cnncli.errors import OutputError, UsageError
from cnncli.store.atomic import check_writable_target

def check_plot_suffix(path: str | os.PathLike) -> None:
    """UsageError (exit 2) unless `path` ends in a format the charts can write: .png, .svg or .pdf, any case."""
    from cnncli.report.charts import chart_format  # light: matplotlib itself loads only to draw

    try:
        chart_format(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_outputs(outputs: Mapping[str, str | os.PathLike], overwrite: bool, own: Iterable[str] = ()) -> None:
    """Check the outputs of one run, {what: path}, before it reads any image.

    OutputError (exit 73) when two of them are the same file (compared after resolving symlinks and `..`),
    or when one cannot be created (see check_writable_target) or exists and neither `overwrite` is set nor
    its `what` is in `own` (files the run itself left before, such as a checkpoint it resumes from).
    """
    seen: dict[str, str] = {}
    for what, path in outputs.items():
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{path}: the {what} would be the same file as the {seen[key]}; choose another name")
        seen[key] = what
    own = set(own)
    for what, path in outputs.items():
        check_writable_target(path, overwrite=overwrite or what in own)


def check_not_inputs(outputs: Mapping[str, str | os.PathLike], inputs: Iterable[str | os.PathLike],
                     root: str | os.PathLike | None = None) -> None:
    """OutputError (exit 73) when an output is one of the input files (the same file on disk, through any
    name or link), or, with `root` (the data folder), an image file inside it: a picture written there would
    be read as training data by the next run. Only outputs that exist can be inputs, so a run with fresh
    outputs stats nothing."""
    existing = {}
    for what, path in outputs.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        existing[(st.st_dev, st.st_ino)] = (what, path)
    for p in inputs if existing else ():
        try:
            st = os.stat(p)
        except OSError:
            continue
        hit = existing.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise OutputError(f"{hit[1]}: is an input of this run ({p}); write the {hit[0]} elsewhere")
    if root is not None:
        inside = os.path.join(os.path.realpath(root), "")
        for what, path in outputs.items():
            if os.path.realpath(path).startswith(inside) and has_image_extension(os.fspath(path)):
                raise OutputError(f"{path}: is inside the data folder {root}, where the next run would read it "
                                  f"as an image; write the {what} elsewhere")


def check_not_beside(outputs: Mapping[str, str | os.PathLike], image: str | os.PathLike) -> None:
    """OutputError (exit 73) when an output would land in the folder holding the input `image`, or below it
    (compared after resolving symlinks and `..`): that folder may be a class folder of a labeled DATA folder,
    and a picture written there would be read by the next run as a training image of that class."""
    folder = os.path.join(os.path.dirname(os.path.realpath(image)), "")
    for what, path in outputs.items():
        if os.path.join(os.path.dirname(os.path.realpath(path)), "").startswith(folder):
            raise OutputError(f"{path}: is in the folder of the input image {image}, which may be a class folder "
                              f"the next run reads as data; write the {what} elsewhere")
