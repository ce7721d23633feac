"""Training: learning on the bundled real images, optimizers, determinism, exact resume, divergence,
gradient clipping, early stopping and the time limit."""

import math
from pathlib import Path

import numpy as np
import pytest

from cnncli.errors import DivergedError
from cnncli.data.folders import load_images, scan_dataset
from cnncli.data.images import channel_stats, normalize
from cnncli.engine.model import Model
from cnncli.engine.optim import SGD, Adam, clip_by_global_norm, learning_rate
from cnncli.engine.training import TrainConfig, TrainState, evaluate, fit

DATA = Path(__file__).resolve().parent.parent / "data"


def weights_bytes(model):
    return {name: v.tobytes() for name, v in model.state_dict().items()}


def to_float(batch):
    return batch.astype(np.float32) / np.float32(255) - np.float32(0.5)


def toy_problem(n=48, size=8, seed=0):
    """uint8 images (n, 1, size, size): class 0 is bright on the left, class 1 on the right; plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    xx = np.arange(size)[None, :]
    base = np.where((xx < size // 2) == (y[:, None, None, None] == 0), 190.0, 60.0)
    x = np.clip(base + rng.normal(0, 30, (n, 1, size, size)), 0, 255).astype(np.uint8)
    return x, y


# ---- learning on real images ---------------------------------------------------------------------------


def test_tiny_preset_learns_the_bundled_fashion_mnist_sample():
    ds = scan_dataset(DATA)
    assert ds.classes == ["coat", "pullover"] and ds.test
    train = load_images(ds.train, 28, color="gray", strict=True)
    test = load_images(ds.test, 28, color="gray", strict=True)
    assert train.x.shape == (len(ds.train), 1, 28, 28) and train.x.dtype == np.uint8
    mean, std = channel_stats(train.x)

    def norm(b):
        return normalize(b, mean, std)

    model = Model("tiny", (1, 28, 28), len(ds.classes), seed=0)
    _, acc_before, _ = evaluate(model, test.x, test.y, norm)
    cfg = TrainConfig(epochs=5, batch_size=16, lr=3e-3, seed=0, optimizer="adam")
    state, _ = fit(model, train.x, train.y, cfg, norm)
    assert state.stop_reason == "completed" and len(state.history) == 5
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    loss, acc, proba = evaluate(model, test.x, test.y, norm)
    chance = np.bincount(test.y).max() / len(test.y)
    assert acc >= 0.8, f"held-out accuracy {acc:.2f} (chance {chance:.2f}, before training {acc_before:.2f})"
    assert loss < math.log(2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


# ---- optimizers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,lr", [(lambda: SGD(momentum=0.9), 0.05), (lambda: Adam(), 0.01),
                                     (lambda: SGD(momentum=0.9, weight_decay=1e-3), 0.05),
                                     (lambda: Adam(weight_decay=1e-2), 0.01)])
def test_optimizers_reduce_the_loss_on_a_fixed_problem(make, lr):
    x, y = toy_problem()
    xf = to_float(x)
    model = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    opt = make()
    first, _ = model.loss_and_grads(xf, y)
    for _ in range(25):
        loss, _ = model.loss_and_grads(xf, y)
        opt.step(model.named(), model.named("grads"), lr)
    final, logits = model.loss_and_grads(xf, y)
    assert opt.state["step"] == 25
    assert final < 0.5 * first, (first, final)
    assert (logits.argmax(1) == y).mean() >= 0.9


def test_learning_rate_schedule():
    assert learning_rate(0.1, 0, 100, "constant") == 0.1
    assert learning_rate(0.1, 0, 100, "cosine") == pytest.approx(0.1)
    assert learning_rate(0.1, 100, 100, "cosine") == pytest.approx(0.005)
    lrs = [learning_rate(0.1, s, 100, "cosine", warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_clip_by_global_norm_bounds_the_norm():
    rng = np.random.default_rng(0)
    grads = [("a", rng.standard_normal((3, 4)) * 10), ("b", rng.standard_normal(5) * 10)]
    original = [g.copy() for _, g in grads]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in original))
    assert clip_by_global_norm(grads, 1.0) == pytest.approx(norm)
    after = math.sqrt(sum(float((g ** 2).sum()) for _, g in grads))
    assert after <= 1.0 + 1e-9 and after == pytest.approx(1.0)
    for (_, g), o in zip(grads, original):  # the direction is kept
        np.testing.assert_allclose(g, o / norm, rtol=1e-9)
    small = [("a", np.array([0.3, 0.4]))]
    assert clip_by_global_norm(small, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(small[0][1], [0.3, 0.4])  # under the bound: untouched


# ---- determinism and resume ----------------------------------------------------------------------------

SPEC = "conv4k3p1-relu-pool2-drop0.3-fc8-relu-fc"


def run(cfg, x, y, xv, yv, **kw):
    model = Model(SPEC, (1, 8, 8), 2, seed=cfg.seed)
    state, opt = fit(model, x, y, cfg, to_float, xv, yv, **kw)
    return model, state, opt


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_same_seed_gives_bit_identical_weights(optimizer):
    x, y = toy_problem(40)
    xv, yv = toy_problem(16, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer=optimizer, augment=True, seed=3, clip_norm=5.0)
    a, sa, _ = run(cfg, x, y, xv, yv)
    b, sb, _ = run(cfg, x, y, xv, yv)
    assert weights_bytes(a) == weights_bytes(b)
    strip = [{k: v for k, v in h.items() if k != "time"} for h in sa.history]
    assert strip == [{k: v for k, v in h.items() if k != "time"} for h in sb.history]
    c, _, _ = run(TrainConfig(**{**vars(cfg), "seed": 4}), x, y, xv, yv)
    assert weights_bytes(a) != weights_bytes(c)


@pytest.mark.parametrize("stop_after", [3, 5, 7])  # mid-epoch, at the end of epoch 1, mid-epoch 2
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stopped_and_resumed_run_ends_bit_identical(stop_after, optimizer):
    x, y = toy_problem(40)  # 5 batches of 8 per epoch
    xv, yv = toy_problem(16, seed=1)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.01, optimizer=optimizer, augment=True, seed=5)
    full, full_state, _ = run(cfg, x, y, xv, yv)

    seen = {"n": 0}

    def on_batch(state, loss, lr):
        seen["n"] += 1

    model = Model(SPEC, (1, 8, 8), 2, seed=cfg.seed)
    state, opt = fit(model, x, y, cfg, to_float, xv, yv, on_batch=on_batch, should_stop=lambda: seen["n"] >= stop_after)
    assert state.stop_reason == "interrupted"
    assert state.step == stop_after
    state, opt = fit(model, x, y, cfg, to_float, xv, yv, state=state, optimizer=opt, on_batch=on_batch)
    assert state.epoch == cfg.epochs
    assert seen["n"] == full_state.step == 15
    assert weights_bytes(model) == weights_bytes(full)
    assert [h["train_loss"] for h in state.history] == [h["train_loss"] for h in full_state.history]
    assert state.best_epoch == full_state.best_epoch


def test_a_resumed_run_that_finishes_reports_completed():
    x, y = toy_problem(16)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, optimizer="adam")
    model = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    state, opt = fit(model, x, y, cfg, to_float, should_stop=lambda: True)
    assert state.stop_reason == "interrupted" and state.step == 1
    state, _ = fit(model, x, y, cfg, to_float, state=state, optimizer=opt)
    assert state.epoch == 2 and state.step == 4
    assert state.stop_reason == "completed"


# ---- divergence, early stopping, time limit ------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_huge_learning_rate_raises_diverged_error(optimizer):
    x, y = toy_problem(32)
    model = Model("conv4k3-relu-pool2-fc8-relu-fc", (1, 8, 8), 2, seed=0)
    cfg = TrainConfig(epochs=20, batch_size=8, lr=1e30, optimizer=optimizer, schedule="constant")
    with pytest.raises(DivergedError, match="diverged"), np.errstate(all="ignore"):
        fit(model, x, y, cfg, to_float)


def test_early_stopping_restores_the_best_validation_weights():
    x, y = toy_problem(48)
    xv, _ = toy_problem(24, seed=2)
    yv = np.random.default_rng(3).integers(0, 2, 24)  # labels unrelated to the images: no steady progress
    snapshots = {}

    def on_epoch(state, optimizer):
        snapshots[state.epoch] = weights_bytes(model)

    model = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    cfg = TrainConfig(epochs=30, batch_size=8, lr=0.02, patience=2, schedule="constant", optimizer="adam")
    state, _ = fit(model, x, y, cfg, to_float, xv, yv, on_epoch=on_epoch)
    assert state.stop_reason == "early-stopped"
    ran = len(state.history)
    assert ran < cfg.epochs
    scores = [h["val_accuracy"] - 1e-6 * h["val_loss"] for h in state.history]
    best = int(np.argmax(scores)) + 1
    assert state.best_epoch == best
    assert ran == best + cfg.patience  # stopped after exactly `patience` epochs without a gain
    assert weights_bytes(model) == snapshots[best]
    assert snapshots[best] != snapshots[ran]  # restoring actually changed the weights


def test_max_time_stops_early():
    x, y = toy_problem(48)
    model = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    cfg = TrainConfig(epochs=50, batch_size=8, lr=0.01, max_time=1e-9, optimizer="adam")
    state, _ = fit(model, x, y, cfg, to_float)
    assert state.stop_reason == "time-limit"
    assert state.step == 1 and len(state.history) == 1
    assert state.elapsed >= cfg.max_time


def test_class_weights_are_used_in_training():
    x, y = toy_problem(32)
    a = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    b = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    fit(a, x, y, TrainConfig(epochs=1, batch_size=8, lr=0.01, optimizer="adam"), to_float)
    fit(b, x, y, TrainConfig(epochs=1, batch_size=8, lr=0.01, class_weights=[1.0, 5.0], optimizer="adam"), to_float)
    assert weights_bytes(a) != weights_bytes(b)


def test_fit_returns_a_resumable_state_object():
    x, y = toy_problem(16)
    model = Model("conv4k3-relu-pool2-fc", (1, 8, 8), 2, seed=0)
    state, opt = fit(model, x, y, TrainConfig(epochs=2, batch_size=8, lr=1e-3, optimizer="adam"), to_float)
    assert isinstance(state, TrainState) and state.epoch == 2 and state.step == 4 and state.batch == 0
    assert isinstance(opt, Adam) and opt.state["step"] == 4


def test_a_perfect_validation_loss_is_plus_zero_never_minus_zero():
    class Sure:  # a model certain and right about every image
        def predict_proba(self, x, batch_size):
            return np.eye(2, dtype=np.float32)[(x[:, 0, 0, 0] > 0).astype(int)]

    x = np.array([0, 1, 1, 0], dtype=np.uint8).reshape(4, 1, 1, 1)
    loss, acc, _ = evaluate(Sure(), x, x.ravel().astype(np.int64), lambda b: b.astype(np.float32))
    assert acc == 1.0 and loss == 0.0 and math.copysign(1.0, loss) == 1.0 and f"{loss:.4f}" == "0.0000"
