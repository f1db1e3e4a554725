"""Datasets.  Nothing is downloaded: ``digits`` ships with scikit-learn, ``synthetic`` is
generated from the seed, ``cifar10`` is read from a local ``--data-dir``.

Every loader returns a :class:`Dataset` of float32 image tensors ``N×C×H×W`` and
int64 labels, already normalized, with a fixed train/test split.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

DATASETS = ("digits", "synthetic", "cifar10")


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def batches(self, *, batch_size: int, epoch: int, seed: int):
        """Shuffled training batches of one epoch; the order is a function of (seed, epoch) only,
        so a resumed run sees the same batches as a straight one."""
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self.y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield self.x_train[index], self.y_train[index]

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.y_train) // batch_size)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits (1797 images, 10 classes); 80/20 stratified split by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.2, random_state=seed,
                                              stratify=bunch.target)
    x_tr, x_te = _standardize(torch.from_numpy(x_tr), torch.from_numpy(x_te))
    return Dataset("digits", x_tr, torch.from_numpy(y_tr).long(), x_te, torch.from_numpy(y_te).long(), 10)


def load_synthetic(seed: int = 0, *, train_size: int = 2048, test_size: int = 512,
                   shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> Dataset:
    """CIFAR-shaped, learnable: each class is a smooth random prototype image; samples are a
    randomly scaled and shifted prototype plus noise."""
    generator = torch.Generator().manual_seed(10_007 + seed)
    c, h, w = shape
    coarse = torch.randn(classes, c, max(h // 8, 1), max(w // 8, 1), generator=generator)
    prototypes = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(classes, (n,), generator=generator)
        scale = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=generator)
        shift = 0.3 * torch.randn(n, c, 1, 1, generator=generator)
        noise = 0.8 * torch.randn(n, c, h, w, generator=generator)
        return prototypes[labels] * scale + shift + noise, labels

    x_tr, y_tr = sample(train_size)
    x_te, y_te = sample(test_size)
    x_tr, x_te = _standardize(x_tr, x_te)
    return Dataset("synthetic", x_tr.float(), y_tr, x_te.float(), y_te, classes)


def _cifar_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise UsageError("dataset cifar10 needs --data-dir pointing at the python-pickle archive "
                         "(cifar-10-batches-py); blindtrain never downloads data")
    root = Path(data_dir)
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file():
            return candidate
    raise UsageError(f"no CIFAR-10 python batches (data_batch_1..5, test_batch) under {root}")


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 python batch holds: dicts, lists, bytes, str, ints and NumPy
    arrays and scalars of plain (non-object) dtypes.  Any other global — the way a pickle runs code
    (``__reduce__`` to ``os.system``, ``eval``, ...) — is refused before it is looked up."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("__builtin__", "bytes"), ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (not part of a CIFAR-10 archive)")
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        if name == "bytes":
            return _empty_bytes
        return super().find_class(module, name)


def _plain_dtype(*args, **kwargs) -> np.dtype:
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refused an array of Python objects")
    return dtype


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as protocol-2 pickles write an empty byte string; nothing else (``bytes(10**12)``)."""
    if args:
        raise pickle.UnpicklingError("refused bytes(...) with arguments")
    return b""


def restricted_load(handle) -> object:
    """``pickle.load`` of an untrusted archive file, admitting only plain data (see :class:`_ArchiveUnpickler`)."""
    return _ArchiveUnpickler(handle, encoding="bytes").load()


