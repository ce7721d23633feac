"""The optimizers pinned step by step against values worked out by hand (PyTorch's SGD-momentum, Adam with
bias correction, AdamW with decoupled weight decay). A loss that merely goes down cannot tell these apart:
dropping the bias correction, or coupling the decay into the gradient, changes the numbers below."""

import math

import numpy as np
import pytest

from cnncli.engine.optim import make_optimizer

LR = 0.1
G1, G2 = 0.5, -0.25  # the gradient at step 1 and step 2, the same for the weight and the bias


def _run(name, weight_decay):
    """Two steps from weight 1.0 and bias 0.5; returns [(weight, bias) after step 1, after step 2]."""
    opt = make_optimizer(name, weight_decay)
    w, b = np.array([1.0]), np.array([0.5])
    seen = []
    for g in (G1, G2):
        opt.step([("layers.0.weight", w), ("layers.0.bias", b)],
                 [("layers.0.weight", np.array([g])), ("layers.0.bias", np.array([g]))], LR)
        seen.append((float(w[0]), float(b[0])))
    return seen


def test_sgd_momentum_with_l2_weight_decay():
    (w1, b1), (w2, b2) = _run("sgd", 0.01)
    # weight: v1 = g1 + wd*w0 = 0.51; w1 = 1 - 0.1*0.51 = 0.949
    #         v2 = 0.9*0.51 + (g2 + wd*w1) = 0.459 - 0.24051 = 0.21849; w2 = 0.949 - 0.021849 = 0.927151
    assert w1 == pytest.approx(0.949, abs=1e-12) and w2 == pytest.approx(0.927151, abs=1e-12)
    # bias: no decay. v1 = 0.5, b1 = 0.45; v2 = 0.45 - 0.25 = 0.2, b2 = 0.43
    assert b1 == pytest.approx(0.45, abs=1e-12) and b2 == pytest.approx(0.43, abs=1e-12)


# Adam's moments after two steps: m2 = 0.9*0.05 + 0.1*g2 = 0.02; v2 = 0.999*0.00025 + 0.001*g2^2 = 0.00031225.
# Bias-corrected: m2 / (1 - 0.9^2) = 0.02 / 0.19, v2 / (1 - 0.999^2) = 0.00031225 / 0.001999.
STEP1 = LR * G1 / (abs(G1) + 1e-8)  # step 1 corrects m and v exactly back to g and g^2: a step of lr * sign(g)
STEP2 = LR * (0.02 / 0.19) / (math.sqrt(0.00031225 / 0.001999) + 1e-8)  # = 0.0266337...


def test_adam_uses_bias_correction():
    (w1, b1), (w2, b2) = _run("adam", 0.0)
    assert w1 == pytest.approx(1.0 - STEP1, abs=1e-12) and b1 == pytest.approx(0.5 - STEP1, abs=1e-12)
    assert w2 == pytest.approx(1.0 - STEP1 - STEP2, abs=1e-12) and b2 == pytest.approx(0.5 - STEP1 - STEP2, abs=1e-12)
    assert STEP2 == pytest.approx(0.0266337, abs=1e-7)
    # Without the correction step 1 alone would move by 0.1 * 0.05 / sqrt(0.00025) = 0.316.
    assert abs((1.0 - w1) - 0.1 * 0.05 / math.sqrt(0.00025)) > 0.2


def test_adamw_decays_weights_apart_from_the_gradient():
    (w1, b1), (w2, b2) = _run("adam", 0.1)
    # w <- w - lr*wd*w, then the same Adam step as without decay (the gradient does not see the decay).
    w1_hand = 1.0 * (1 - LR * 0.1) - STEP1  # 0.99 - 0.1 = 0.89
    w2_hand = w1_hand * (1 - LR * 0.1) - STEP2  # 0.8811 - 0.0266337 = 0.8544663
    assert w1 == pytest.approx(w1_hand, abs=1e-12) and w2 == pytest.approx(w2_hand, abs=1e-12)
    assert w2 == pytest.approx(0.8544663, abs=1e-7)
    # Coupled decay (L2 added to the gradient) would give 0.9 after step 1: Adam normalises it away.
    assert abs(w1 - 0.9) > 0.009
    # Biases are not decayed.
    assert b1 == pytest.approx(0.5 - STEP1, abs=1e-12) and b2 == pytest.approx(0.5 - STEP1 - STEP2, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_steps_equal_numpys_array_operations_bit_for_bit(dtype):
    # SGD runs its momentum update as one compiled pass (kernels.sgd_momentum): it must round exactly as the
    # array operations `v *= mu; v += g; p -= lr * v` do, or training results would change with the engine.
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((7, 5, 3)).astype(dtype)
    grads = [rng.standard_normal(p0.shape).astype(dtype) * 10.0 ** rng.integers(-4, 3) for _ in range(4)]
    opt, p = make_optimizer("sgd"), p0.copy()
    want_p, want_v = p0.copy(), None
    for g in grads:
        opt.step([("w", p)], [("w", g)], 0.037)
        if want_v is None:
            want_v = g.copy()
        else:
            want_v *= 0.9
            want_v += g
        want_p -= 0.037 * want_v
        assert p.tobytes() == want_p.tobytes() and opt.state["w"].tobytes() == want_v.tobytes()


def test_the_sgd_kernel_refuses_mismatched_arrays():
    from cnncli.engine import kernels

    p = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="g"):
        kernels.sgd_momentum(p, np.zeros_like(p), np.zeros((2, 3), np.float32), 0.1, 0.9)
    with pytest.raises(ValueError, match="v"):
        kernels.sgd_momentum(p, np.zeros(p.shape, np.float64), np.zeros_like(p), 0.1, 0.9)
