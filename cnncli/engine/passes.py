"""A training batch in micro-batches (passes), for Model.loss_and_grads when the whole batch's activations would
exceed the training memory budget.

Each pass runs forward and backward on a slice of the batch, and the passes' gradients are added in slice order.
Without batch norm that is all. Batch norm normalises with the statistics of the whole batch, and its gradient
needs sums over the whole batch of the upstream gradient: a micro-batch cannot know either from its own images.
So a network with bn layers (bottom to top: bn_1 .. bn_L) runs extra passes that recompute instead of holding
the whole batch's maps:
1. statistics, for l = 1..L: every slice runs forward up to bn_l (the bn layers below already normalise with
   the whole batch's statistics) and bn_l adds the slice's sums; then bn_l fixes the batch's mean and variance;
2. gradient sums, for l = L..1: every slice runs forward and backward down to bn_l, which adds the sums of its
   upstream gradient (the bn layers above already use the whole batch's sums);
3. the ordinary passes, forward and backward, adding the gradients.
The sums are added image by image in batch order (cnncli.engine.kernels.norm), so bn's statistics are those of
one pass over the batch bit for bit, whatever the split, and its gradients equal one pass's up to float
rounding. The price is the recomputation: about L + 1 forward and L partial backward passes more.

Dropout layers draw their masks from generators seeded once per slice (from the training's dropout generator),
so a slice's masks are the same in every recomputation.
"""

import numpy as np

from cnncli.engine.layers import Dropout, softmax_cross_entropy
from cnncli.engine.norm import _WholeBatch


def in_passes(model, x, labels, class_weights, micro_batch):
    """(mean loss, logits (N, K)) of model on x (N, C, H, W) with labels (N,), in passes of at most micro_batch
    images; every layer's grads end as the whole batch's."""
    n = x.shape[0]
    passes = -(-n // micro_batch)
    step = -(-n // passes)  # equal passes (the last one may be smaller): buffers keep their shape
    slices = [slice(lo, lo + step) for lo in range(0, n, step)]
    w = np.ones(n, np.float64) if class_weights is None else np.asarray(class_weights, np.float64)[labels]
    total = w.sum()
    norms = [i for i, layer in enumerate(model.layers) if getattr(layer, "batch_statistics", False)]
    masks = _SliceMasks(model.layers, len(slices)) if norms else None

    def run(j, stop=0):
        """Forward and backward (down to layers[stop]) on slice j: (its share of the loss, its logits)."""
        if masks:
            masks.enter(j)
        logits = model.forward(x[slices[j]], training=True)
        part_loss, dlogits = softmax_cross_entropy(logits, labels[slices[j]], class_weights)
        share = w[slices[j]].sum() / total
        dlogits *= dlogits.dtype.type(share)
        model.backward(dlogits, stop=stop)
        return part_loss * share, logits

    try:
        for i in norms:
            model.layers[i].whole = _WholeBatch(model.shapes[i][0])
        for i in norms:
            for j in range(len(slices)):
                if masks:
                    masks.enter(j)
                model.forward(x[slices[j]], training=True, stop=i + 1)
            model.layers[i].end_statistics()
        for i in reversed(norms):
            for j in range(len(slices)):
                run(j, stop=i)
            model.layers[i].whole.grads_done = True
        loss, sums, parts = 0.0, None, []
        for j in range(len(slices)):
            part_loss, logits = run(j)
            loss += part_loss
            if sums is None:
                sums = [{k: np.array(g, copy=True) for k, g in layer.grads.items()} for layer in model.layers]
            else:
                for acc, layer in zip(sums, model.layers):
                    for k, g in layer.grads.items():
                        acc[k] += g
            parts.append(logits)
        for i in norms:  # each pass set the whole batch's bn gradients, not its own share
            sums[i] = dict(model.layers[i].grads)
        for acc, layer in zip(sums, model.layers):
            layer.grads = acc
    finally:
        for i in norms:
            model.layers[i].whole = None
        if masks:
            masks.restore()
    return float(loss), np.concatenate(parts)


class _SliceMasks:
    """Gives every dropout layer, for slice j, a generator seeded by (the batch's seed for j, the layer's
    position), so recomputing slice j draws the same masks; `restore` puts the training's generators back."""

    def __init__(self, layers, n_slices):
        self.layers = [layer for layer in layers if isinstance(layer, Dropout)]
        self.saved = [layer.rng for layer in self.layers]
        self.seeds = self.saved[0].integers(0, 2**63, size=n_slices) if self.layers else None

    def __bool__(self):
        return bool(self.layers)

    def enter(self, j):
        for k, layer in enumerate(self.layers):
            layer.rng = np.random.default_rng([int(self.seeds[j]), k])

    def restore(self):
        for layer, rng in zip(self.layers, self.saved):
            layer.rng = rng
