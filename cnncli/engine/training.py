"""The training loop: batches, augmentation, validation, early stopping, resumable state.

Everything random comes from generators seeded by (seed, purpose, epoch, batch), so a run that is stopped
after any batch and resumed from its saved state ends with exactly the weights of an uninterrupted run.
The loop never prints: it reports through callbacks and returns a TrainState.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from cnncli.engine.decision import decide
from cnncli.engine.layers import softmax
from cnncli.errors import DivergedError
from cnncli.engine.optim import clip_by_global_norm, learning_rate, make_optimizer

WARMUP_MIN_STEPS = 10


@dataclass
class TrainConfig:
    """How to train. The tuning values have no defaults here: the command line owns them (cli.train's
    signature, which --help shows); the rest default to off."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # "adam" or "sgd"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    augment: bool | str = False  # "none", "light" (True: augment_batch), "flip", "photo" (fit's `augment`)
    class_weights: list | None = None  # one weight per class, or None
    patience: int | None = None  # epochs without a better validation score before stopping (None: never)
    max_time: float | None = None  # seconds of training, checked after every batch
    clip_norm: float | None = None
    freeze: int = 0  # the first `freeze` layers with parameters are never updated (fine-tuning)


@dataclass
class TrainState:
    """Where a run is: enough to resume it exactly (with the model's weights and optimizer state)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimizer steps taken
    elapsed: float = 0.0  # seconds of training so far
    history: list = field(default_factory=list)  # one dict per completed epoch
    best_epoch: int = 0
    best_score: float = -math.inf
    best_weights: dict | None = None
    epochs_without_gain: int = 0
    running: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0})
    stop_reason: str = ""  # "", "completed", "early-stopped", "time-limit", "interrupted"


def class_weights_auto(labels, num_classes):
    """Weights (K,) inversely proportional to class frequency, averaging 1 over the samples: N / (K * n_k)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return (len(labels) / (num_classes * np.maximum(counts, 1))).tolist()


def augment_batch(x, rng, shift=2):
    """Random horizontal flips and shifts of up to `shift` pixels (zero fill) of a uint8 batch (N, C, H, W)."""
    out = x.copy()
    n, _, h, w = x.shape
    flips = rng.random(n) < 0.5
    out[flips] = out[flips, :, :, ::-1]
    dy = rng.integers(-shift, shift + 1, n)
    dx = rng.integers(-shift, shift + 1, n)
    for i in range(n):
        if dy[i] or dx[i]:
            src = out[i].copy()
            out[i] = 0
            ys, yd = (slice(0, h - dy[i]), slice(dy[i], h)) if dy[i] >= 0 else (slice(-dy[i], h), slice(0, h + dy[i]))
            xs, xd = (slice(0, w - dx[i]), slice(dx[i], w)) if dx[i] >= 0 else (slice(-dx[i], w), slice(0, w + dx[i]))
            out[i][:, yd, xd] = src[:, ys, xs]
    return out