def validate_arrays(x, y, *, source: str, num_classes: int | None = None,
                    sample_shape: tuple[int, ...] | None = None, pixel_range: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Check untrusted samples ``x`` and labels ``y`` (from a file named in ``source``); exit 2 otherwise.

    ``x``: a numeric array (integers, or finite floats), at least one sample, each of ``sample_shape``
    if given, values within ``pixel_range`` if given; ``y``: integer labels in ``[0, num_classes)``
    (any number of classes ``>= 1`` when ``num_classes`` is ``None``), one per sample.
    Returns ``(x, y)`` as NumPy arrays, ``y`` as int64."""
    try:
        x = np.asarray(x)
        y = np.asarray(y)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{source}: not an array: {exc}") from None
    if x.dtype.kind not in "fiub" or x.dtype.hasobject:
        raise UsageError(f"{source}: samples must be numbers, got dtype {x.dtype}")
    if x.ndim < 2 or len(x) == 0:
        raise UsageError(f"{source}: expected a non-empty batch of samples (N x ...), got shape {list(x.shape)}")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise UsageError(f"{source}: each sample must have shape {list(sample_shape)}, got {list(x.shape[1:])}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UsageError(f"{source}: {int((~np.isfinite(x)).sum())} sample values are NaN or infinite")
    if pixel_range is not None and (x.min() < pixel_range[0] or x.max() > pixel_range[1]):
        raise UsageError(f"{source}: sample values must lie in [{pixel_range[0]}, {pixel_range[1]}], "
                         f"found [{x.min()}, {x.max()}]")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise UsageError(f"{source}: labels must be a list of integers, got {y.dtype} of shape {list(y.shape)}")
    if len(y) != len(x):
        raise UsageError(f"{source}: {len(x)} samples but {len(y)} labels")
    high = num_classes if num_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= high:
        raise UsageError(f"{source}: labels must lie in [0, {high - 1}], found [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = restricted_load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as exc:
        raise UsageError(f"cannot read CIFAR-10 batch {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UsageError(f"cannot read CIFAR-10 batch {path}: expected a dict with b'data' and b'labels', "
                         f"got {type(batch).__name__}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray):
        raise UsageError(f"CIFAR-10 batch {path}: b'data' must be an array, got {type(data).__name__}")
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in labels):
        raise UsageError(f"CIFAR-10 batch {path}: b'labels' must be a list of integers")
    if data.dtype != np.uint8:
        raise UsageError(f"CIFAR-10 batch {path}: pixels must be uint8, got {data.dtype}")
    data, labels = validate_arrays(data, np.asarray(labels, dtype=np.int64) if len(labels) else np.zeros(0, np.int64),
                                   source=f"CIFAR-10 batch {path}", num_classes=10, sample_shape=(3072,))
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | os.PathLike | None) -> Dataset:
    """The standard python-pickle CIFAR-10 archive from ``data_dir`` (never downloaded)."""
    root = _cifar_dir(data_dir)
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files:
        raise UsageError(f"no CIFAR-10 training batches (data_batch_*) under {root}")
    parts = [_read_batch(f) for f in train_files]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _read_batch(root / "test_batch")
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)

    def norm(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).float() / 255.0 - mean) / std

    return Dataset("cifar10", norm(x_tr), torch.from_numpy(y_tr), norm(x_te), torch.from_numpy(y_te), 10)


USER_PREFIXES = ("npz:", "folder:")


def is_user_dataset(name: str) -> bool:
    """``npz:path/to/file.npz`` names arrays of the user's own, ``folder:DIR`` an image folder."""
    return any(name.startswith(prefix) and len(name) > len(prefix) for prefix in USER_PREFIXES)


def known(name: str) -> bool:
    return name in DATASETS or is_user_dataset(name)


def _as_images(x: np.ndarray) -> np.ndarray:
    """Samples as C×H×W: ``(N, D)`` features become ``1×1×D``, ``(N, H, W)`` images ``1×H×W``."""
    if x.ndim == 2:
        return x[:, None, None, :]
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        return x
    raise UsageError(f"samples must be N×D, N×H×W or N×C×H×W, got shape {list(x.shape)}")


def load_npz(name: str, seed: int = 0) -> Dataset:
    """The user's arrays, ``npz:FILE``: ``x`` (samples) and ``y`` (integer labels from 0), and optionally
    ``x_test`` / ``y_test``; without them an 80/20 split by ``seed`` (stratified when every class has two
    samples).  Read with ``allow_pickle=False`` (an object array is refused, no code runs) and checked by
    :func:`validate_arrays`; standardized per channel with the training split's statistics."""
    path = Path(name[4:])
    source = f"--dataset {name}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file {path}") from None
    except (ValueError, OSError, EOFError) as exc:  # not an npz, or an object array (needs pickle)
        raise UsageError(f"{source}: not a readable .npz of numeric arrays ({str(exc).splitlines()[0]})") from None
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise UsageError(f"{source}: missing array(s) {', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UsageError(f"{source}: give both x_test and y_test, or neither")
    x, y = validate_arrays(arrays["x"], arrays["y"], source=f"{source} (x, y)")
    test = None
    if "x_test" in arrays:
        test = validate_arrays(arrays["x_test"], arrays["y_test"], source=f"{source} (x_test, y_test)",
                               sample_shape=tuple(x.shape[1:]))
    return user_dataset(name, (x, y), test, source=source, seed=seed)


def user_dataset(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray] | None, *,
                 source: str, seed: int) -> Dataset:
    """A :class:`Dataset` from validated user arrays (``x``: N×D, N×H×W or N×C×H×W; ``y``: int labels from 0):
    the given test split, or else an 80/20 split by ``seed`` (stratified when every class has two samples);
    standardized per channel with the training split's statistics."""
    x, y = train
    if test is not None:
        (x_tr, y_tr), (x_te, y_te) = train, test
    else:
        from sklearn.model_selection import train_test_split

        if len(y) < 5:
            raise UsageError(f"{source}: {len(y)} samples are too few to split into training and test sets")
        counts = np.bincount(y)
        stratify = y if counts[counts > 0].min() >= 2 else None
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=stratify)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    train_x, test_x = (torch.from_numpy(_as_images(a).astype(np.float32)) for a in (x_tr, x_te))
    train_x, test_x = _standardize(train_x, test_x)
    return Dataset(name, train_x, torch.from_numpy(y_tr).long(), test_x, torch.from_numpy(y_te).long(), classes)


def load(name: str, *, seed: int = 0, data_dir: str | os.PathLike | None = None) -> Dataset:
    if name.startswith("folder:") and is_user_dataset(name):
        from .imagefolder import load_image_folder

        return load_image_folder(name, seed)
    if is_user_dataset(name):
        return load_npz(name, seed)
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return load_synthetic(seed)
    if name == "cifar10":
        return load_cifar10(data_dir)
    raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}, npz:FILE or folder:DIR")
