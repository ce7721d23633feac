"""The `show` job: a model's first-layer filters and, for an image, its feature maps and a saliency map,
as one picture, a folder of pictures, or JSON numbers. Numpy only: numba is never loaded for one image."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.commands import outputs
from cnncli.errors import NoInputError, UsageError
from cnncli.store import modelfile

FOLDER_FILES = {"filters": "filters.png", "maps": "feature_maps.png", "saliency": "saliency.png"}


@dataclass
class ShowOptions:
    model: str
    image: str | None = None
    output: str | None = None  # a picture file (.png, .svg, .pdf) or a folder; None: show.png, or none with json
    json: bool = False
    max_maps: int = 16
    overwrite: bool = False


def _targets(opts):
    """{what: path} to write, checked by the shared output rules before anything is read."""
    out = opts.output if opts.output is not None else (None if opts.json else "show.png")
    if out is None:
        return {}
    if not Path(out).is_dir() and Path(out).suffix:  # a file name: its suffix must name a picture format
        outputs.check_plot_suffix(out)
        targets = {"picture": Path(out)}
    else:  # a folder (existing, or a name without a suffix)
        folder = Path(out)
        targets = {f"{part} picture": folder / name for part, name in FOLDER_FILES.items()}
    if opts.image is not None:  # before making any folder: nothing beside the image, maybe a class folder
        outputs.check_not_beside(targets, opts.image)
    if len(targets) > 1 and not folder.exists() and folder.parent.is_dir():
        folder.mkdir()  # the one thing made before the checks: an empty folder, so its files can be checked
    return targets


def _json_doc(opts, clf, inspect, conv, tr, sal, maps):
    def nums(a):
        return np.round(np.asarray(a, np.float64), 6).tolist()

    doc = {"model": str(opts.model), "arch": clf.model.spec, "classes": clf.classes}
    if conv is not None:
        w = clf.model.layers[conv].params["weight"]
        doc["filters"] = {"layer": conv + 1, "token": clf.model.layers[conv].token, "shape": list(w.shape),
                          "weights": nums(w)}
    if tr is not None:
        doc["image"] = str(opts.image)
        doc["probabilities"] = {c: round(float(p), 6) for c, p in zip(clf.classes, tr.proba)}
        doc["feature_maps"] = [{"layer": i + 1, "token": t, "shape": list(m.shape), "values": nums(m)}
                               for i, t, m in maps]
        if sal is not None:
            doc["saliency"] = {"method": sal["method"], "layer": None if sal["layer"] is None else sal["layer"] + 1,
                               "class": clf.classes[sal["class"]], "heat": nums(sal["heat"])}
    return doc


def run(opts, write=None, warn=None):
    """Draw and/or print; returns [paths written]. ``write(text)`` receives the JSON document, ``warn(text)``
    warnings."""
    from cnncli.data.images import decode
    from cnncli.report import inspect

    if opts.image is not None and not os.path.exists(opts.image):
        raise NoInputError(f"{opts.image}: no such file")
    targets = _targets(opts)
    outputs.check_outputs(targets, opts.overwrite)
    if targets:
        outputs.check_not_inputs(targets, [opts.model] + ([opts.image] if opts.image else []))
    clf = modelfile.load(opts.model)
    model = clf.model
    conv = inspect.first_conv(model)
    tr = sal = u8 = None
    maps = []
    if opts.image is not None:
        u8 = decode(opts.image, clf.size, clf.channels, clf.resize)
        tr = inspect.trace(model, clf.to_float(u8[None]))
        try:
            sal = inspect.saliency(model, tr)
        except ValueError as exc:  # a layer kind without a numpy gradient here: show the rest
            sal = None
            if warn is not None:
                warn(f"no saliency map: {exc}")
        maps = [(i, model.layers[i].token, tr.outputs[i][0]) for i in inspect.shown_layers(model)]
    elif conv is None:
        raise UsageError(f"{opts.model}: this model has no convolution, so no filters to show; give an image")
    if opts.json:
        write(json.dumps(_json_doc(opts, clf, inspect, conv, tr, sal, maps)) + "\n")
    if not targets:
        return []
    return _draw(targets, clf, conv, u8, tr, sal, maps, opts.max_maps)


def _draw(targets, clf, conv, u8, tr, sal, maps, max_maps):
    from cnncli.report import charts, inspect_chart as ic

    parts = {}
    if conv is not None:
        w = clf.model.layers[conv].params["weight"]
        parts["filters"] = (ic.filters_height(w), lambda sub: ic.draw_filters(sub, w, clf.model.layers[conv].token))
    if sal is not None:
        k = sal["class"]
        parts["saliency"] = (ic.SALIENCY_HEIGHT, lambda sub: ic.draw_saliency(
            sub, u8, sal["heat"], sal["method"], clf.classes[k], float(tr.proba[k])))
    if maps:
        parts["maps"] = (ic.maps_height(len(maps), max_maps), lambda sub: ic.draw_maps(sub, maps, max_maps))
    if not parts:
        raise UsageError(f"{clf.model.spec}: nothing to show (no convolution, no map, no saliency)")
    if "picture" in targets:
        charts.save(ic.combined(list(parts.values())), targets["picture"])
        return [str(targets["picture"])]
    written = []
    for part, (height, draw) in parts.items():
        charts.save(ic.combined([(height, draw)]), targets[f"{part} picture"])
        written.append(str(targets[f"{part} picture"]))
    return written
