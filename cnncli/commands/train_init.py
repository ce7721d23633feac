"""What `train --init OLD.safetensors [--freeze N]` takes from an existing weight file, and what it refuses.

A fine-tuning run starts from the weights of OLD: its architecture, input size, colour, resize rule and
normalisation (mean, std) are taken from the file, so the kept weights see images exactly as they were
trained on. An option that contradicts them (--arch, --size, --color, --resize) is refused with one line
(exit 2) rather than silently ignored. When the new data's classes are those of OLD, every weight is kept
(the output rows follow the class names); otherwise the output layer starts fresh for the new classes.
OLD is read and validated (store/modelfile: exit 65 when damaged or foreign, 66 when missing) before
anything is written, so OLD may be the -o file itself.
"""

import os
from dataclasses import replace

from cnncli.errors import SpecError, UsageError, one_line
from cnncli.engine.model import Model
from cnncli.store import modelfile


def _layers_with_params(model):
    return [i for i, layer in enumerate(model.layers) if layer.params]


def load(opts, given):
    """(the Classifier in opts.init, opts with arch, size, color and resize taken from it). UsageError naming
    every option in `given` (names typed on the command line) that contradicts the file, or a --freeze that
    leaves no layer to train; FormatError / NoInputError from the loader, naming the file."""
    init = modelfile.load(opts.init)
    c, size, _ = init.model.input_shape
    wanted = {"arch": init.model.spec, "size": size, "color": init.color, "resize": init.resize}
    differing = []
    if "arch" in given:
        try:
            spec = Model(opts.arch, init.model.input_shape, len(init.classes)).spec
        except SpecError as exc:
            raise UsageError(f"--arch: {exc}") from None
        if spec != init.model.spec:
            differing.append(f"--arch {one_line(opts.arch)}")
    if opts.size is not None and opts.size != size:
        differing.append(f"--size {opts.size}")
    if opts.color != "auto" and opts.color != init.color:
        differing.append(f"--color {opts.color}")
    if "resize" in given and opts.resize != init.resize:
        differing.append(f"--resize {opts.resize}")
    if differing:
        verb = "contradicts" if len(differing) == 1 else "contradict"
        raise UsageError(f"--init {one_line(opts.init)} is {init.model.spec} on {size}x{size} {init.color} "
                         f"(resize {init.resize}); {', '.join(differing)} {verb} it: drop "
                         f"{'it' if len(differing) == 1 else 'them'} (fine-tuning keeps the model's arch and input)")
    n = len(_layers_with_params(init.model))
    if opts.freeze >= n:
        raise UsageError(f"--freeze {opts.freeze}: {init.model.spec} has {n} layers with parameters, and the "
                         f"output layer must train; freeze at most {n - 1}")
    return init, replace(opts, **wanted)


def _names(classes, shown=5):
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return ", ".join(one_line(c) for c in classes[:shown]) + more


def start_from(model, init, opts, classes, report):
    """Copy the weights of init (loaded from opts.init) into model (built from init's spec for `classes`);
    returns the training summary's record of it (_summary). With the same classes every weight is kept (the
    output rows reordered by name if needed); with other classes the output layer keeps model's fresh
    weights, and an info line says so."""
    tensors = init.model.state_dict()
    out = _layers_with_params(model)[-1]
    names = [f"layers.{out}.{k}" for k in model.layers[out].params]
    if sorted(classes) == sorted(init.classes):
        order = [init.classes.index(c) for c in classes]
        for name in names:
            tensors[name] = tensors[name][order]
        model.load_state_dict(tensors)
        return _summary(init, opts, "kept")
    fresh = model.state_dict()
    model.load_state_dict({**tensors, **{name: fresh[name] for name in names}})
    report.info(f"--init: {one_line(opts.init)} has other classes ({_names(init.classes)}; here: {_names(classes)}): "
                f"output layer {out + 1} re-initialised for {len(classes)} classes")
    return _summary(init, opts, "new")


def _summary(init, opts, output_layer):
    """Where the weights came from, for the weight file's training summary (cnncli info shows it): the init
    file's absolute path and metadata SHA-256 (which covers its tensors), whether its output layer was kept
    or made new, and how many layers were frozen."""
    return {"init": os.path.abspath(opts.init), "init_sha256": init.digest, "init_output_layer": output_layer,
            "frozen_layers": opts.freeze}
