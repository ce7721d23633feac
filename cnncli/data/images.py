"""Decoding image files into uint8 arrays: the one decoder that train, eval and predict all use.

Rules, applied in this order by `decode`:

1. The file is opened by its content (not its extension) and only these Pillow formats are accepted:
   PNG, JPEG, GIF, BMP, WEBP, TIFF. Anything else (EPS, PDF, ICO, ...) is "not an image or unsupported format".
2. Images with more than `PIL.Image.MAX_IMAGE_PIXELS` pixels (about 89 million by default) are refused as
   decompression bombs; so are PNG text chunks that decompress to more than Pillow's limit.
3. The whole image is decoded (a truncated file is an error, never silently padded), then only the first frame
   of an animation is used. libjpeg pads a JPEG cut short before an EOI marker without an error, so JPEG scan
   data is also checked against a sound lower bound for the declared size (data/jpeg_scan.py says what that
   catches and what it cannot).
4. The EXIF orientation tag is applied; a corrupt EXIF block is ignored (the image is used unrotated).
5. Transparency (RGBA, LA, PA, palette or tRNS transparency) is composited onto a WHITE background.
   16-bit images are scaled to 8 bits (65535 -> 255, 32768 -> 128), never clipped; 32-bit integer images
   whose values fit in 0..65535 are treated as 16-bit, others are min-max scaled; float images with values in
   [0, 1] are multiplied by 255, in [0, 255] used as is, otherwise min-max scaled (NaN -> 0). CMYK, YCbCr
   and other colour modes are converted to RGB by Pillow.
6. Gray output uses Pillow's ITU-R 601-2 luma conversion of colour images.
7. A JPEG much larger than `size` is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft(), JPEG's own DCT
   scaling) as long as its shorter side stays at least 2 x `size`; the resize below then works from that.
8. Resizing (bilinear, with antialiasing when shrinking) follows the `resize` rule (RESIZE_RULES):
   "crop" scales the SHORTER side to `size` and keeps the centre `size` x `size` square; "squash" scales the
   whole image to `size` x `size` (the aspect ratio is not kept, nothing is cut); "pad" scales the LONGER side
   to `size` and centres the image on a black `size` x `size` square (letterbox). Images with a side shorter
   than `MIN_SIDE` (4) pixels are refused as "image too small".

Every failure raises BadImageError("<path>: <short reason>"). Files are only ever opened for reading.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from cnncli.data.jpeg_scan import shortfall
from cnncli.data.sources import open_source, read_bytes  # noqa: F401  (read_bytes: the decode cache's)
from cnncli.errors import BadImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MIN_SIDE = 4
RESIZE_RULES = ("crop", "squash", "pad")  # see rule 8 above; "crop" is what files without a rule used
# Bump when `decode` gives other pixels for the same file and settings: persistent decode caches key on it.
DECODER_REVISION = 1

_ORIENTATION_TAG = 0x0112


def has_image_extension(path: str | os.PathLike) -> bool:
    """True if the file name ends in one of IMAGE_EXTENSIONS (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _pixel_limit() -> int | None:
    return Image.MAX_IMAGE_PIXELS


def _pillow_reason(exc: BaseException) -> str:
    """A short, readable reason for anything Pillow (or numpy) raised while reading an image."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", msg)
        return f"decompression bomb ({found.group(1)} pixels)" if found else "decompression bomb"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image or unsupported format"
    if "Decompressed data too large" in msg or "Too much memory used in text chunks" in msg:
        return "decompression bomb (PNG text chunk too large)"
    if isinstance(exc, MemoryError):
        return "image too large to decode (out of memory)"
    low = msg.lower()
    if "truncated" in low or "broken data stream" in low or isinstance(exc, EOFError):
        return f"truncated image ({msg})" if msg else "truncated image"
    if msg:
        return f"cannot decode image ({msg})"
    return f"cannot decode image ({type(exc).__name__})"


def _open(path: str | os.PathLike, fp) -> Image.Image:
    """Open by content with the format allow-list and the pixel limit enforced."""
    im = Image.open(fp, formats=ALLOWED_FORMATS)
    w, h = im.size
    limit = _pixel_limit()
    # Checked here too (not only via Pillow's warning) so the limit holds even where warnings are filtered.
    if limit is not None and w * h > limit:
        raise BadImageError(f"{path}: decompression bomb ({w * h} pixels > limit {limit})")
    return im


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            out = ImageOps.exif_transpose(im)
            if out is not None:
                return out
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the picture
        pass
    return im


def _scale_to_u8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer and float pixels -> uint8 (H, W), scaled rather than clipped."""
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 65535:
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    span = hi - lo
    if span == 0:
        return np.zeros(a.shape, np.uint8)
    return ((a - lo) * 255 // span).astype(np.uint8)


def _on_white(a: np.ndarray) -> np.ndarray:
    """(H, W, K+1) uint8 with alpha last -> (H, W, K) uint8 composited onto white."""
    alpha = a[..., -1:].astype(np.uint16)
    colour = a[..., :-1].astype(np.uint16)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> an 'L' or 'RGB' image without alpha."""
    mode = im.mode
    if mode in ("L", "RGB") and "transparency" not in im.info:
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_u8(np.asarray(im), mode), "L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
        if not has_alpha:
            return im
    elif mode in ("L", "RGB"):  # tRNS transparency on a gray or RGB image
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    if mode in ("LA", "La"):
        im = im.convert("LA") if mode == "La" else im
        return Image.fromarray(_on_white(np.asarray(im))[..., 0], "L")
    if mode in ("RGBA", "RGBa"):
        im = im.convert("RGBA") if mode == "RGBa" else im
        return Image.fromarray(_on_white(np.asarray(im)), "RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _fit(im: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """A `size` x `size` image by the `resize` rule (module docstring, rule 8), in one resampling pass."""
    w, h = im.size
    if w == size and h == size:
        return im
    if resize == "squash":
        return im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if resize == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
        canvas = Image.new(im.mode, (size, size))  # black (0) in every mode the decoder produces
        canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0),
                     ((size - nw) // 2, (size - nh) // 2))
        return canvas
    m = min(w, h)
    box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
    return im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


DRAFT_MARGIN = 2  # JPEG DCT scaling keeps the shorter side at least this many times the target size


def _draft(im: Image.Image, size: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper than a full decode) when its shorter
    side stays >= DRAFT_MARGIN * size, so the bilinear resize that follows still averages over 2+ pixels per
    output pixel. Other formats, and JPEGs too small to shrink, are left alone. Mode is never changed here."""
    if im.format != "JPEG":
        return
    w, h = im.size
    scale = min(w, h) / (DRAFT_MARGIN * size)
    if scale >= 2:
        # draft() picks the largest reduction that keeps the image at least this big on both sides.
        im.draft(im.mode, (math.ceil(w / scale), math.ceil(h / scale)))


def _check_jpeg_length(path: str | os.PathLike, im: Image.Image, fp) -> None:
    """libjpeg pads a JPEG cut short before an EOI marker without an error; refuse the provable cases."""
    if im.format != "JPEG":
        return
    fp.seek(0)
    reason = shortfall(fp.read())
    if reason:
        raise BadImageError(f"{path}: truncated image ({reason})")


def _decode(path: str | os.PathLike, size: int, rgb: bool, resize: str = "crop",
            content: bytes | None = None) -> np.ndarray:
    """Core of `decode`, without warning handling: uint8 (H, W) for a gray source (even with rgb=True) or
    luma (rgb=False), (H, W, 3) for a colour source with rgb=True."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    fp = open_source(path, content)
    try:
        with fp:
            im = _open(path, fp)
            w, h = im.size
            if w < MIN_SIDE or h < MIN_SIDE:
                raise BadImageError(f"{path}: image too small ({w}x{h}; each side must be >= {MIN_SIDE} px)")
            _draft(im, size)
            im.load()  # decode everything now: verify() accepts a half JPEG
            _check_jpeg_length(path, im, fp)
            im = _exif_transpose(im)
            im = _to_8bit(im)
            if not rgb and im.mode == "RGB":
                im = im.convert("L")
            im = _fit(im, size, resize)
            arr = np.asarray(im, dtype=np.uint8)
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad input; all mean "bad file"
        raise BadImageError(f"{path}: {_pillow_reason(exc)}") from exc
    return arr


_open_blocks = 0  # how many bombs_are_errors() blocks are open (process-wide, like the filters they set)


class _BombsAreErrors(warnings.catch_warnings):
    """Turn Pillow's DecompressionBombWarning into an exception, and silence Pillow's other warnings
    (e.g. "Corrupt EXIF data", which the decoder already tolerates), for the duration of a block.

    warnings filters are process-wide and catch_warnings is not thread-safe, so concurrent decoders share one
    such block opened by the caller of the thread pool (see folders.load_images); `decode` opens its own only
    when none is open.
    """

    def __enter__(self):
        global _open_blocks
        out = super().__enter__()
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _open_blocks += 1
        return out

    def __exit__(self, *exc):
        global _open_blocks
        _open_blocks -= 1
        return super().__exit__(*exc)


def bombs_are_errors() -> warnings.catch_warnings:
    """Context manager: within it, Pillow's DecompressionBombWarning is raised (and reported as a bad image)
    and Pillow's other warnings are silenced."""
    return _BombsAreErrors()


def decode(path: str | os.PathLike, size: int, channels: int, resize: str = "crop",
           content: bytes | None = None) -> np.ndarray:
    """Read one image file as uint8 of shape (channels, size, size); channels is 1 (gray) or 3 (RGB).

    The one decoder behind train, eval and predict (rules in the module docstring). With channels=3 a source
    without colour comes out with three equal channels, so `is_gray(x)` tells whether the source was gray
    (a gray mode, or colour pixels that are all gray). `content`: the file's bytes, already read by the caller
    (the decode cache hashes exactly the bytes it decodes); `path` then only names the file in errors.
    Raises BadImageError("<path>: <reason>") for anything that is not a readable image, ValueError for a bad
    size, channel count or resize rule (RESIZE_RULES).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resize not in RESIZE_RULES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_RULES)}, got {resize!r}")
    if _open_blocks:  # the caller's block covers every thread
        arr = _decode(path, size, channels == 3, resize, content)
    else:
        with bombs_are_errors():
            arr = _decode(path, size, channels == 3, resize, content)
    return to_chw(arr, channels)


def is_gray(x: np.ndarray) -> bool:
    """True when a uint8 (C, H, W) image has no colour: one channel, or all channels equal."""
    return bool((x[1:] == x[:1]).all())


def to_chw(arr: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> contiguous (channels, H, W) uint8; a 2-D gray image is replicated."""
    if arr.ndim == 2:
        return np.ascontiguousarray(np.broadcast_to(arr, (channels, *arr.shape)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_size(path: str | os.PathLike, mode: bool = False) -> tuple:
    """(width, height) from the file header only, without decoding pixels (EXIF rotation not applied); with
    mode=True (width, height, Pillow mode such as "L" or "RGB").

    Raises BadImageError if the file is not an accepted image format or is a decompression bomb.
    """
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        with fp, warnings.catch_warnings():
            # Pillow's own warnings (e.g. "Corrupt EXIF data" while it reads the header) would reach stderr as
            # raw multi-line Python warnings; the decoder tolerates such files, so the header read does too.
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(path, fp)
            return (*im.size, im.mode) if mode else im.size
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BadImageError(f"{path}: {_pillow_reason(exc)}") from exc


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C, H, W) computed as (x / 255 - mean[c]) / std[c].

    mean and std are per channel in [0, 1] units (as from `channel_stats`). One multiply-add per element,
    in float32, with no float64 temporaries.
    """
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_a = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.size != c or std_a.size != c:
        raise ValueError(f"mean/std need {c} values, got {mean_a.size} and {std_a.size}")
    scale = (1.0 / (255.0 * std_a)).astype(np.float32).reshape(1, c, 1, 1)
    bias = (-mean_a / std_a).astype(np.float32).reshape(1, c, 1, 1)
    out = np.empty(x.shape, dtype=np.float32)
    np.multiply(x, scale, out=out)
    out += bias
    return out


def input_scaling(x: np.ndarray) -> tuple[list[float], list[float]]:
    """(mean, std) per channel for `normalize`, from uint8 training images (N, C, H, W): colour (C = 3) is only
    scaled (mean 0, std 1; standardising cost photo accuracy, README "Real photos"), gray gets channel_stats."""
    if x.ndim == 4 and x.shape[1] == 3:
        return [0.0] * 3, [1.0] * 3
    return channel_stats(x)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images, in [0, 1] units.

    Exact (computed from a 256-bin histogram per channel). std is floored at 1e-3 so constant images
    never cause a division by zero in `normalize`.
    """
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = hist.sum()
        if total == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        m = float(hist @ levels / total)
        var = float(hist @ (levels - m) ** 2 / total)
        means.append(m)
        stds.append(max(var**0.5, 1e-3))
    return means, stds
