"""JPEGs cut short before an EOI marker (libjpeg pads them silently): refused where a sound bound proves it,
and no valid JPEG refused (generated corpus plus the real photos shipped inside scikit-learn and friends)."""

import glob
import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from badfiles import _photo_like_jpeg, jpeg_claiming, jpeg_cut_with_eoi
from cnncli.data.images import decode
from cnncli.errors import BadImageError
from conftest import make_image_folder
from robust_helpers import FAST, run_main


def _jpeg(arr, mode=None, **options):
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, "JPEG", **options)
    return buf.getvalue()


def _corpus():
    """(name, bytes) of valid JPEGs: sizes 8 px to 640 px, gray/RGB/CMYK, quality 1..100, baseline, optimised,
    progressive, restart markers, every chroma subsampling, EXIF, flat, smooth and noisy content."""
    rng = np.random.default_rng(7)
    for h, w in ((8, 8), (9, 13), (28, 28), (75, 100), (480, 640)):
        y, x = np.mgrid[0:h, 0:w]
        contents = {
            "flat": np.full((h, w, 3), 128, np.uint8),
            "black": np.zeros((h, w, 3), np.uint8),
            "smooth": np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1).astype(np.uint8),
            "noise": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        }
        for label, arr in contents.items():
            for q in (1, 10, 50, 75, 95, 100):
                for mode in (None, "L", "CMYK"):
                    yield f"{label}-{w}x{h}-q{q}-{mode}", _jpeg(arr, mode, quality=q)
            yield f"{label}-{w}x{h}-opt", _jpeg(arr, quality=90, optimize=True)
            yield f"{label}-{w}x{h}-prog", _jpeg(arr, quality=75, progressive=True)
            yield f"{label}-{w}x{h}-prog-L", _jpeg(arr, "L", quality=30, progressive=True, optimize=True)
            yield f"{label}-{w}x{h}-rst", _jpeg(arr, quality=80, restart_marker_blocks=1)
            for sub in (0, 1, 2):
                yield f"{label}-{w}x{h}-sub{sub}", _jpeg(arr, quality=60, subsampling=sub)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated, like a phone picture
    exif[0x010F] = "Phone maker"
    yield "exif", _jpeg(np.full((40, 30, 3), 90, np.uint8), quality=92, exif=exif.tobytes())


def _shipped_photos():
    """Real JPEG photos inside installed packages (scikit-learn is a test dependency, the others optional)."""
    found = []
    for package in ("sklearn", "skimage", "imageio", "matplotlib"):
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            root = os.path.dirname(spec.origin)
            found += glob.glob(os.path.join(root, "**", "*.jp*g"), recursive=True)
    return sorted(found)


def test_no_valid_jpeg_is_refused(tmp_path):
    paths = []
    for name, data in _corpus():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        paths.append(path)
    photos = _shipped_photos()
    assert sum("sklearn" in p for p in photos) >= 2, photos  # china.jpg and flower.jpg at least
    for path in [*paths, *photos]:
        for channels in (1, 3):
            out = decode(path, 16, channels)
            assert out.shape == (channels, 16, 16), path


@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"subsampling": 0}, {"progressive": True}])
def test_a_jpeg_cut_to_a_twentieth_before_an_eoi_is_refused(tmp_path, options):
    full = _photo_like_jpeg((240, 320), quality=75, **options)
    (tmp_path / "full.jpg").write_bytes(full)
    assert decode(tmp_path / "full.jpg", 28, 3).shape == (3, 28, 28)
    (tmp_path / "cut.jpg").write_bytes(jpeg_cut_with_eoi(full, 0.05))
    with pytest.raises(BadImageError, match=r"cut\.jpg: truncated image \(JPEG scan data too short"):
        decode(tmp_path / "cut.jpg", 28, 3)


def test_a_header_claiming_far_more_pixels_than_its_data_is_refused(tmp_path):
    path = tmp_path / "liar.jpg"
    path.write_bytes(jpeg_claiming(_jpeg(np.full((16, 16, 3), 200, np.uint8)), 20000, 4000))
    with pytest.raises(BadImageError, match=r"liar\.jpg: truncated image .*20000x4000"):
        decode(path, 28, 1)


def test_a_cut_between_restart_intervals_is_refused(tmp_path):
    """With restart markers, a missing interval is caught even when the bits left would suffice."""
    rng = np.random.default_rng(3)
    full = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=95, restart_marker_blocks=1)
    path = tmp_path / "rst.jpg"
    path.write_bytes(jpeg_cut_with_eoi(full, 0.5))
    with pytest.raises(BadImageError, match=r"restart markers"):
        decode(path, 28, 3)


def test_train_strict_stops_at_a_jpeg_cut_short_before_an_eoi(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", n_per_class=6, size=8)
    cut = data / "dog" / "cut.jpg"
    cut.write_bytes(jpeg_cut_with_eoi(_photo_like_jpeg((240, 320)), 0.05))
    target = tmp_path / "m.safetensors"
    code, out, err = run_main(["train", str(data), "-o", str(target), *FAST, "--epochs", "1", "--strict"], capsys)
    assert code == 65, err
    assert out == ""
    assert f"{cut}: truncated image (JPEG scan data too short" in err
    assert not target.exists()
