"""`cnncli export`: the ONNX graph computes cnncli's probabilities (checked with onnxruntime on the bundled
Fashion-MNIST PNGs), carries the metadata a server needs, and obeys the output rules."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cnncli.commands.cli import main
from cnncli.data.images import decode
from cnncli.engine.model import PRESETS, Model
from cnncli.errors import UsageError
from cnncli.store import modelfile, onnx_export

DATA = Path(__file__).resolve().parents[1] / "data" / "test"
# Every layer kind and option the spec grammar builds: presets, stride and padding (conv and pool, square and
# not), tanh / sigmoid, dropout, a dense layer before a convolution, and no convolution at all.
SPECS = [*PRESETS, "conv8k5s2p2-tanh-pool3s2p1-conv6k3x2s2x1p1x0-sigmoid-fc32-drop0.3-fc",
         "conv >> relu >> pool >> conv >> pool >> fc >> conv >> fc", "fc16-tanh-drop-fc", "pool2x3s1-conv4k1-fc"]


def _images(channels, n=12):
    files = sorted(DATA.glob("coat/*.png"))[: n // 2] + sorted(DATA.glob("pullover/*.png"))[: n // 2]
    return np.stack([decode(f, 28, channels) for f in files])


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, out.getvalue(), err.getvalue()


def _save(tmp_path, spec, channels=1, classes=("coat", "pullover"), threshold=0.35):
    mean, std = [0.29, 0.31, 0.33][:channels], [0.35, 0.34, 0.36][:channels]
    clf = modelfile.Classifier(Model(spec, (channels, 28, 28), len(classes), seed=7), list(classes),
                               "gray" if channels == 1 else "rgb", mean, std, threshold)
    path = tmp_path / "m.safetensors"
    modelfile.save(path, clf)
    return path, modelfile.load(path)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("spec", SPECS)
def test_onnxruntime_agrees_with_cnncli_on_real_images(tmp_path, spec):
    path, clf = _save(tmp_path, spec)
    x = _images(1)
    want = clf.proba(x)
    code, stdout, stderr = _run(["export", path, "-o", tmp_path / "m.onnx"])
    assert code == 0 and stdout == "" and "m.onnx" in stderr, stderr
    got = _session(tmp_path / "m.onnx").run(["probabilities"], {"input": clf.to_float(x)})[0]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert want.std() > 1e-3  # the images give different answers: a constant graph would not pass


@pytest.mark.parametrize("channels, classes", [(1, ("coat", "pullover")), (3, tuple("abcdefghij"))])
def test_with_preprocess_takes_uint8_images(tmp_path, channels, classes):
    path, clf = _save(tmp_path, "m1", channels, classes, threshold=None)
    x = _images(channels)
    code, _, stderr = _run(["export", path, "-o", tmp_path / "p.onnx", "--with-preprocess"])
    assert code == 0, stderr
    sess = _session(tmp_path / "p.onnx")
    assert sess.get_inputs()[0].name == "image" and sess.get_inputs()[0].shape == ["N", 28, 28, channels]
    got = sess.run(None, {"image": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
    np.testing.assert_allclose(got, clf.proba(x), rtol=0, atol=1e-5)


def test_metadata_names_classes_input_resize_and_threshold(tmp_path):
    path, clf = _save(tmp_path, "tiny", threshold=0.35)
    assert _run(["export", path])[0] == 0  # default output: beside the model, .onnx
    model = onnx.load(tmp_path / "m.onnx")
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["classes"] == ["coat", "pullover"] and props["threshold"] == 0.35
    assert props["input"]["height"] == 28 and props["input"]["color"] == "gray"
    assert props["resize"] == "shorter-side-then-center-crop" and props["arch"] == clf.model.spec
    assert props["preprocess"]["mean"] == pytest.approx(clf.mean) and props["preprocess"]["in_graph"] is False
    assert any(n.op_type == "Softmax" for n in model.graph.node)
    assert not any(n.op_type == "Dropout" for n in model.graph.node)


def test_output_rules(tmp_path):
    path, _ = _save(tmp_path, "tiny")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    code, stdout, stderr = _run(["export", path, "-o", out])
    assert code == 73 and out.read_bytes() == b"keep me" and len(stderr.strip().splitlines()) == 1
    assert _run(["export", path, "-o", out, "--overwrite"])[0] == 0 and out.read_bytes() != b"keep me"
    assert _run(["export", path, "-o", tmp_path / "nope" / "m.onnx"])[0] == 73
    before = path.read_bytes()
    link = tmp_path / "model-link.onnx"  # an .onnx name that is the input weight file itself
    link.symlink_to(path)
    code, _, stderr = _run(["export", path, "-o", link, "--overwrite"])
    assert code == 73 and "input" in stderr and path.read_bytes() == before
    assert _run(["export", tmp_path / "missing.safetensors", "-o", tmp_path / "x.onnx"])[0] == 66


def test_export_writes_only_onnx_names_never_a_training_image_or_the_model(tmp_path):
    path, _ = _save(tmp_path, "tiny")
    coat = tmp_path / "d" / "coat"
    coat.mkdir(parents=True)
    img = coat / "00019.png"
    img.write_bytes(sorted(DATA.glob("coat/*.png"))[0].read_bytes())
    for target in (img, path, tmp_path / "m.bin", tmp_path / "m"):
        before = target.read_bytes() if target.exists() else None
        code, stdout, stderr = _run(["export", path, "-o", target, "--overwrite"])
        assert code == 2 and "must end in .onnx" in stderr.splitlines()[0], (target, stderr)
        assert (target.read_bytes() if target.exists() else None) == before
    assert _run(["export", path, "-o", tmp_path / "M.ONNX"])[0] == 0


def test_a_layer_without_translation_is_refused_by_name(tmp_path):
    _, clf = _save(tmp_path, "tiny")

    class Mystery:
        token = "mystery3"

    clf.model.layers.insert(1, Mystery())
    with pytest.raises(UsageError, match="layer 2 'mystery3'"):
        onnx_export.build(clf)


def test_without_onnx_installed_export_says_how_to_install(tmp_path):
    path, _ = _save(tmp_path, "tiny")
    probe = ("import sys\nsys.modules['onnx'] = None\nfrom cnncli.commands.cli import main\n"
             f"main(['export', {str(path)!r}, '-o', {str(tmp_path / 'x.onnx')!r}])")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60, cwd=tmp_path)
    err = res.stderr.decode()
    assert res.returncode == 2 and "pip install 'cnncli[onnx]'" in err.splitlines()[0] and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()
