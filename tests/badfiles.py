"""One catalogue of bad image files, shared by the decoder's tests and the command-level fault tests."""

import io

import numpy as np
from PIL import Image, PngImagePlugin


def png_bytes(arr):
    """A PNG of the uint8 array arr (H, W) or (H, W, 3)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _photo_like_jpeg(size=(96, 128), **options):
    """A smooth colour JPEG (gradients), like a photo's sky: cheap to code, so its scan is short."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    arr = np.stack([x * 255 // size[1], y * 255 // size[0], (x + y) * 255 // sum(size)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **options)
    return buf.getvalue()


def jpeg_cut_with_eoi(data, keep):
    """The JPEG bytes with only the first `keep` fraction of the (first) scan's data, then an EOI marker."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data[: start + int((len(data) - start) * keep)] + b"\xff\xd9"


def jpeg_claiming(data, width, height):
    """The JPEG bytes with the frame header (SOF0) rewritten to claim width x height."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]


def _noise_png():
    return png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))


def _ztxt_bomb():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (4 * 1024 * 1024), zip=True)  # Pillow refuses text chunks over 1 MB
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _pixel_bomb():
    buf = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buf, "PNG")  # ~12 kB on disk, 100 million pixels
    return buf.getvalue()


def _saved(fmt, mode="RGB", size=(10, 10)):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    return buf.getvalue()


# file name -> (function making its bytes, words the skip reason must contain)
BAD_FILES = {
    "text.jpg": (lambda: b"hello, this is not an image\n" * 10, "not an image"),
    "empty.png": (lambda: b"", "empty file"),
    "cut.jpg": (lambda: _jpeg()[: len(_jpeg()) // 2], "truncated"),  # passes Image.verify(), fails a decode
    # libjpeg pads these without an error: caught by the scan-length check (data/jpeg_scan.py)
    "cut-eoi.jpg": (lambda: jpeg_cut_with_eoi(_photo_like_jpeg(), 0.05), "truncated"),
    "liar.jpg": (lambda: jpeg_claiming(_photo_like_jpeg((16, 16)), 20000, 4000), "truncated"),
    "cut.png": (lambda: _noise_png()[: len(_noise_png()) // 2], "truncated"),
    "bomb.png": (_pixel_bomb, "decompression bomb"),
    "ztxt.png": (_ztxt_bomb, "decompression bomb"),
    "one.png": (lambda: _saved("PNG", "L", (1, 1)), "image too small (1x1"),
    "thin.png": (lambda: _saved("PNG", "L", (3, 50)), "image too small (3x50"),
    "eps.png": (lambda: _saved("EPS"), "not an image"),
    "pdf.png": (lambda: _saved("PDF"), "not an image"),
}
