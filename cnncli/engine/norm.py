"""Batch normalisation (`bn`) and global average pooling (`gap`) layers.

BatchNorm follows PyTorch's conventions: in training it normalises each channel of a conv map over (N, H, W)
(each feature of a dense layer's (N, units, 1, 1) output over N) with the batch's mean and biased variance,
and moves the running estimates by momentum 0.1 towards the batch's mean and unbiased variance; outside
training it uses the running estimates. gamma and beta are `params` ("weight", "bias": trained); the running
mean and variance are `buffers` ("running_mean", "running_var": saved in weight files and checkpoints, never
touched by an optimizer). Right after a conv or dense layer, inference folds it into that layer's weights
(see `fold`).
"""

import numpy as np

from cnncli.engine.layers import Layer, _forward_kernels, _numba, _take

MOMENTUM = 0.1
EPS = 1e-5


class BatchNorm(Layer):
    """Per-channel normalisation, then gamma * x + beta; (C, H, W) in, the same shape out."""

    token = "bn"
    couples_images = True  # training statistics mix a batch's images: never split into micro-batches

    def __init__(self):
        super().__init__()
        self.buffers = {}

    @staticmethod
    def param_shapes(in_shape):
        """Shapes of every stored tensor, trained or not, for input (C, H, W): four of (C,)."""
        c = (in_shape[0],)
        return {"weight": c, "bias": c, "running_mean": c, "running_var": c}

    def init(self, in_shape, rng=None, gain=None):
        c = in_shape[0]
        self.params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
        self.buffers = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32)}

    def scale_shift(self, dtype=np.float32):
        """(scale, shift), each (C,) of dtype, with bn(x) = x * scale + shift outside training."""
        scale = self.params["weight"].astype(np.float64) / np.sqrt(self.buffers["running_var"].astype(np.float64) + EPS)
        shift = self.params["bias"] - self.buffers["running_mean"].astype(np.float64) * scale
        return scale.astype(dtype), shift.astype(dtype)

    def fold(self, params):
        """The weights of the conv or dense layer before this one ({"weight": (F, ...), "bias": (F,)}) with this
        layer's inference form folded in: weight * scale per output channel, bias * scale + shift."""
        w, b = params["weight"], params["bias"]
        scale, shift = self.scale_shift(np.float64)
        return {"weight": (w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype),
                "bias": (b * scale + shift).astype(b.dtype)}

    def forward(self, x, training=False):
        out = _take(self._fwd_slot, x.shape, x.dtype)
        if not training:
            scale, shift = self.scale_shift(x.dtype)
            _forward_kernels(x, training).channel_affine(x, scale, shift, out)
            return out
        p = self.params
        # x is kept by reference (backward recomputes the normalised values from it): no layer writes into
        # another layer's output, so it is unchanged until this layer's backward.
        self.x = x
        self.mean, var, self.invstd = _numba().bn_train_forward(x, p["weight"], p["bias"], EPS, out)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        unbiased = var * (m / (m - 1)) if m > 1 else var  # one value per channel has no spread to estimate
        for name, batch in (("running_mean", self.mean), ("running_var", unbiased)):
            buf = self.buffers[name]
            buf[...] = (1.0 - MOMENTUM) * buf + MOMENTUM * batch
        return out

    def backward(self, dy, need_dx=True):
        dx = _take(self._bwd_slot, dy.shape, dy.dtype)
        dgamma, dbeta = _numba().bn_backward(np.ascontiguousarray(dy), self.x, self.mean, self.invstd,
                                              self.params["weight"], dx)
        self.grads = {"weight": dgamma, "bias": dbeta}
        return dx


class GlobalAvgPool(Layer):
    """The mean of each channel's map: (C, H, W) -> (C, 1, 1), the shape a dense layer's output has."""

    token = "gap"

    def output_shape(self, in_shape):
        return (in_shape[0], 1, 1)

    def forward(self, x, training=False):
        out = _take(self._fwd_slot, (x.shape[0], x.shape[1], 1, 1), x.dtype)
        _forward_kernels(x, training).gap_forward(x, out)
        self.in_shape = x.shape
        return out

    def backward(self, dy, need_dx=True):
        dx = _take(self._bwd_slot, self.in_shape, dy.dtype)
        _numba().gap_backward(np.ascontiguousarray(dy), dx)
        return dx
