"""Tests for cnncli.data.images: every accepted format and mode, every kind of bad file, and a mutation fuzz."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from badfiles import BAD_FILES

from cnncli.data import images
from cnncli.errors import BadImageError
from cnncli.data.images import channel_stats, decode, has_image_extension, is_gray, normalize, read_size


def solid(mode, size, colour):
    return Image.new(mode, size, colour)


# ---------------------------------------------------------------- formats and modes


@pytest.mark.parametrize(
    "ext,kwargs,tol",
    [(".png", {}, 0), (".bmp", {}, 0), (".tif", {}, 0), (".gif", {}, 0), (".webp", {"lossless": True}, 0),
     (".jpg", {"quality": 95}, 6), (".webp", {"quality": 90}, 12)],
)
def test_formats_decode_to_expected_colour(tmp_path, ext, kwargs, tol):
    path = tmp_path / f"img{ext}"
    colour = (200, 60, 30)
    solid("RGB", (20, 12), colour).save(path, **kwargs)
    x = decode(path, 8, 3)
    assert x.shape == (3, 8, 8) and x.dtype == np.uint8
    for c in range(3):
        assert np.abs(x[c].astype(int) - colour[c]).max() <= tol + (12 if ext == ".gif" else 0)


def test_gray_decode_uses_luma(tmp_path):
    path = tmp_path / "c.png"
    solid("RGB", (10, 10), (255, 0, 0)).save(path)
    x = decode(path, 10, 1)
    assert x.shape == (1, 10, 10)
    assert int(x[0, 0, 0]) == Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))


def test_rgba_transparent_red_becomes_white_and_half_alpha_blends(tmp_path):
    path = tmp_path / "a.png"
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    im.paste((255, 0, 0, 128), (0, 0, 8, 4))
    im.save(path)
    x = decode(path, 8, 3)
    assert (x[:, 4:, :] == 255).all()  # fully transparent -> white
    assert tuple(x[:, 0, 0]) == (255, 127, 127)  # half transparent red over white


def test_palette_with_transparency_composited_on_white(tmp_path):
    path = tmp_path / "p.png"
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 4, 8))
    im.save(path, transparency=0)
    x = decode(path, 8, 3)
    assert (x[:, :, 4:] == 255).all()  # transparent black -> white
    assert (x[:, :, :4] == np.array([0, 0, 255])[:, None, None]).all()


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "p.gif"
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.save(path)
    x = decode(path, 8, 3)
    gray = is_gray(x)
    assert tuple(x[:, 3, 3]) == (10, 200, 30) and not gray


def test_la_transparent_is_white(tmp_path):
    path = tmp_path / "la.png"
    im = Image.new("LA", (8, 8), (0, 0))
    im.paste((0, 255), (0, 0, 8, 4))
    im.save(path)
    x = decode(path, 8, 3)
    gray = is_gray(x)
    assert gray
    assert (x[:, 4:] == 255).all() and (x[:, :4] == 0).all()


def test_gray_png_with_trns_transparency(tmp_path):
    path = tmp_path / "trns.png"
    im = Image.new("L", (8, 8), 7)
    im.save(path, transparency=7)
    assert (decode(path, 8, 1) == 255).all()


@pytest.mark.parametrize("value,expected", [(65535, 255), (32768, 128), (0, 0), (257, 1)])
def test_16_bit_is_scaled_not_clipped(tmp_path, value, expected):
    path = tmp_path / "deep.png"
    Image.new("I;16", (8, 8), value).save(path)
    assert Image.open(path).mode.startswith("I")
    x = decode(path, 8, 3)
    gray = is_gray(x)
    assert gray and (x == expected).all()


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    path = tmp_path / "f.tif"
    a = np.zeros((8, 8), np.float32)
    a[:, 4:] = 1.0
    Image.fromarray(a, "F").save(path)
    x = decode(path, 8, 1)
    assert (x[0, :, 4:] == 255).all() and (x[0, :, :4] == 0).all()


def test_float_tiff_out_of_range_is_min_max_scaled(tmp_path):
    path = tmp_path / "f.tif"
    a = np.full((8, 8), -1000.0, np.float32)
    a[:, 4:] = 3000.0
    Image.fromarray(a, "F").save(path)
    x = decode(path, 8, 1)
    assert (x[0, :, 4:] == 255).all() and (x[0, :, :4] == 0).all()


def test_mode_1_bilevel(tmp_path):
    path = tmp_path / "b.png"
    im = Image.new("1", (8, 8), 0)
    im.paste(1, (0, 0, 8, 4))
    im.save(path)
    x = decode(path, 8, 1)
    assert (x[0, :4] == 255).all() and (x[0, 4:] == 0).all()


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_converted(tmp_path, ext):
    path = tmp_path / f"cmyk{ext}"
    im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    im.paste((0, 255, 255, 0), (0, 0, 4, 8))  # no magenta/yellow ink removal -> red-ish
    im.save(path)
    assert Image.open(path).mode == "CMYK"
    x = decode(path, 8, 3)
    assert (x[:, :, 6:] >= 245).all()  # no ink -> white
    assert x[0, 4, 1] >= 240 and x[1, 4, 1] <= 15 and x[2, 4, 1] <= 15


def _half_image(w, h, vertical):
    """w x h L image, white in the top half (vertical=True) or left half."""
    a = np.zeros((h, w), np.uint8)
    if vertical:
        a[: h // 2] = 255
    else:
        a[:, : w // 2] = 255
    return Image.fromarray(a, "L")


def test_exif_orientation_6_swaps_width_and_height(tmp_path):
    # Stored 20 wide x 40 high, top half white. Displayed (rotated 90 degrees) it is 40 x 20 and split left/right.
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _half_image(20, 40, vertical=True).save(path, exif=exif, quality=95)
    x = decode(path, 20, 1)[0].astype(int)
    assert np.abs(x - x[0:1, :]).max() <= 20  # every row alike: the split runs vertically now
    assert abs(int(x[:, 0].mean()) - int(x[:, -1].mean())) > 200
    plain = tmp_path / "plain.jpg"
    _half_image(20, 40, vertical=True).save(plain, quality=95)
    y = decode(plain, 20, 1)[0].astype(int)
    assert abs(int(y[0].mean()) - int(y[-1].mean())) > 200  # without the tag the split stays horizontal


def test_corrupt_exif_falls_back_to_unrotated(tmp_path):
    path = tmp_path / "badexif.jpg"
    _half_image(16, 16, vertical=True).save(path, exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xffgarbage", quality=95)
    x = decode(path, 16, 1)[0].astype(int)
    assert x[:4].mean() > 200 and x[-4:].mean() < 50


def test_animated_gif_uses_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [solid("RGB", (8, 8), (255, 0, 0)), solid("RGB", (8, 8), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 2
    x = decode(path, 8, 3)
    assert x[0].min() > 240 and x[2].max() < 15


def test_aspect_rule_scales_shorter_side_and_centre_crops(tmp_path):
    path = tmp_path / "wide.png"
    a = np.zeros((20, 60), np.uint8)
    a[:, 20:40] = 255  # only the centre third is white
    Image.fromarray(a, "L").save(path)
    # The bilinear filter reads a little past the crop box, so only the outermost columns may darken slightly.
    x = decode(path, 10, 1)
    assert x.shape == (1, 10, 10) and (x[0, :, 1:-1] == 255).all() and x.min() > 200
    tall = tmp_path / "tall.png"
    Image.fromarray(a.T.copy(), "L").save(tall)
    y = decode(tall, 10, 1)
    assert (y[0, 1:-1, :] == 255).all() and y.min() > 200


def test_upscaling_small_image(tmp_path):
    path = tmp_path / "small.png"
    _half_image(4, 8, vertical=False).save(path)
    x = decode(path, 16, 1)
    assert x.shape == (1, 16, 16)
    assert x[0, :, :4].min() > 200 and x[0, :, -4:].max() < 50


@pytest.mark.parametrize("name", ["UPPER.PNG", "Photo.JPG", "scan.TIFF", "with space.png", "café 猫.png"])
def test_names_and_upper_case_extensions(tmp_path, name):
    path = tmp_path / name
    fmt = {".PNG": "PNG", ".JPG": "JPEG", ".TIFF": "TIFF", ".png": "PNG"}[Path(name).suffix]
    solid("RGB", (8, 8), (0, 128, 0)).save(path, format=fmt)
    assert has_image_extension(path)
    assert abs(int(decode(path, 8, 3)[1, 2, 2]) - 128) <= 3
    assert read_size(path) == (8, 8)


def test_has_image_extension_rejects_others():
    assert not has_image_extension("notes.txt")
    assert not has_image_extension("README")
    assert has_image_extension("a.b.Jpeg")


def test_is_gray_tells_sources_without_colour(tmp_path):
    gray_rgb = tmp_path / "grayish.png"
    solid("RGB", (8, 8), (90, 90, 90)).save(gray_rgb)
    colour = tmp_path / "colour.png"
    solid("RGB", (8, 8), (90, 91, 90)).save(colour)
    l_img = tmp_path / "l.png"
    solid("L", (8, 8), 90).save(l_img)
    assert is_gray(decode(gray_rgb, 8, 3)) is True
    assert is_gray(decode(colour, 8, 3)) is False
    x = decode(l_img, 8, 3)
    assert is_gray(x) and x.shape == (3, 8, 8)
    assert np.array_equal(x[:1], decode(l_img, 8, 1))


def test_read_size_is_width_height(tmp_path):
    path = tmp_path / "r.png"
    solid("L", (30, 20), 0).save(path)
    assert read_size(path) == (30, 20)


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("channels", [1, 3])
def test_bad_files_raise_bad_image_error_naming_file(tmp_path, name, channels):
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    data = make()
    path.write_bytes(data)
    with pytest.raises(BadImageError) as err:
        decode(path, 8, channels)
    msg = str(err.value)
    assert str(path) in msg and reason in msg and "\n" not in msg
    assert path.read_bytes() == data


def test_missing_file_is_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="cannot read file"):
        decode(tmp_path / "nope.png", 8, 1)
    with pytest.raises(BadImageError, match="cannot read file"):
        read_size(tmp_path / "nope.png")


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory):
    """A 10000 x 10000 bilevel PNG: about 12 kB on disk, 100 million pixels (above Pillow's default limit)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (10000, 10000)).save(path)
    return path


def test_decompression_bomb_default_limit(bomb_png):
    assert 10000 * 10000 > Image.MAX_IMAGE_PIXELS
    before = list(warnings.filters)
    data = bomb_png.read_bytes()
    with pytest.raises(BadImageError, match=r"decompression bomb \(100000000 pixels"):
        decode(bomb_png, 8, 1)
    assert warnings.filters == before  # the warning filter is restored
    assert bomb_png.read_bytes() == data


def test_decompression_bomb_even_when_warnings_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(path)  # 1600 pixels: above the lowered limit, below twice it
    with images.bombs_are_errors():  # an open block: decode adds no filter of its own
        warnings.simplefilter("ignore")  # and this one now hides Pillow's bomb warning
        with pytest.raises(BadImageError, match="decompression bomb"):
            decode(path, 8, 1)
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode(path, 8, 1)


def test_read_size_refuses_bad_files(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="not an image"):
        read_size(path)


# ---------------------------------------------------------------- fuzz


def _seed_files():
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # flip a few bytes
        for _ in range(int(rng.integers(1, 8))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 2:  # insert junk
        pos = int(rng.integers(0, len(b)))
        b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8))
    else:  # corrupt the header region, where sizes and lengths live
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, min(64, len(b))))] = int(rng.integers(0, 256))
    return bytes(b)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_fuzzed_files_only_raise_bad_image_error(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)  # keep corrupted huge headers cheap
    seed = _seed_files()[fmt]
    rng = np.random.default_rng(["PNG", "JPEG", "GIF", "WEBP"].index(fmt))
    path = tmp_path / f"fuzz.{fmt.lower()}"
    decoded = rejected = 0
    for _ in range(50):
        data = _mutate(seed, rng)
        path.write_bytes(data)
        try:
            x = decode(path, 8, 3)
        except BadImageError as exc:
            assert str(path) in str(exc)
            rejected += 1
        else:
            assert x.shape == (3, 8, 8) and x.dtype == np.uint8
            decoded += 1
        assert path.read_bytes() == data
    assert rejected > 0  # the mutations really produced bad files


# ---------------------------------------------------------------- normalize / stats


def test_normalize_matches_reference():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = normalize(x, mean, std)
    ref = (x / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_normalize_rejects_wrong_channel_count():
    with pytest.raises(ValueError):
        normalize(np.zeros((1, 3, 2, 2), np.uint8), [0.5], [0.5])


def test_channel_stats_matches_numpy_and_floors_std():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (6, 2, 5, 5), dtype=np.uint8)
    x[:, 1] = 77  # constant channel
    mean, std = channel_stats(x)
    f = x / 255.0
    assert mean[0] == pytest.approx(f[:, 0].mean(), abs=1e-9)
    assert std[0] == pytest.approx(f[:, 0].std(), abs=1e-9)
    assert mean[1] == pytest.approx(77 / 255, abs=1e-9)
    assert std[1] == 1e-3
    z = normalize(x, mean, std)
    assert np.isfinite(z).all()
    assert abs(float(z[:, 0].mean())) < 1e-4 and abs(float(z[:, 0].std()) - 1) < 1e-3
