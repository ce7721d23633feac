"""Batch normalisation and global average pooling on NCHW arrays, forward and backward.

Batch norm reduces over (N, H, W) for each channel; a dense layer's output (N, units, 1, 1) is the same thing
per feature. Its training pass is split into stages so that a batch can also run in micro-batches with the
statistics of the whole batch (cnncli.engine.norm): sums over the batch (`bn_sums`, `bn_grad_sums`), then a
pass that uses them (`bn_normalize`, `bn_grad_apply`).

Every sum has a fixed order that depends only on the image index: each compiled core works on a range [lo, hi)
of (image, channel) maps, sums one map in float64 with the vector accumulators of cnncli.config.SUM_JIT (an order
fixed by the compiled code), and the maps' sums are then added into the per-channel totals one image after the
other.
So which thread ran a map, how many threads there are and how the batch was split into micro-batches never
change a result: the totals of images 0..N-1 are added in the same order whether they arrive in one call or
in several.
"""


import numpy as np
from numba import njit

from cnncli.config import JIT, SUM_JIT
from cnncli.engine.kernels.checks import _expect, _input
from cnncli.engine.kernels.threads import _run

@njit(**SUM_JIT)
def _sums_chunk(x, shift, s1, s2, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        v, sh = x[nc // C, nc % C].reshape(HW), shift[nc % C]
        t1 = 0.0
        t2 = 0.0
        for q in range(HW):
            d = np.float64(v[q]) - sh
            t1 += d
            t2 += d * d
        s1[nc // C, nc % C], s2[nc // C, nc % C] = t1, t2


@njit(**JIT)
def _add_rows(parts, total):
    """total[c] += parts[0, c], then parts[1, c], ...: images in order."""
    for n in range(parts.shape[0]):
        for c in range(parts.shape[1]):
            total[c] += parts[n, c]


def bn_sums(x, shift, s1, s2):
    """Add, per channel, the sum of (x - shift) and of (x - shift)^2 over x's images and maps to s1, s2.

    x (N, C, H, W) float32 or float64; shift, s1, s2 (C,) float64 (s1, s2 updated in place). Shifting by a
    value near the channel's mean keeps the variance s2/m - (s1/m)^2 accurate in one pass over x.
    """
    _input("x", x, 4)
    n, c = x.shape[:2]
    for what, a in (("shift", shift), ("s1", s1), ("s2", s2)):
        _expect(what, a, (c,), np.float64)
    p1, p2 = np.empty((n, c)), np.empty((n, c))
    _run(_sums_chunk, n * c, x, shift, p1, p2)
    _add_rows(p1, s1)
    _add_rows(p2, s2)


@njit(**JIT)
def _normalize_chunk(x, mean, invstd, gamma, beta, out, relu, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        c = nc % C
        v, o = x[nc // C, c].reshape(HW), out[nc // C, c].reshape(HW)
        mu, inv, g, b = mean[c], invstd[c], gamma[c], beta[c]
        if relu:
            for q in range(HW):
                t = ((v[q] - mu) * inv) * g + b
                o[q] = t if t > 0 else 0  # as the ReLU kernel: NaN becomes 0
        else:
            for q in range(HW):
                o[q] = ((v[q] - mu) * inv) * g + b


def bn_normalize(x, mean, invstd, gamma, beta, out, relu=False):
    """out = gamma * xhat + beta with xhat = (x - mean) * invstd, per channel; relu=True: then max(., 0).

    x and out (N, C, H, W) float32 or float64; mean, invstd, gamma, beta (C,) in x's dtype.
    """
    _input("x", x, 4)
    c = x.shape[1]
    for what, a in (("mean", mean), ("invstd", invstd), ("gamma", gamma), ("beta", beta)):
        _expect(what, a, (c,), x.dtype)
    _expect("out", out, x.shape, x.dtype)
    _run(_normalize_chunk, x.shape[0] * c, x, mean, invstd, gamma, beta, out, bool(relu))


@njit(**SUM_JIT)
def _grad_sums_chunk(dy, x, mean, invstd, s1, s2, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        c = nc % C
        v, g = x[nc // C, c].reshape(HW), dy[nc // C, c].reshape(HW)
        mu, inv = mean[c], invstd[c]
        t1 = 0.0
        t2 = 0.0
        for q in range(HW):
            d = np.float64(g[q])
            t1 += d
            t2 += d * np.float64((v[q] - mu) * inv)
        s1[nc // C, c], s2[nc // C, c] = t1, t2


def bn_grad_sums(dy, x, mean, invstd, sdy, sdyx):
    """Add, per channel, the sum of dy and of dy * xhat over the images and maps to sdy, sdyx.

    dy, x (N, C, H, W) in one dtype; xhat = (x - mean) * invstd as bn_normalize computes it; mean, invstd (C,)
    in x's dtype; sdy, sdyx (C,) float64, updated in place. Their totals over the batch are the gradients of
    beta and gamma.
    """
    _input("dy", dy, 4)
    n, c = dy.shape[:2]
    _expect("x", x, dy.shape, dy.dtype)
    for what, a, dtype in (("mean", mean, dy.dtype), ("invstd", invstd, dy.dtype), ("sdy", sdy, np.float64),
                           ("sdyx", sdyx, np.float64)):
        _expect(what, a, (c,), dtype)
    p1, p2 = np.empty((n, c)), np.empty((n, c))
    _run(_grad_sums_chunk, n * c, dy, x, mean, invstd, p1, p2)
    _add_rows(p1, sdy)
    _add_rows(p2, sdyx)


@njit(**JIT)
def _grad_apply_chunk(dy, x, mean, invstd, a, b, k, dx, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        c = nc % C
        v, g, d = x[nc // C, c].reshape(HW), dy[nc // C, c].reshape(HW), dx[nc // C, c].reshape(HW)
        mu, inv, ac, bc, kc = mean[c], invstd[c], a[c], b[c], k[c]
        for q in range(HW):
            d[q] = ac * g[q] - bc - kc * ((v[q] - mu) * inv)


def bn_grad_apply(dy, x, mean, invstd, gamma, sdy, sdyx, m, dx):
    """dx of batch norm with batch statistics, given the batch's totals sdy, sdyx (C,) float64 of m values each:
    dx = gamma * invstd * (dy - sdy / m - xhat * sdyx / m).

    dy, x, dx (N, C, H, W) in one dtype; mean, invstd, gamma (C,) in that dtype. dx is written.
    """
    _input("dy", dy, 4)
    c = dy.shape[1]
    for what, a in (("x", x), ("dx", dx)):
        _expect(what, a, dy.shape, dy.dtype)
    for what, a in (("mean", mean), ("invstd", invstd), ("gamma", gamma)):
        _expect(what, a, (c,), dy.dtype)
    for what, a in (("sdy", sdy), ("sdyx", sdyx)):
        _expect(what, a, (c,), np.float64)
    scale = gamma.astype(np.float64) * invstd
    _run(_grad_apply_chunk, dy.shape[0] * c, dy, x, mean, invstd, scale.astype(dy.dtype),
         (scale * sdy / m).astype(dy.dtype), (scale * sdyx / m).astype(dy.dtype), dx)


def bn_statistics(s1, s2, shift, m, eps):
    """(mean, var, invstd), each (C,) float64, from the totals of bn_sums over m values per channel: the mean, the
    biased variance (divided by m) and 1 / sqrt(var + eps)."""
    d = s1 / m
    var = np.maximum(s2 / m - d * d, 0.0)
    return shift + d, var, 1.0 / np.sqrt(var + eps)


def bn_train_forward(x, gamma, beta, eps, out, relu=False):
    """Batch norm with the batch's statistics: out = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + eps);
    relu=True: then max(., 0) in the same pass.

    x (N, C, H, W) float32 or float64; gamma, beta (C,) like x; out (N, C, H, W) like x is written.
    Returns (mean, var, invstd), each (C,) float64: the per-channel mean over (N, H, W), the biased variance
    (divided by N*H*W) and 1 / sqrt(var + eps). The sums are shifted by image 0's mean per channel.
    """
    _input("x", x, 4)
    c = x.shape[1]
    for what, a in (("gamma", gamma), ("beta", beta)):
        _expect(what, a, (c,), x.dtype)
    shift = bn_shift(x)
    s1, s2 = np.zeros(c), np.zeros(c)
    bn_sums(x, shift, s1, s2)
    mean, var, invstd = bn_statistics(s1, s2, shift, x.shape[0] * x.shape[2] * x.shape[3], eps)
    bn_normalize(x, mean.astype(x.dtype), invstd.astype(x.dtype), gamma, beta, out, relu)
    return mean, var, invstd


def bn_shift(x):
    """(C,) float64: the mean of image 0's map per channel, the shift bn_sums uses (known from the first
    micro-batch on)."""
    return x[0].reshape(x.shape[1], -1).mean(axis=1, dtype=np.float64)


def bn_backward(dy, x, mean, invstd, gamma, dx):
    """Gradients of bn_train_forward for upstream dy (N, C, H, W); the batch statistics depend on x too.

    x (N, C, H, W) is the forward pass's input, unchanged; mean and invstd (C,) float64 its results; gamma
    (C,) like dy. Writes dx (like dy); returns (dgamma, dbeta), each (C,) in dy's dtype.
    """
    _input("dy", dy, 4)
    c = dy.shape[1]
    for what, a in (("mean", mean), ("invstd", invstd)):
        _expect(what, a, (c,), np.float64)
    mu, inv = mean.astype(dy.dtype), invstd.astype(dy.dtype)
    sdy, sdyx = np.zeros(c), np.zeros(c)
    bn_grad_sums(dy, x, mu, inv, sdy, sdyx)
    bn_grad_apply(dy, x, mu, inv, gamma, sdy, sdyx, dy.shape[0] * dy.shape[2] * dy.shape[3], dx)
    return sdyx.astype(dy.dtype), sdy.astype(dy.dtype)


@njit(**JIT)
def _channel_affine_chunk(x, scale, shift, out, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        v, o = x[nc // C, nc % C].reshape(HW), out[nc // C, nc % C].reshape(HW)
        a, b = scale[nc % C], shift[nc % C]
        for q in range(HW):
            o[q] = v[q] * a + b


def channel_affine(x, scale, shift, out):
    """out = x * scale[c] + shift[c] for x (N, C, H, W); scale, shift (C,) and out like x.

    Batch norm outside training: scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale.
    """
    _input("x", x, 4)
    for what, a in (("scale", scale), ("shift", shift)):
        _expect(what, a, (x.shape[1],), x.dtype)
    _expect("out", out, x.shape, x.dtype)
    _run(_channel_affine_chunk, x.shape[0] * x.shape[1], x, scale, shift, out)


@njit(**SUM_JIT)
def _gap_forward_chunk(x, out, lo, hi):
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    for nc in range(lo, hi):
        v = x[nc // C, nc % C].reshape(HW)
        s = 0.0
        for q in range(HW):
            s += np.float64(v[q])
        out[nc // C, nc % C, 0, 0] = s / HW


def gap_forward(x, out):
    """Global average pooling: out (N, C, 1, 1) = the mean of each (H, W) map of x (N, C, H, W), same dtype."""
    _input("x", x, 4)
    _expect("out", out, (x.shape[0], x.shape[1], 1, 1), x.dtype)
    _run(_gap_forward_chunk, x.shape[0] * x.shape[1], x, out)


@njit(**JIT)
def _gap_backward_chunk(dy, dx, lo, hi):
    C, HW = dx.shape[1], dx.shape[2] * dx.shape[3]
    for nc in range(lo, hi):
        dx[nc // C, nc % C].reshape(HW)[:] = dy[nc // C, nc % C, 0, 0] / HW


def gap_backward(dy, dx):
    """Overwrite dx (N, C, H, W) with dy (N, C, 1, 1) spread evenly over each map (each cell gets dy / (H*W))."""
    _input("dx", dx, 4)
    _expect("dy", dy, (dx.shape[0], dx.shape[1], 1, 1), dx.dtype)
    _run(_gap_backward_chunk, dx.shape[0] * dx.shape[1], dy, dx)
