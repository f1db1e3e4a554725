"""``--dataset folder:DIR``: the user's own images, laid out one folder per class.

    DIR/cat/0001.png             DIR/train/cat/0001.png
    DIR/dog/0002.jpg     or      DIR/train/dog/...
    ...                          DIR/test/cat/...  (the same class folders)

Classes are the sub-folder names in sorted order (label 0 is the first), as in
torchvision's ``ImageFolder``.  Without ``train/`` and ``test/`` the samples are
split 80/20 by the seed, like ``npz:`` arrays.

The images are untrusted input, read on the trusted side with Pillow:

* only the image formats Pillow decodes natively are opened (no code runs); a file
  that is not an image is named in the error;
* Pillow's decompression-bomb guard stays on: an image above ``MAX_PIXELS`` is refused;
* every image must have the same size (no silent resizing, which would change what
  the model sees); colour images make the dataset RGB, otherwise it is grey-scale;
* the result goes through :func:`blindtrain.data.validate_arrays` like any user array.

Every problem is a :class:`~blindtrain.errors.UsageError` (exit 2) with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .data import Dataset, user_dataset, validate_arrays
from .errors import UsageError

#: file suffixes read as images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: the largest image (in pixels) accepted: a decompression bomb is refused before decoding
MAX_PIXELS = 2 ** 24


def _class_dirs(root: Path, source: str) -> list[Path]:
    dirs = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if len(dirs) < 2:
        raise UsageError(f"{source}: {root} needs one sub-folder per class (at least 2), found {len(dirs)}")
    return dirs


def _read_image(path: Path, source: str) -> np.ndarray:
    """One image as an H×W (grey) or H×W×3 (colour) uint8 array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise UsageError(f"{source}: {path} is {image.width}×{image.height}, above the "
                                     f"{MAX_PIXELS}-pixel limit")
                grey = image.mode in ("1", "L", "I", "I;16", "F")
                return np.asarray(image.convert("L" if grey else "RGB"))
    except UsageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(f"{source}: {path} is not a readable image ({type(exc).__name__})") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None


def _read_split(root: Path, classes: list[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise UsageError(f"{source}: {root} has no folder for class {name!r}")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"{source}: class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for path in files:
            images.append((path, _read_image(path, source)))
            labels.append(label)
    first_path, first = images[0]
    colour = any(array.ndim == 3 for _, array in images)
    stacked = []
    for path, array in images:
        if array.shape[:2] != first.shape[:2]:
            raise UsageError(f"{source}: {path} is {array.shape[1]}×{array.shape[0]} but {first_path} is "
                             f"{first.shape[1]}×{first.shape[0]}; all images must have one size")
        if colour and array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        stacked.append(array.transpose(2, 0, 1) if array.ndim == 3 else array)
    return np.stack(stacked).astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64)


def load_image_folder(name: str, seed: int = 0) -> Dataset:
    """``folder:DIR`` (see the module docstring) as a :class:`~blindtrain.data.Dataset`."""
    root = Path(name[len("folder:"):])
    source = f"--dataset {name}"
    if not root.is_dir():
        raise UsageError(f"{source}: no such directory {root}")
    train_root, test_root = root / "train", root / "test"
    if train_root.is_dir() != test_root.is_dir():
        raise UsageError(f"{source}: give both train/ and test/ sub-folders, or neither")
    split = train_root.is_dir()
    classes = [d.name for d in _class_dirs(train_root if split else root, source)]
    x, y = validate_arrays(*_read_split(train_root if split else root, classes, source), source=source)
    test = None
    if split:
        x_test, y_test = _read_split(test_root, classes, source)
        if x_test.shape[1:] != x.shape[1:]:
            raise UsageError(f"{source}: test images are {list(x_test.shape[1:])}, training images "
                             f"{list(x.shape[1:])}")
        test = validate_arrays(x_test, y_test, source=f"{source} (test)", sample_shape=tuple(x.shape[1:]))
    return user_dataset(name, (x, y), test, source=source, seed=seed)
