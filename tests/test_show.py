"""`cnncli show`: the numpy gradients behind saliency against the compiled backward pass, Grad-CAM and
gradient saliency on hand-set weights, and the command's pictures, folder and JSON."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.commands.cli import main
from cnncli.engine.model import Model
from cnncli.report import inspect
from cnncli.store import modelfile

DATA = Path(__file__).resolve().parents[1] / "data" / "test"


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("spec", ["conv4k3s2p1-tanh-pool3s2p1-conv3k2-sigmoid-fc6-relu-fc",
                                  "conv >> relu >> pool >> conv >> pool >> fc >> conv >> fc",
                                  "pool2x3s1-conv5k1x3p0x1-relu-drop0.5-fc"])
def test_numpy_input_gradient_matches_the_compiled_backward_pass(spec):
    model = Model(spec, (2, 11, 11), 3, seed=4)
    x = np.random.default_rng(0).normal(size=(1, 2, 11, 11)).astype(np.float32)
    tr = inspect.trace(model, x)
    mine = inspect.grad_of_class(model, tr, 2, -1)
    model.forward(x, training=True)
    for layer in model.layers:  # dropout off: inference
        if hasattr(layer, "mask"):
            layer.mask = None
    d = np.zeros((1, 3, 1, 1), np.float32)
    d[0, 2] = 1
    for i in range(len(model.layers) - 1, -1, -1):
        d = model.layers[i].backward(d, need_dx=True)
    np.testing.assert_allclose(mine, d, rtol=1e-4, atol=1e-6)
    assert np.abs(mine).max() > 0


def _hand_set(spec, shape, weights):
    model = Model(spec, shape, 2, seed=0)
    model.load_state_dict({k: np.asarray(v, np.float32) for k, v in weights.items()})
    return model


def test_grad_cam_lights_up_the_evidence():
    # channel 0 = relu(x) (bright detector), channel 1 = relu(1 - x) (dark detector); only channel 0 counts
    # for class 1, so the class-1 heat is where the image is bright: a square in the top-left corner.
    fc = np.zeros((2, 2 * 8 * 8))
    fc[1, :64] = 1.0
    model = _hand_set("conv2k1-relu-fc", (1, 8, 8), {
        "layers.0.weight": np.array([1.0, -1.0]).reshape(2, 1, 1, 1), "layers.0.bias": [0.0, 1.0],
        "layers.2.weight": fc, "layers.2.bias": [0.0, 0.0]})
    x = np.full((1, 1, 8, 8), -1.0, np.float32)
    x[0, 0, :3, :3] = 3.0
    tr = inspect.trace(model, x)
    sal = inspect.saliency(model, tr)
    assert sal["method"] == "grad-cam" and sal["layer"] == 1 and sal["class"] == 1
    heat = sal["heat"]
    assert heat.shape == (8, 8) and heat.max() == pytest.approx(1.0)
    assert heat[:3, :3].min() > 0.9 and heat[4:, :].max() < 0.05 and heat[:, 4:].max() < 0.05


def test_gradient_saliency_without_a_convolution_is_the_weight_pattern():
    mask = np.zeros((6, 6))
    mask[1:3, 2:5] = 1.0
    model = _hand_set("fc", (1, 6, 6), {"layers.0.weight": np.stack([-mask.ravel(), 2 * mask.ravel()]),
                                        "layers.0.bias": [0.0, 0.0]})
    tr = inspect.trace(model, np.ones((1, 1, 6, 6), np.float32))
    sal = inspect.saliency(model, tr)
    assert sal["method"] == "gradient" and sal["class"] == 1
    np.testing.assert_allclose(sal["heat"], mask)


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    path = root / "m.safetensors"
    modelfile.save(path, modelfile.Classifier(Model("m1", (1, 28, 28), 2, seed=3), ["coat", "pullover"], "gray",
                                              [0.3], [0.35]))
    return root, path, sorted(DATA.glob("coat/*.png"))[0]


def test_show_one_picture_and_a_folder(fashion_model, tmp_path):
    root, model, img = fashion_model
    out = tmp_path / "show.png"
    code, stdout, stderr = _run(["show", model, img, "-o", out, "--max-maps", "4"])
    assert code == 0 and stdout == "" and f"wrote {out}" in stderr, stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > im.width > 500
    code, _, stderr = _run(["show", model, img, "-o", out])
    assert code == 73  # exists, no --overwrite
    folder = tmp_path / "parts"
    code, _, stderr = _run(["show", model, img, "-o", folder])
    assert code == 0, stderr
    assert sorted(os.listdir(folder)) == ["feature_maps.png", "filters.png", "saliency.png"]
    code, _, _ = _run(["show", model, "-o", tmp_path / "filters.svg"])  # no image: filters only
    assert code == 0 and (tmp_path / "filters.svg").read_bytes().startswith(b"<?xml")


def test_show_json_gives_the_numbers(fashion_model):
    root, model, img = fashion_model
    code, stdout, stderr = _run(["show", model, img, "--format", "json"])
    assert code == 0, stderr
    doc = json.loads(stdout)
    clf = modelfile.load(model)
    np.testing.assert_allclose(doc["filters"]["weights"], clf.model.layers[0].params["weight"], atol=1e-6)
    assert [m["token"] for m in doc["feature_maps"]] == ["conv16k3", "relu", "pool2", "conv32k3", "relu", "pool2"]
    assert [m["shape"] for m in doc["feature_maps"]][:3] == [[16, 26, 26], [16, 26, 26], [16, 13, 13]]
    assert min(min(row) for ch in doc["feature_maps"][1]["values"] for row in ch) >= 0  # after relu
    from cnncli.data.images import decode

    want = clf.proba(decode(img, 28, 1)[None])[0]
    assert [doc["probabilities"][c] for c in clf.classes] == pytest.approx(want.tolist(), abs=1e-6)
    assert doc["saliency"]["method"] == "grad-cam" and np.asarray(doc["saliency"]["heat"]).shape == (28, 28)


def test_show_refusals(fashion_model, tmp_path):
    root, model, img = fashion_model
    assert _run(["show", model, tmp_path / "nope.png", "-o", tmp_path / "a.png"])[0] == 66
    dense = tmp_path / "dense.safetensors"
    modelfile.save(dense, modelfile.Classifier(Model("fc8-fc", (1, 28, 28), 2), ["a", "b"], "gray", [0.3], [0.35]))
    code, _, stderr = _run(["show", dense, "-o", tmp_path / "b.png"])
    assert code == 2 and "no convolution" in stderr
    assert _run(["show", model, img, "-o", tmp_path / "c.gif"])[0] == 2


def test_show_never_writes_beside_the_input_image(fashion_model, tmp_path):
    # the image may sit in a class folder of DATA: a picture written there is read as a coat by the next train
    root, model, img = fashion_model
    coat = tmp_path / "d" / "coat"
    coat.mkdir(parents=True)
    (tmp_path / "d" / "pullover").mkdir()
    mine = coat / "00019.png"
    mine.write_bytes(img.read_bytes())
    before = mine.read_bytes()
    for out in (coat, mine, coat / "show.png", coat / "sub", tmp_path / "d" / "coat" / ".." / "coat" / "a.svg"):
        code, stdout, stderr = _run(["show", model, mine, "-o", out, "--overwrite"])
        assert code == 73 and "folder of the input image" in stderr, (out, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "the all" not in stderr
        assert sorted(os.listdir(coat)) == ["00019.png"] and mine.read_bytes() == before
    code, _, stderr = _run(["show", model, mine, "-o", tmp_path / "d" / "fine.png"])  # elsewhere: fine
    assert code == 0, stderr


def test_show_loads_neither_numba_nor_onnx(fashion_model, tmp_path):
    root, model, img = fashion_model
    probe = ("import sys\nfrom cnncli.commands.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'onnx')), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", probe, "show", str(model), str(img), "-o", str(tmp_path / "s.png")],
                         capture_output=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")})
    assert res.stderr.decode().strip().endswith("0 []"), res.stderr


def test_a_layer_without_numpy_gradient_costs_only_the_saliency(fashion_model, tmp_path, monkeypatch):
    root, model, img = fashion_model

    def no_gradient(model, tr, i, dy):
        raise ValueError(f"no gradient for layer {model.layers[i].token}")

    monkeypatch.setattr(inspect, "input_grad", no_gradient)
    code, _, stderr = _run(["show", model, img, "-o", tmp_path / "parts"])
    assert code == 0 and "warning: no saliency map: no gradient for layer fc" in stderr, stderr
    assert sorted(os.listdir(tmp_path / "parts")) == ["feature_maps.png", "filters.png"]


def test_map_mosaic_tiles_scaled_maps_with_gaps():
    from cnncli.report.inspect_chart import map_mosaic

    maps = np.stack([np.arange(4, dtype=np.float32).reshape(2, 2) * (k + 1) for k in range(3)] + [np.ones((2, 2))])
    m = map_mosaic(maps, 4, cols=3)
    assert m.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_allclose(m[0:2, 3:5], [[0, 1 / 3], [2 / 3, 1]])  # map 1 scaled by its own range
    assert np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()  # gaps
    assert (m[3:5, 0:2] == 0).all() and np.isnan(m[3:5, 3:]).all()  # a constant map is 0; empty tiles blank
