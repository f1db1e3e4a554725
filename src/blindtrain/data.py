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


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if len(data) != len(labels):
        raise UsageError(f"CIFAR-10 batch {path} has {len(data)} images but {len(labels)} labels")
    return data, labels


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


def load(name: str, *, seed: int = 0, data_dir: str | os.PathLike | None = None) -> Dataset:
    if name == "digits":
        return load_digits(seed)
    if name == "synthetic":
        return load_synthetic(seed)
    if name == "cifar10":
        return load_cifar10(data_dir)
    raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