def warmup_steps(optimizer, per_epoch, total):
    """Optimizer steps of linear learning-rate warm-up: SGD half an epoch; Adam one epoch, at least 5 % of the
    run, and at least WARMUP_MIN_STEPS (Adam's first steps move every weight by about lr whatever its gradient,
    which wide dense layers turn into huge logits); never more than 200 steps or a quarter of the run."""
    if optimizer == "sgd":
        return min(per_epoch // 2, 200)
    return min(max(per_epoch, total // 20, WARMUP_MIN_STEPS), 200, max(1, total // 4))


def default_patience(epochs):
    """Early-stopping patience for a budget of `epochs`: max(3, ceil(epochs / 5)), a fifth of the budget and
    never under 3 epochs (so a run of 4 epochs or fewer never stops early)."""
    return max(3, math.ceil(epochs / 5))


def frozen_layers(model, n):
    """Indices of the first n layers of model that have parameters (the layers `--freeze n` keeps fixed);
    ValueError when n leaves no layer with parameters to train."""
    with_params = [i for i, layer in enumerate(model.layers) if layer.params]
    if not 0 <= n < len(with_params):
        raise ValueError(f"{model.spec} has {len(with_params)} layers with parameters; at most "
                         f"{len(with_params) - 1} can be frozen, got {n}")
    return frozenset(with_params[:n])


def _frozen_buffers(model, frozen):
    """Copies of the frozen layers' non-trained tensors (Layer.buffers, such as bn's running statistics, which a
    training forward pass moves): {(layer index, name): array}."""
    return {(i, k): v.copy() for i in frozen for k, v in getattr(model.layers[i], "buffers", {}).items()}


def _trainable(pairs, frozen):
    """The (name, array) pairs of Model.named() outside the frozen layer indices."""
    return [(name, v) for name, v in pairs if int(name.split(".")[1]) not in frozen] if frozen else pairs


def evaluate(model, x, y, to_float, batch_size=256):
    """(mean loss, accuracy, probabilities (N, K)) of model on uint8 images x (N, C, H, W) with labels y (N,)."""
    proba = np.concatenate([model.predict_proba(to_float(x[i:i + batch_size]), batch_size)
                            for i in range(0, len(x), batch_size)])
    p_true = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
    # + 0.0: -log(1) is -0.0, which would be shown as '-0.0000' (and '-0' in history.csv)
    return float(-np.log(p_true).mean()) + 0.0, float((decide(proba) == y).mean()), proba


def fit(model, x, y, cfg, to_float, x_val=None, y_val=None, state=None, optimizer=None,
        on_batch=None, on_epoch=None, should_stop=None, augment=None, micro_batch=None, warmup=True):
    """Train model on uint8 images x (N, C, H, W) with int labels y (N,); returns (TrainState, optimizer).

    to_float maps a uint8 batch to the model's float32 input (the normalisation). With a validation set,
    the best-scoring weights are kept in state.best_weights. on_batch(state, loss, lr) and on_epoch(state,
    optimizer) are called after each batch and epoch; should_stop() is polled after each batch and ends
    the run with stop_reason 'interrupted' and a state that fit() can resume from. Raises DivergedError
    when the loss becomes NaN or infinite. augment(uint8 batch, rng) -> uint8 batch, when given, changes each
    training batch (cfg.augment only names it); without it cfg.augment True or "light" uses augment_batch.
    The first cfg.freeze layers with parameters are left out of the optimizer (and of gradient clipping),
    and their buffers (running statistics) are put back after every step, so they stay bit-identical. With cfg.patience and a validation set, the run ends after
    cfg.patience epochs without a better validation score (stop_reason 'early-stopped').
    micro_batch: images per forward/backward pass within a batch (Model.loss_and_grads); None: the whole batch.
    warmup=False skips the learning-rate warm-up (for experiments: scripts/photo_ablation.py).
    """
    state = state or TrainState()
    state.stop_reason = ""
    optimizer = optimizer or make_optimizer(cfg.optimizer, cfg.weight_decay)
    n = len(x)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = warmup_steps(cfg.optimizer, per_epoch, total) if warmup else 0
    weights = None if cfg.class_weights is None else np.asarray(cfg.class_weights, np.float32)
    frozen = frozen_layers(model, cfg.freeze)
    kept = _frozen_buffers(model, frozen)
    started = time.monotonic() - state.elapsed
    if augment is None and cfg.augment not in (False, "none"):
        if cfg.augment not in (True, "light"):
            raise ValueError(f"augment {cfg.augment!r} needs its batch function")
        augment = augment_batch
    while state.epoch < cfg.epochs:
        order = np.random.default_rng([cfg.seed, 1, state.epoch]).permutation(n)
        for b in range(state.batch, per_epoch):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, np.random.default_rng([cfg.seed, 2, state.epoch, b]))
            model.set_dropout_rng(np.random.default_rng([cfg.seed, 3, state.epoch, b]))
            loss, logits = model.loss_and_grads(to_float(xb), y[idx], weights, micro_batch)
            grads = _trainable(model.named("grads"), frozen)
            if not math.isfinite(loss) or not all(np.isfinite(g).all() for _, g in grads):
                raise DivergedError(f"the loss became {loss} at epoch {state.epoch + 1}, batch {b + 1}: "
                                    f"training diverged; try a lower learning rate (--lr {cfg.lr / 10:g}) or --clip-norm")
            if cfg.clip_norm:
                clip_by_global_norm(grads, cfg.clip_norm)
            lr = learning_rate(cfg.lr, state.step, total, cfg.schedule, warmup)
            optimizer.step(_trainable(model.named(), frozen), grads, lr)
            for (i, k), v in kept.items():  # a frozen layer keeps its running statistics too
                model.layers[i].buffers[k][...] = v
            state.step += 1
            state.batch = b + 1
            run = state.running
            run["loss"] += loss * len(idx)
            run["correct"] += int((decide(softmax(logits)) == y[idx]).sum())  # the rule eval and predict use
            run["seen"] += len(idx)
            state.elapsed = time.monotonic() - started
            if on_batch:
                on_batch(state, loss, lr)
            out_of_time = cfg.max_time is not None and state.elapsed >= cfg.max_time
            # One read of the stop flag per batch: with two reads, a signal arriving between them ended the
            # epoch early and recorded it as complete.
            stop_now = bool(should_stop and should_stop())
            if stop_now and not out_of_time and state.batch < per_epoch:
                state.stop_reason = "interrupted"
                return state, optimizer
            if out_of_time or stop_now:
                break
        _finish_epoch(model, state, cfg, to_float, x_val, y_val, lr)
        if on_epoch:
            on_epoch(state, optimizer)
        # Read once after the epoch was saved: a stop asked for during its last batch (or its validation)
        # ends the run here, resumable at the next epoch.
        if should_stop and should_stop() and state.epoch < cfg.epochs:
            state.stop_reason = "interrupted"
            return state, optimizer
        if cfg.max_time is not None and state.elapsed >= cfg.max_time:
            state.stop_reason = "time-limit"
            break
        if cfg.patience and state.epochs_without_gain >= cfg.patience:
            state.stop_reason = "early-stopped"
            break
    state.stop_reason = state.stop_reason or "completed"
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return state, optimizer


def _diverged(what, value, state, cfg):
    return DivergedError(f"{what} became {value} at the end of epoch {state.epoch + 1}: training diverged; "
                         f"try a lower learning rate (--lr {cfg.lr / 10:g}) or --clip-norm")


def _finish_epoch(model, state, cfg, to_float, x_val, y_val, lr):
    """Record the finished epoch; raises DivergedError (recording nothing) when its last step left
    non-finite weights or a non-finite validation loss behind the per-batch checks."""
    if not all(np.isfinite(v).all() for _, v in model.named()):
        raise _diverged("the weights", "non-finite", state, cfg)
    run = state.running
    record = {"epoch": state.epoch + 1, "train_loss": run["loss"] / max(1, run["seen"]),
              "train_accuracy": run["correct"] / max(1, run["seen"]), "lr": lr, "time": round(state.elapsed, 3)}
    if x_val is not None and len(x_val):
        record["val_loss"], record["val_accuracy"], _ = evaluate(model, x_val, y_val, to_float)
        if not math.isfinite(record["val_loss"]):
            # The last step of the epoch can blow the weights up after the per-batch checks passed; the
            # epoch is not recorded, so no NaN reaches the history or a checkpoint.
            raise _diverged("the validation loss", record["val_loss"], state, cfg)
        # Ties go to the earlier epoch; the loss breaks near-ties of accuracy on small validation sets.
        score = record["val_accuracy"] - 1e-6 * record["val_loss"]
        if score > state.best_score:
            state.best_score, state.best_epoch = score, record["epoch"]
            state.best_weights = model.state_dict()
            state.epochs_without_gain = 0
        else:
            state.epochs_without_gain += 1
    else:
        state.best_epoch = record["epoch"]
    state.history.append(record)
    state.epoch += 1
    state.batch = 0
    state.running = {"loss": 0.0, "correct": 0, "seen": 0}
