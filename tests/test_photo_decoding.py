"""Big JPEGs decode through JPEG's own downscaling (draft) without changing what the model sees."""

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from robust_helpers import run_main

from cnncli.data import images
from cnncli.errors import BadImageError


def _photo(path, w=1200, h=900):
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 97) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def _full_decode(path, size):
    """The reference: a full-resolution decode, then the same resize rule."""
    im = Image.open(path).convert("RGB")
    m = min(im.size)
    box = ((im.width - m) / 2, (im.height - m) / 2, (im.width + m) / 2, (im.height + m) / 2)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)).transpose(2, 0, 1)


def _record_drafts(monkeypatch):
    """Sizes (w, h) a JPEG has after each draft() call."""
    sizes = []
    real = JpegImagePlugin.JpegImageFile.draft

    def draft(im, mode, size):
        result = real(im, mode, size)
        sizes.append(im.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    return sizes


def test_a_big_jpeg_is_drafted_and_still_matches_a_full_decode(tmp_path, monkeypatch):
    path = _photo(tmp_path / "big.jpg")
    sizes = _record_drafts(monkeypatch)
    out = images.decode(path, 32, 3)
    assert sizes == [(150, 113)], "a 1200x900 JPEG at 32 px decodes at 1/8 scale"
    ref = _full_decode(path, 32)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 1.5


def test_draft_keeps_twice_the_target_size(tmp_path, monkeypatch):
    path = _photo(tmp_path / "big.jpg")
    sizes = _record_drafts(monkeypatch)
    images.decode(path, 200, 3)
    assert sizes == [(600, 450)]  # one halving: a quarter would leave 225 < 2 x 200
    images.decode(path, 460, 3)
    assert len(sizes) == 1  # 900 < 2 x 460: no draft at all


def test_a_truncated_big_jpeg_is_still_refused(tmp_path):
    path = _photo(tmp_path / "big.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated"):
        images.decode(path, 16, 3)


def test_predict_on_a_big_jpeg_gives_the_same_class_as_on_its_full_decode(tmp_path, capsys):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "d", n_per_class=10, size=16, mode="RGB")
    model = tmp_path / "m.safetensors"
    assert run_main(["train", data, "-o", model, "--arch", "tiny", "--epochs", "2", "--batch-size", "8", "-q"],
                    capsys)[0] == 0
    big = _photo(tmp_path / "big.jpg")
    small = tmp_path / "full.png"
    Image.fromarray(_full_decode(big, 16).transpose(1, 2, 0)).save(small)
    code, out, err = run_main(["predict", big, small, "-m", model, "--format", "csv"], capsys)
    assert code == 0, err
    rows = out.strip().splitlines()[1:]
    assert rows[0].split(",")[1] == rows[1].split(",")[1]
