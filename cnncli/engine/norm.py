"""Batch normalisation (`bn`) and global average pooling (`gap`) layers.

BatchNorm follows PyTorch's conventions: in training it normalises each channel of a conv map over (N, H, W)
(each feature of a dense layer's (N, units, 1, 1) output over N) with the batch's mean and biased variance,
and moves the running estimates by momentum 0.1 towards the batch's mean and unbiased variance; outside
training it uses the running estimates. gamma and beta are `params` ("weight", "bias": trained); the running
mean and variance are `buffers` ("running_mean", "running_var": saved in weight files and checkpoints, never
touched by an optimizer). Right after a conv or dense layer, inference folds it into that layer's weights
(see `fold`). A batch that runs in micro-batches gets the whole batch's statistics and gradient sums
(cnncli.engine.passes, `_WholeBatch`): the same sums as one pass over the batch, added in the same order.
"""

import numpy as np

from cnncli.engine.layers import Layer, _forward_kernels, _numba, _take

MOMENTUM = 0.1
EPS = 1e-5


class _WholeBatch:
    """Batch norm's sums over a whole batch that runs in micro-batches (cnncli.engine.passes drives it):
    first the statistics (bn_sums of every micro-batch), then the gradient sums (bn_grad_sums of every
    micro-batch's upstream gradient), each added in image order, so the totals equal those of one pass."""

    def __init__(self, c):
        self.s1, self.s2, self.shift, self.m = np.zeros(c), np.zeros(c), None, 0
        self.sdy, self.sdyx = np.zeros(c), np.zeros(c)
        self.stats = None  # (mean, invstd) in the maps' dtype once every micro-batch has been summed
        self.grads_done = False


class BatchNorm(Layer):
    """Per-channel normalisation, then gamma * x + beta; (C, H, W) in, the same shape out."""

    token = "bn"
    # Its statistics mix a batch's images, but a batch may still run in micro-batches: cnncli.engine.passes
    # gives every pass the whole batch's statistics (see `whole`).
    couples_images = False
    batch_statistics = True

    def __init__(self):
        super().__init__()
        self.buffers = {}
        self.whole = None  # a _WholeBatch while a batch runs in micro-batches

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

    def forward(self, x, training=False, relu=False):
        """x (N, C, H, W) -> the same shape; relu=True also applies the ReLU that follows (one pass over the map;
        the model then hands the output to that ReLU layer's `fused`). While a batch runs in micro-batches and
        its statistics are still being summed, this only adds x to the sums and returns x."""
        out = _take(self._fwd_slot, x.shape, x.dtype)
        if not training:
            scale, shift = self.scale_shift(x.dtype)
            kern = _forward_kernels(x, training)
            kern.channel_affine(x, scale, shift, out)
            if relu:
                kern.activation_forward("relu", out, out)
            return out
        k, p, whole = _numba(), self.params, self.whole
        # x is kept by reference (backward recomputes the normalised values from it): no layer writes into
        # another layer's output, so it is unchanged until this layer's backward.
        self.x = x
        if whole is None:  # the whole batch in one pass
            mean, var, invstd = k.bn_train_forward(x, p["weight"], p["bias"], EPS, out, relu)
            self._move_running(mean, var, x.shape[0] * x.shape[2] * x.shape[3])
            self.mean, self.invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
            return out
        if whole.stats is None:
            if whole.shift is None:  # the first micro-batch holds image 0
                whole.shift = k.bn_shift(x)
            k.bn_sums(x, whole.shift, whole.s1, whole.s2)
            whole.m += x.shape[0] * x.shape[2] * x.shape[3]
            return x
        self.mean, self.invstd = whole.stats
        k.bn_normalize(x, self.mean, self.invstd, p["weight"], p["bias"], out, relu)
        return out

    def end_statistics(self):
        """Every micro-batch has been summed: fix the batch's statistics and move the running estimates once."""
        whole = self.whole
        mean, var, invstd = _numba().bn_statistics(whole.s1, whole.s2, whole.shift, whole.m, EPS)
        self._move_running(mean, var, whole.m)
        dtype = self.params["weight"].dtype
        whole.stats = (mean.astype(dtype), invstd.astype(dtype))

    def _move_running(self, mean, var, m):
        unbiased = var * (m / (m - 1)) if m > 1 else var  # one value per channel has no spread to estimate
        for name, batch in (("running_mean", mean), ("running_var", unbiased)):
            buf = self.buffers[name]
            buf[...] = (1.0 - MOMENTUM) * buf + MOMENTUM * batch

    def backward(self, dy, need_dx=True):
        """dx (N, C, H, W) for upstream dy; sets grads. While a batch runs in micro-batches and its gradient sums
        are still being added, this only adds dy's sums and returns None."""
        k, whole, dy = _numba(), self.whole, np.ascontiguousarray(dy)
        if whole is None:
            sdy, sdyx = np.zeros(dy.shape[1]), np.zeros(dy.shape[1])
            k.bn_grad_sums(dy, self.x, self.mean, self.invstd, sdy, sdyx)
            m = dy.shape[0] * dy.shape[2] * dy.shape[3]
        elif not whole.grads_done:
            k.bn_grad_sums(dy, self.x, self.mean, self.invstd, whole.sdy, whole.sdyx)
            return None
        else:
            sdy, sdyx, m = whole.sdy, whole.sdyx, whole.m
        dx = _take(self._bwd_slot, dy.shape, dy.dtype)
        k.bn_grad_apply(dy, self.x, self.mean, self.invstd, self.params["weight"], sdy, sdyx, m, dx)
        self.grads = self.whole_grads(sdy, sdyx, dy.dtype)
        return dx

    @staticmethod
    def whole_grads(sdy, sdyx, dtype):
        """{"weight": dgamma, "bias": dbeta} from the gradient sums (C,) float64 over a batch."""
        return {"weight": sdyx.astype(dtype), "bias": sdy.astype(dtype)}


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
