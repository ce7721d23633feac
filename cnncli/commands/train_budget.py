"""What a training run may spend outside the network: the on-disk decode cache it reads and writes
(store/decode_cache.py), and the memory a training step's activations may take (CNNCLI_TRAIN_MEMORY), which
decides whether a batch runs in several passes (Model.loss_and_grads's micro-batches)."""

import os
from dataclasses import replace

from cnncli.engine.model import TRAIN_BYTES_PER_VALUE, plan
from cnncli.errors import SpecError, UsageError, one_line
from cnncli.store import decode_cache

TRAIN_MEMORY_DEFAULT = 2**30  # bytes of activations a training step may hold (CNNCLI_TRAIN_MEMORY)
PHOTO_MIN_SIZE = 64  # train without --arch picks the photo preset for RGB input at least this many pixels a side


def default_preset(channels, size, num_classes, batch_size, memory_bytes):
    """The preset `train` uses when --arch is not given: "photo" for RGB input (channels 3) of size >= 64 px,
    where it measured better than "default" (README, "Architecture specs"), when a whole training batch of
    batch_size fits memory_bytes (TRAIN_BYTES_PER_VALUE per activation value: batch norm's statistics need the
    whole batch in one pass, never micro-batches); "default" otherwise."""
    if channels != 3 or size < PHOTO_MIN_SIZE:
        return "default"
    values = plan("photo", (channels, size, size), num_classes).activations * batch_size
    return "photo" if values * TRAIN_BYTES_PER_VALUE <= memory_bytes else "default"


def pick_arch(opts, given, channels, size, n_classes, budget, report):
    """opts with arch default_preset(...) when --arch was not given (kept in the checkpoint's options, so
    --resume trains on with the same preset); an info line says when that is the photo preset."""
    if "arch" in given or opts.arch != "default":
        return opts
    arch = default_preset(channels, size, n_classes, opts.batch_size, budget)
    if arch == "photo":
        report.info(f"architecture: the photo preset (RGB input of {size} px, a batch of {opts.batch_size} fits "
                    "CNNCLI_TRAIN_MEMORY); --arch default for the other")
    return replace(opts, arch=arch)


def open_cache(off, report):
    """The decode cache (None with --no-cache, off=True, or CNNCLI_CACHE_SIZE=0), its location or why it is
    off said in one info line. UsageError for a bad CNNCLI_CACHE_SIZE."""
    try:
        cache, where = decode_cache.open_cache(not off)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report.info(one_line(where))
    return cache


def train_memory():
    """CNNCLI_TRAIN_MEMORY in bytes (default 1 GiB). UsageError naming the variable for a bad value."""
    try:
        budget = decode_cache.parse_bytes(os.environ.get("CNNCLI_TRAIN_MEMORY"), "CNNCLI_TRAIN_MEMORY",
                                          TRAIN_MEMORY_DEFAULT)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if budget == 0:  # unlike the cache size, 0 cannot mean "off": a step needs some memory
        raise UsageError("CNNCLI_TRAIN_MEMORY: must be more than 0 bytes")
    return budget


def micro_batch(model, budget, batch_size):
    """Images per forward/backward pass for a batch of batch_size, or None when the whole batch's activations
    fit the budget, or when a layer declares that it couples a batch's images (batch norm does not: in passes it
    still gets the whole batch's statistics, see cnncli.engine.passes)."""
    micro = model.micro_batch_size(budget)
    return None if micro >= batch_size or model.couples_images() else micro


def describe(micro, budget):
    """The end of train's "training ..." info line: how a batch is split, or nothing."""
    if micro is None:
        return ""
    return (f"; each batch in passes of at most {micro} images, keeping activations under {budget / 2**20:,.4g} MiB "
            "(CNNCLI_TRAIN_MEMORY)")


# Auto size for photo folders (README "Images"): above 64 px in steps of 32, up to 224, while the planned training
# stays under AUTO_SIZE_SECONDS at TRAIN_MACS_PER_SECOND and the decoded images under AUTO_STORE_BYTES.
AUTO_SIZE_BASE, AUTO_SIZE_STEP, AUTO_SIZE_MAX = 64, 32, 224
AUTO_SIZE_SECONDS = 300
# A training step costs about 3x the forward multiply-adds. benchmarks/run.py measured the default preset at
# 128 px training at 72 img/s on 2 idle cores: 28 GMAC/s. A fixed, lower figure: the choice must not depend on
# the machine's load or on --threads (the same command gives the same weights).
TRAIN_MACS_PER_SECOND = 20e9
AUTO_STORE_BYTES = 2**30


def auto_size(median, arch, n_classes, n_train, n_images, epochs):
    """(input size, the reason in words or None) for a folder whose median shorter side is `median` px
    (folders.choose_size, capped at AUTO_SIZE_MAX): the median itself up to AUTO_SIZE_BASE, as always; above
    it, the largest multiple of AUTO_SIZE_STEP up to the median whose estimated training time for n_train
    images x epochs stays under AUTO_SIZE_SECONDS and whose n_images decoded as RGB take at most
    AUTO_STORE_BYTES. Uses only the spec's arithmetic (model.plan), never the clock."""
    if median <= AUTO_SIZE_BASE:
        return median, None
    # folders.choose_size caps the median at AUTO_SIZE_MAX: a median at the cap may stand for any larger one.
    chosen, limit = AUTO_SIZE_BASE, (f"the median shorter side is {median} px" if median < AUTO_SIZE_MAX else
                                     f"{AUTO_SIZE_MAX} px is the largest automatic size")
    for size in range(AUTO_SIZE_BASE + AUTO_SIZE_STEP, min(median, AUTO_SIZE_MAX) + 1, AUTO_SIZE_STEP):
        try:
            macs = plan(arch, (3, size, size), n_classes).macs
        except SpecError:
            limit = f"--arch does not fit {size} px"
            break
        seconds = 3 * macs * n_train * epochs / TRAIN_MACS_PER_SECOND
        if seconds > AUTO_SIZE_SECONDS:
            limit = (f"{size} px would need about {seconds / 60:.0f} min for {epochs} epochs of {n_train} images "
                     f"(limit {AUTO_SIZE_SECONDS // 60} min)")
            break
        if n_images * 3 * size * size > AUTO_STORE_BYTES:
            limit = f"{n_images} images at {size} px would take more than {AUTO_STORE_BYTES >> 20} MiB"
            break
        chosen = size
    return chosen, f"auto size {chosen} px for a photo folder: {limit}; --size sets it"
