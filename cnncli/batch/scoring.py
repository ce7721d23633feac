"""Scoring one batch of image paths: decode, one model call, probabilities and OOD scores.

The single definition of how predict turns a batch of paths into numbers, used by predict's own process and by
Dask workers (cnncli/batch/dask_worker.py) alike, so that a cluster run prints byte for byte what a local run
prints: the same images are stacked into the same model calls (the kernels' results depend, in the last bits,
on which images share a call). No typer, rich or dask here; numpy and the model load only when scoring.
"""


_CACHES = {}  # (folder, cap) -> this process's DecodeCache: predict's decode worker processes open their own


def open_cache(where):
    """The decode cache (store/decode_cache.DecodeCache) for where = (folder, cap), one object per process."""
    if where not in _CACHES:
        from cnncli.store.decode_cache import DecodeCache

        _CACHES[where] = DecodeCache(*where)
    return _CACHES[where]


def decode_one(path, size, channels, resize="crop", decoder=None):
    """One image as uint8 (C, size, size), or the reason (str) it cannot be used, as predict's error row says it.
    decoder: images.decode's stand-in (a decode cache's decode), or None for images.decode."""
    from cnncli.data.images import decode
    from cnncli.errors import BadImageError

    try:
        return (decoder or decode)(path, size, channels, resize)
    except BadImageError as exc:
        msg = str(exc)
        return msg.removeprefix(f"{path}: ")
    except (OSError, ValueError) as exc:  # e.g. a name the OS cannot represent
        return f"cannot read file ({exc})"


def decode_many(paths, size, channels, resize="crop"):
    """Decode a chunk of paths: each entry an array (C, size, size) uint8 or an error message."""
    return [decode_one(p, size, channels, resize) for p in paths]


def decode_cached(paths, size, channels, resize, where):
    """decode_many through the decode cache at where = (folder, cap) (None: no cache), for predict's batch runs.
    Returns (entries, written): written is True once this process has added an entry to the cache, so that
    the parent trims it to its cap at the end of the run."""
    if where is None:
        return decode_many(paths, size, channels, resize), False
    cache = open_cache(where)
    return [decode_one(p, size, channels, resize, cache.decode) for p in paths], cache.written > 0


def score_decoded(clf, decoded):
    """Run the model once over the decoded images of a batch.

    decoded: one entry per input, a uint8 array (C, H, W) for an image, anything else for an input that is not
    scored (an error message, a ledger hit). Returns (good, proba, ood): the indices of the arrays in decoded,
    their probabilities float32 (G, K) and OOD energy scores float64 (G,); proba and ood are None when G = 0.
    """
    import numpy as np

    from cnncli.report.ood import energy

    good = [i for i, r in enumerate(decoded) if isinstance(r, np.ndarray)]
    if not good:
        return good, None, None
    logits = clf.logits(np.stack([decoded[i] for i in good]))
    return good, clf.proba_from_logits(logits), energy(logits)


def _decoded(clf, paths):
    from cnncli.data.images import bombs_are_errors

    with bombs_are_errors():
        decoded = decode_many(paths, clf.size, clf.channels, clf.resize)
    return decoded, [r if isinstance(r, str) else None for r in decoded]


def score_paths(clf, paths):
    """Decode paths with clf's input rules and score them (score_decoded) in this process.

    Returns (reasons, good, proba, ood): reasons[i] is the error message of paths[i] or None; good, proba, ood
    as score_decoded gives them over the paths.
    """
    decoded, reasons = _decoded(clf, paths)
    return (reasons, *score_decoded(clf, decoded))


def logits_paths(clf, paths):
    """eval's unit of work: decode one chunk of paths (eval_chunk of them) and run the model once over the
    images that decoded. Returns (reasons, logits float32 (G, K)): reasons[i] is the error message of paths[i]
    or None, logits are those of the G paths whose reason is None, in order."""
    import numpy as np

    decoded, reasons = _decoded(clf, paths)
    good = [r for r in decoded if isinstance(r, np.ndarray)]
    return reasons, clf.logits(np.stack(good)) if good else np.zeros((0, len(clf.classes)), np.float32)


def eval_chunk(clf):
    """Inputs per model call in eval: one inference pass (Model.images_per_pass), counted in input files, so
    that a chunk's images are the same whether it is scored here or on a Dask worker, bad files or not."""
    return clf.model.images_per_pass()


def logits_in_chunks(clf, x, kept):
    """eval's logits for images already decoded here, grouped as logits_paths groups them on workers.

    x: uint8 (G, C, H, W), the images that decoded, in input order; kept: one bool per input file (N,), True
    for those in x. Returns float32 (G, K): one model call per eval_chunk(clf) input files.
    """
    import numpy as np

    step, out, start = eval_chunk(clf), [], 0
    for k in range(0, len(kept), step):
        n = int(sum(kept[k:k + step]))
        if n:
            out.append(clf.logits(x[start:start + n]))
        start += n
    return np.concatenate(out) if out else np.zeros((0, len(clf.classes)), np.float32)
