"""Optimizers and learning-rate schedules over named parameters.

An optimizer sees lists of (name, param) and (name, grad) pairs (Model.named()) and keeps its state as
plain arrays keyed by the same names, so a checkpoint can store and restore it exactly.
"""

import math

import numpy as np


def _kernels():
    from cnncli.engine import kernels  # numba: loaded by training anyway, never by a module import

    return kernels


def _fusable(p, v, g):
    return (p.dtype in (np.float32, np.float64) and v.dtype == g.dtype == p.dtype and v.shape == g.shape == p.shape
            and p.flags.c_contiguous and v.flags.c_contiguous and g.flags.c_contiguous)


class SGD:
    """SGD with momentum (PyTorch's form: v = mu * v + g; p -= lr * v) and L2 weight decay on weights."""

    def __init__(self, momentum=0.9, weight_decay=0.0):
        self.momentum, self.weight_decay = momentum, weight_decay
        self.state = {"step": 0}

    def step(self, params, grads, lr):
        self.state["step"] += 1
        for (name, p), (_, g) in zip(params, grads):
            if self.weight_decay and name.endswith("weight"):
                g = g + self.weight_decay * p
            v = self.state.get(name)
            if v is None:
                v = self.state[name] = g.copy()
                p -= lr * v
            elif _fusable(p, v, g):  # the same arithmetic in one compiled pass (kernels.sgd_momentum)
                _kernels().sgd_momentum(p, v, g, lr, self.momentum)
            else:
                v *= self.momentum
                v += g
                p -= lr * v


class Adam:
    """Adam with bias correction; weight decay is decoupled (AdamW) and applies to weights only."""

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.state = {"step": 0}

    def step(self, params, grads, lr):
        self.state["step"] += 1
        t = self.state["step"]
        c1, c2 = 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t
        for (name, p), (_, g) in zip(params, grads):
            m = self.state.setdefault(name + ".m", np.zeros_like(p))
            v = self.state.setdefault(name + ".v", np.zeros_like(p))
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            if self.weight_decay and name.endswith("weight"):
                p -= (lr * self.weight_decay) * p
            p -= (lr / c1) * m / (np.sqrt(v / c2) + self.eps)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, weight_decay=0.0):
    """'sgd' (momentum 0.9) or 'adam'."""
    return OPTIMIZERS[name](weight_decay=weight_decay)


def learning_rate(base, step, total, schedule="cosine", warmup=0):
    """Learning rate at optimizer step `step` of `total`: 'constant', or 'cosine' decay to 5% of base after a linear warmup."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients in place so their joint L2 norm is at most max_norm; returns the norm before clipping."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for _, g in grads))
    if max_norm and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for _, g in grads:
            g *= scale
    return norm
