"""Time the JPEG scan-length check (data/jpeg_scan.py) against a whole `decode`, on a 12-megapixel JPEG and on
28x28 JPEGs. Run: python benchmarks/jpeg_scan_overhead.py (writes its files to a temporary folder)."""

import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.data.images import decode
from cnncli.data.jpeg_scan import shortfall


def _best_ms(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def _photo(h, w, seed=0):
    """Smooth gradients plus mild noise: roughly a photo's bits per pixel at quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for (h, w), size, repeat in (((3000, 4000), 64, 5), ((28, 28), 28, 200)):
            buf = io.BytesIO()
            Image.fromarray(_photo(h, w)).save(buf, "JPEG", quality=90)
            path = Path(tmp) / f"{w}x{h}.jpg"
            path.write_bytes(buf.getvalue())
            check = _best_ms(lambda: shortfall(path.read_bytes()), repeat)
            whole = _best_ms(lambda: decode(path, size, 3), repeat)
            print(f"{w}x{h} JPEG ({path.stat().st_size} bytes): check {check:.3f} ms, whole decode {whole:.3f} ms "
                  f"({100 * check / whole:.1f}%)")


if __name__ == "__main__":
    main()
