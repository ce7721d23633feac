"""Build a realistic photo benchmark from the real photos shipped inside the scikit-image and scikit-learn wheels.

    python scripts/make_photo_set.py [--out photos] [--train 60] [--test 40] [--seed 0] [--big 4]

Four classes, each made of real colour photos:

    cat         scikit-image chelsea.png
    coffee      scikit-image coffee.png
    motorcycle  scikit-image motorcycle_left.png, motorcycle_right.png
    flower      scikit-learn flower.jpg

Every photo is split by columns: training crops come from its left 65 %, test crops from its right 35 %, so a
test crop never shares a pixel with any training crop. A crop covers 35-100 % of its region's shorter side with
an aspect ratio of 3:4 to 4:3 (landscape or portrait), is resized so its longer side is 120-400 px, and is saved
as a JPEG (quality 70-95). One crop in four is stored rotated with an EXIF orientation tag (3, 6 or 8) that
undoes the rotation, the way phones save pictures. Output:

    OUT/train/<class>/NNNN.jpg      --train per class
    OUT/test/<class>/NNNN.jpg       --test per class
    OUT-big/NN.jpg                  --big 12-megapixel (4000x3000) JPEGs for decode timing (beside OUT,
                                    so OUT stays a valid cnncli data folder)

The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {
    "cat": [("skimage", "chelsea.png")],
    "coffee": [("skimage", "coffee.png")],
    "motorcycle": [("skimage", "motorcycle_left.png"), ("skimage", "motorcycle_right.png")],
    "flower": [("sklearn", "flower.jpg")],
}
TRAIN_FRACTION = 0.65
# EXIF orientation tag -> the turn applied to the stored pixels; the decoder's exif_transpose undoes it.
_STORE_ROTATED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def source_photo(package: str, name: str) -> Image.Image:
    """One sample photo from inside an installed wheel, as RGB."""
    if package == "skimage":
        import skimage.data

        folder = Path(skimage.data.__file__).parent
    else:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
    return Image.open(folder / name).convert("RGB")


def region(im: Image.Image, part: str) -> Image.Image:
    """The left TRAIN_FRACTION of the photo for 'train', the rest for 'test'."""
    w, h = im.size
    cut = int(w * TRAIN_FRACTION)
    return im.crop((0, 0, cut, h) if part == "train" else (cut, 0, w, h))


def random_crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of 35-100 % of the shorter side, aspect 3:4-4:3, resized so its longer side is 120-400 px."""
    w, h = im.size
    short = min(w, h)
    side = rng.uniform(0.35, 1.0) * short
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, side * aspect ** 0.5), min(h, side / aspect ** 0.5)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = im.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
    longer = int(rng.integers(120, 401))
    scale = longer / max(crop.size)
    return crop.resize((max(8, round(crop.width * scale)), max(8, round(crop.height * scale))), Image.Resampling.LANCZOS)


def save_jpeg(im: Image.Image, path: Path, rng: np.random.Generator, exif_rotate: bool) -> None:
    """JPEG of quality 70-95; with exif_rotate the pixels are stored rotated and the EXIF tag undoes it."""
    quality = int(rng.integers(70, 96))
    if not exif_rotate:
        im.save(path, "JPEG", quality=quality)
        return
    tag = int(rng.choice(list(_STORE_ROTATED)))
    exif = Image.Exif()
    exif[0x0112] = tag
    im.transpose(_STORE_ROTATED[tag]).save(path, "JPEG", quality=quality, exif=exif.tobytes())


def big_jpeg(im: Image.Image, path: Path) -> None:
    """A 4000x3000 (12-megapixel) JPEG made by upscaling a photo, for decode timing."""
    im.resize((4000, 3000), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("photos"))
    ap.add_argument("--train", type=int, default=60, help="training crops per class")
    ap.add_argument("--test", type=int, default=40, help="test crops per class")
    ap.add_argument("--big", type=int, default=4, help="12-megapixel JPEGs to write for decode timing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for part, n in (("train", args.train), ("test", args.test)):
        if (args.out / part).exists():
            shutil.rmtree(args.out / part)
        for name, sources in CLASSES.items():
            folder = args.out / part / name
            folder.mkdir(parents=True)
            regions = [region(source_photo(*s), part) for s in sources]
            for i in range(n):
                crop = random_crop(regions[i % len(regions)], rng)
                save_jpeg(crop, folder / f"{i:04d}.jpg", rng, exif_rotate=rng.random() < 0.25)
        print(f"{args.out / part}: {n} crops per class ({', '.join(CLASSES)})")
    if args.big:
        big = args.out.with_name(args.out.name + "-big")
        big.mkdir(parents=True, exist_ok=True)
        photos = [source_photo(*s) for sources in CLASSES.values() for s in sources]
        for i in range(args.big):
            big_jpeg(photos[i % len(photos)], big / f"{i:02d}.jpg")
        print(f"{big}: {args.big} JPEGs of 4000x3000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
