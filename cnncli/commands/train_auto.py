"""The automatic choices `train` makes for a colour photo folder, each only when its option was not typed.

A colour photo folder: training images whose headers say colour (any one of up to 200 sampled; --color rgb
counts, --color gray never) with a median shorter side of at least PHOTO_MIN_SIDE px. Measured on the photo
benchmark (README "Real photos": 240 training crops, 3 seeds), such a folder gets
- `--resize squash` (the whole image, squashed to a square) instead of `crop`;
- below SMALL_FOLDER training images, `--size 64` (not the larger auto size of train_budget.auto_size, which
  was slower and no better), `--augment photo` and no validation hold-out (`--val-split 0`): every image
  trains and every epoch runs, where a held-out fifth read 0.98-1.0 accuracy from early epochs on and early
  stopping ended runs too soon. A DATA/val/ folder is used as always.
Each choice is said in one info line and listed under "automatic" in the weight file's training summary.
Gray data (Fashion-MNIST, the quick start), colour images under PHOTO_MIN_SIDE px, and runs with --init or
--resume train exactly as before. Headers can say colour for pixels that are gray: train then decodes again
without these choices (`undone`), since the images are gray.
"""

import statistics
from dataclasses import replace

import numpy as np

from cnncli.data.images import read_size
from cnncli.errors import BadImageError

PHOTO_MIN_SIDE = 64  # as train_budget.PHOTO_MIN_SIZE, where the photo preset starts
SMALL_FOLDER = 1000  # training images (before any hold-out) below which a colour photo folder counts as small
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})  # Pillow modes


def _headers(paths, seed, limit=200):
    """(width, height, Pillow mode) of every readable path, or of a seeded sample of `limit` when more."""
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    headers = []
    for p in paths:
        try:
            headers.append(read_size(p, mode=True))
        except BadImageError:
            pass
    return headers


def photo_side(paths, color, seed):
    """The median shorter side in px of a colour photo folder with these training image paths, read from up to
    200 headers, or None when it is not one: --color gray, no colour header (and not
    --color rgb), no readable header, or a median under PHOTO_MIN_SIDE."""
    if color == "gray":
        return None
    headers = _headers(paths, seed)
    if not headers:
        return None
    colour = color == "rgb" or any(mode not in GRAY_MODES for _, _, mode in headers)
    median = statistics.median_low(min(w, h) for w, h, _ in headers)
    return median if colour and median >= PHOTO_MIN_SIDE else None


def choose(opts, given, ds, report):
    """opts with the automatic choices for a colour photo folder, listed in opts.automatic as option strings
    such as "--resize squash"; opts unchanged for any other folder. `given`: the option names typed on the command line
    (they always win); `ds`: folders.Dataset (flat layout: ds.train holds every image before the hold-out)."""
    if opts.resume or opts.init:
        return opts
    side = photo_side([p for p, _ in ds.train], opts.color, opts.seed)
    if side is None:
        return opts
    n = len(ds.train)
    small = n < SMALL_FOLDER
    what = f"a colour photo folder (median shorter side {side} px)"
    small_what = f"a small colour photo folder ({n} training images, under {SMALL_FOLDER:,})"
    changes, lines = {}, []
    if small and opts.size is None:
        changes["size"] = PHOTO_MIN_SIDE
        lines.append(f"auto size {PHOTO_MIN_SIDE} px for {small_what}: it measured better than 128 and 160 px, "
                     "in a fraction of their time; --size sets it")
    if "resize" not in given:
        changes["resize"] = "squash"
        lines.append(f"auto resize squash for {what}: the whole photo, not only its centre; --resize sets it")
    if small and "augment" not in given:
        changes["augment"] = "photo"
        lines.append(f"auto augment photo for {small_what}: random crops, flips, turns and colour against "
                     "overfitting few images; --augment sets it")
    if small and "val_split" not in given and not ds.val and opts.val_split > 0:
        changes["val_split"] = 0.0
        lines.append(f"auto validation: none held out for {small_what}, so every image trains and every epoch "
                     "runs; --val-split sets it")
    for line in lines:
        report.info(line)
    chosen = [f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
              for k, v in changes.items()]
    return replace(opts, **changes, automatic=tuple(chosen))


def undone(original, report):
    """The options to decode with again when images a colour photo folder's headers promised decoded gray
    (every pixel gray: --color auto makes them one channel): the ones typed, none automatic."""
    report.info("the images decoded gray: automatic colour photo choices dropped, decoding again")
    return original
