"""Plain-loop reference implementations ("naive twins") of the engine's kernels and layers.

Written for clarity, not speed: every output element is computed straight from its definition with
Python loops (and at most a dot product over one window), so the tests can compare the optimised
kernels against something obviously right. Shapes are NCHW; the arithmetic is done in float64 and
the result is cast back to the input's dtype.
"""

import math

import numpy as np


def out_size(size, kernel, stride, pad):
    """(W - F + 2P) / S + 1, rounded down."""
    return (size - kernel + 2 * pad) // stride + 1


def conv_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """Cross-correlation of x (N, C, H, W) with w (F, C, KH, KW) plus b (F,), zero padding -> (N, F, OH, OW)."""
    n_img, c_in, h, wd = x.shape
    f_out, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    xp = np.zeros((n_img, c_in, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    w64 = w.astype(np.float64)
    out = np.zeros((n_img, f_out, oh, ow))
    for n in range(n_img):
        for f in range(f_out):
            for y in range(oh):
                for xo in range(ow):
                    total = float(b[f])
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                total += w64[f, c, i, j] * xp[n, c, y * sh + i, xo * sw + j]
                    out[n, f, y, xo] = total
    return out.astype(x.dtype)


def conv_backward(x, w, dout, stride=(1, 1), padding=(0, 0)):
    """(dx, dw, db) of conv_forward for upstream gradient dout (N, F, OH, OW)."""
    n_img, c_in, h, wd = x.shape
    f_out, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    _, _, oh, ow = dout.shape
    xp = np.zeros((n_img, c_in, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    db = np.zeros(f_out)
    w64 = w.astype(np.float64)
    for n in range(n_img):
        for f in range(f_out):
            for y in range(oh):
                for xo in range(ow):
                    g = float(dout[n, f, y, xo])
                    db[f] += g
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                dw[f, c, i, j] += g * xp[n, c, y * sh + i, xo * sw + j]
                                dxp[n, c, y * sh + i, xo * sw + j] += g * w64[f, c, i, j]
    dx = dxp[:, :, ph:ph + h, pw:pw + wd]
    return dx.astype(x.dtype), dw.astype(x.dtype), db.astype(x.dtype)


def maxpool_forward(x, size, stride, padding=(0, 0)):
    """Window maxima (N, C, OH, OW) and flat argmax y * W + x; padding never wins; the first maximum wins ties."""
    n_img, c_in, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    out = np.zeros((n_img, c_in, oh, ow), x.dtype)
    arg = np.zeros((n_img, c_in, oh, ow), np.int64)
    for n in range(n_img):
        for c in range(c_in):
            for y in range(oh):
                for xo in range(ow):
                    best, where = None, None
                    for i in range(kh):
                        for j in range(kw):
                            r, col = y * sh + i - ph, xo * sw + j - pw
                            if 0 <= r < h and 0 <= col < wd:
                                v = x[n, c, r, col]
                                if best is None or v > best:  # strictly greater: the first maximum stays
                                    best, where = v, r * wd + col
                    out[n, c, y, xo] = best
                    arg[n, c, y, xo] = where
    return out, arg


def maxpool_backward(dout, x, size, stride, padding=(0, 0)):
    """dx (N, C, H, W): each window's upstream gradient added at the position of its (first) maximum."""
    _, arg = maxpool_forward(x, size, stride, padding)
    n_img, c_in, h, wd = x.shape
    dx = np.zeros(x.shape)
    for n in range(n_img):
        for c in range(c_in):
            for y in range(dout.shape[2]):
                for xo in range(dout.shape[3]):
                    where = int(arg[n, c, y, xo])
                    dx[n, c, where // wd, where % wd] += dout[n, c, y, xo]
    return dx.astype(x.dtype)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


_F = {"relu": lambda v: max(v, 0.0), "tanh": math.tanh, "sigmoid": _sigmoid}
# Derivatives written in terms of the input (not the output, as the kernels do), so the twin is independent.
_DF = {
    "relu": lambda v: 1.0 if v > 0 else 0.0,
    "tanh": lambda v: 1.0 - math.tanh(v) ** 2,
    "sigmoid": lambda v: _sigmoid(v) * (1.0 - _sigmoid(v)),
}


def activation_forward(kind, x):
    """f(x) element by element for kind in relu | tanh | sigmoid."""
    flat = [_F[kind](float(v)) for v in x.reshape(-1)]
    return np.array(flat).reshape(x.shape).astype(x.dtype)


def activation_backward(kind, x, dy):
    """dy * f'(x) element by element (x is the activation's input)."""
    flat = [_DF[kind](float(v)) * float(g) for v, g in zip(x.reshape(-1), dy.reshape(-1))]
    return np.array(flat).reshape(x.shape).astype(x.dtype)


def dense_forward(x, w, b):
    """x (N, ...) flattened to (N, D); w (U, D), b (U,) -> (N, U)."""
    x2 = x.reshape(x.shape[0], -1)
    out = np.zeros((x2.shape[0], w.shape[0]))
    for n in range(x2.shape[0]):
        for u in range(w.shape[0]):
            out[n, u] = b[u] + sum(float(w[u, d]) * float(x2[n, d]) for d in range(x2.shape[1]))
    return out


def dense_backward(x, w, dout):
    """(dx shaped like x, dw (U, D), db (U,)) for upstream dout (N, U)."""
    x2 = x.reshape(x.shape[0], -1)
    dx = np.zeros(x2.shape)
    dw = np.zeros(w.shape)
    db = np.zeros(w.shape[0])
    for n in range(x2.shape[0]):
        for u in range(w.shape[0]):
            g = float(dout[n, u])
            db[u] += g
            for d in range(x2.shape[1]):
                dw[u, d] += g * x2[n, d]
                dx[n, d] += g * w[u, d]
    return dx.reshape(x.shape), dw, db


def softmax_cross_entropy(logits, labels, class_weights=None):
    """Weighted mean of -log softmax(logits)[label] (weights default to 1) and its gradient, row by row."""
    n, k = logits.shape
    weights = [1.0] * n if class_weights is None else [float(class_weights[lbl]) for lbl in labels]
    total_w = sum(weights)
    loss = 0.0
    grad = np.zeros((n, k))
    for r in range(n):
        row = [float(v) for v in logits[r]]
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        loss += weights[r] * (lse - row[labels[r]])
        for c in range(k):
            p = math.exp(row[c] - lse)
            grad[r, c] = weights[r] / total_w * (p - (1.0 if c == labels[r] else 0.0))
    return loss / total_w, grad


def bn_train_forward(x, gamma, beta, eps=1e-5):
    """Batch norm with batch statistics, from the definition: (out, mean (C,), biased var (C,)) in float64 sums."""
    n_img, c_in, h, w = x.shape
    m = n_img * h * w
    out = np.zeros(x.shape)
    mean, var = np.zeros(c_in), np.zeros(c_in)
    for c in range(c_in):
        values = [float(x[n, c, i, j]) for n in range(n_img) for i in range(h) for j in range(w)]
        mean[c] = sum(values) / m
        var[c] = sum((v - mean[c]) ** 2 for v in values) / m
        for n in range(n_img):
            for i in range(h):
                for j in range(w):
                    out[n, c, i, j] = float(gamma[c]) * (float(x[n, c, i, j]) - mean[c]) / math.sqrt(var[c] + eps) \
                        + float(beta[c])
    return out.astype(x.dtype), mean, var


def bn_backward(x, gamma, dout, eps=1e-5):
    """(dx, dgamma, dbeta) of bn_train_forward: the chain rule through xhat, the batch mean and the variance."""
    n_img, c_in, h, w = x.shape
    m = n_img * h * w
    dx, dgamma, dbeta = np.zeros(x.shape), np.zeros(c_in), np.zeros(c_in)
    for c in range(c_in):
        xs = x[:, c].astype(np.float64)
        g = dout[:, c].astype(np.float64)
        mu = xs.sum() / m
        var = ((xs - mu) ** 2).sum() / m
        inv = 1.0 / math.sqrt(var + eps)
        xhat = (xs - mu) * inv
        dbeta[c] = g.sum()
        dgamma[c] = (g * xhat).sum()
        dxhat = g * float(gamma[c])
        dvar = (dxhat * (xs - mu)).sum() * -0.5 * inv ** 3
        dmu = -dxhat.sum() * inv + dvar * (-2.0 * (xs - mu)).sum() / m
        dx[:, c] = dxhat * inv + dvar * 2.0 * (xs - mu) / m + dmu / m
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def gap_forward(x):
    """The mean of each (H, W) map: (N, C, H, W) -> (N, C, 1, 1)."""
    n_img, c_in, h, w = x.shape
    out = np.zeros((n_img, c_in, 1, 1))
    for n in range(n_img):
        for c in range(c_in):
            out[n, c, 0, 0] = sum(float(x[n, c, i, j]) for i in range(h) for j in range(w)) / (h * w)
    return out.astype(x.dtype)


def gap_backward(dout, x_shape):
    """dx of gap_forward: each cell of map (n, c) gets dout[n, c] / (H * W)."""
    n_img, c_in, h, w = x_shape
    dx = np.zeros(x_shape)
    for n in range(n_img):
        for c in range(c_in):
            for i in range(h):
                for j in range(w):
                    dx[n, c, i, j] = float(dout[n, c, 0, 0]) / (h * w)
    return dx.astype(dout.dtype)
