"""Batch normalisation and global average pooling on NCHW arrays, forward and backward.

Batch norm reduces over (N, H, W) for each channel; a dense layer's output (N, units, 1, 1) is the same thing
per feature. Each compiled core is serial over a range [lo, hi) of channels (or of image-channel pairs), and
every sum over one channel runs inside one chunk in a fixed order (images, rows, columns) with a float64
accumulator: which thread runs a chunk, and how many threads there are, never changes a result.
"""

import math

import numpy as np
from numba import njit

from cnncli.config import JIT
from cnncli.engine.kernels.checks import _expect, _input
from cnncli.engine.kernels.threads import _run


@njit(**JIT)
def _bn_train_chunk(x, gamma, beta, eps, out, mean, var, invstd, lo, hi):
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    m = N * H * W
    for c in range(lo, hi):
        s = 0.0
        for n in range(N):
            img = x[n, c]
            for i in range(H):
                row = img[i]
                for j in range(W):
                    s += row[j]
        mu = s / m
        ss = 0.0  # two passes: the sum of squared deviations, not E[x^2] - mu^2 (cancellation)
        for n in range(N):
            img = x[n, c]
            for i in range(H):
                row = img[i]
                for j in range(W):
                    d = row[j] - mu
                    ss += d * d
        v = ss / m
        inv = 1.0 / math.sqrt(v + eps)
        mean[c], var[c], invstd[c] = mu, v, inv
        g, b = gamma[c], beta[c]
        for n in range(N):
            for i in range(H):
                src, dst = x[n, c, i], out[n, c, i]
                for j in range(W):
                    dst[j] = g * ((src[j] - mu) * inv) + b


def bn_train_forward(x, gamma, beta, eps, out):
    """Batch norm with the batch's statistics: out = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + eps).

    x (N, C, H, W) float32 or float64; gamma, beta (C,) like x; out (N, C, H, W) like x is written.
    Returns (mean, var, invstd), each (C,) float64: the per-channel mean over (N, H, W), the biased variance
    (divided by N*H*W) and 1 / sqrt(var + eps). xhat is not kept: bn_backward recomputes it from x, so
    training holds no extra map per bn layer.
    """
    _input("x", x, 4)
    c = x.shape[1]
    for what, a in (("gamma", gamma), ("beta", beta)):
        _expect(what, a, (c,), x.dtype)
    _expect("out", out, x.shape, x.dtype)
    mean, var, invstd = np.empty(c), np.empty(c), np.empty(c)
    _run(_bn_train_chunk, c, x, gamma, beta, float(eps), out, mean, var, invstd)
    return mean, var, invstd


@njit(**JIT)
def _bn_backward_chunk(dy, x, mean, gamma, invstd, dx, dgamma, dbeta, lo, hi):
    N, H, W = dy.shape[0], dy.shape[2], dy.shape[3]
    m = N * H * W
    for c in range(lo, hi):
        mu, inv = mean[c], invstd[c]
        sdy = 0.0
        sdyx = 0.0
        for n in range(N):
            for i in range(H):
                g, src = dy[n, c, i], x[n, c, i]
                for j in range(W):
                    sdy += g[j]
                    sdyx += g[j] * ((src[j] - mu) * inv)
        dbeta[c], dgamma[c] = sdy, sdyx
        k = gamma[c] * inv / m
        for n in range(N):
            for i in range(H):
                g, src, d = dy[n, c, i], x[n, c, i], dx[n, c, i]
                for j in range(W):
                    d[j] = k * (m * g[j] - sdy - ((src[j] - mu) * inv) * sdyx)


def bn_backward(dy, x, mean, invstd, gamma, dx):
    """Gradients of bn_train_forward for upstream dy (N, C, H, W); the batch statistics depend on x too.

    x (N, C, H, W) is the forward pass's input, unchanged; mean and invstd (C,) float64 its results; gamma
    (C,) like dy. Writes dx (like dy); returns (dgamma, dbeta), each (C,) in dy's dtype.
    """
    _input("dy", dy, 4)
    c = dy.shape[1]
    _expect("x", x, dy.shape, dy.dtype)
    _expect("dx", dx, dy.shape, dy.dtype)
    _expect("gamma", gamma, (c,), dy.dtype)
    for what, a in (("mean", mean), ("invstd", invstd)):
        _expect(what, a, (c,), np.float64)
    dgamma, dbeta = np.empty(c), np.empty(c)
    _run(_bn_backward_chunk, c, dy, x, mean, gamma, invstd, dx, dgamma, dbeta)
    return dgamma.astype(dy.dtype), dbeta.astype(dy.dtype)


@njit(**JIT)
def _channel_affine_chunk(x, scale, shift, out, lo, hi):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        a, b = scale[c], shift[c]
        for i in range(H):
            src, dst = x[n, c, i], out[n, c, i]
            for j in range(W):
                dst[j] = src[j] * a + b


def channel_affine(x, scale, shift, out):
    """out = x * scale[c] + shift[c] for x (N, C, H, W); scale, shift (C,) and out like x.

    Batch norm outside training: scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale.
    """
    _input("x", x, 4)
    for what, a in (("scale", scale), ("shift", shift)):
        _expect(what, a, (x.shape[1],), x.dtype)
    _expect("out", out, x.shape, x.dtype)
    _run(_channel_affine_chunk, x.shape[0] * x.shape[1], x, scale, shift, out)


@njit(**JIT)
def _gap_forward_chunk(x, out, lo, hi):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        s = 0.0
        for i in range(H):
            row = x[n, c, i]
            for j in range(W):
                s += row[j]
        out[n, c, 0, 0] = s / (H * W)


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
