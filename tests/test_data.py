"""Datasets: fixed splits, the synthetic set is learnable, shapes are what models expect."""

from __future__ import annotations

import torch

from blindtrain import data


def test_digits_split_is_fixed_by_seed():
    a, b, c = data.load_digits(0), data.load_digits(0), data.load_digits(1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def test_synthetic_is_cifar_shaped_and_linearly_learnable():
    ds = data.load_synthetic(0, train_size=1024, test_size=256)
    assert ds.input_shape == (3, 32, 32) and ds.x_train.dtype == torch.float32
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 32 * 32, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(ds.x_train.flatten(1)), ds.y_train).backward()
        optimizer.step()
    accuracy = (model(ds.x_test.flatten(1)).argmax(1) == ds.y_test).float().mean()
    assert accuracy > 0.5  # chance is 0.1


def test_batches_depend_on_seed_and_epoch_only():
    ds = data.load_digits(0)
    first = [y for _, y in ds.batches(batch_size=100, epoch=2, seed=5)]
    again = [y for _, y in ds.batches(batch_size=100, epoch=2, seed=5)]
    other = [y for _, y in ds.batches(batch_size=100, epoch=3, seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert sum(len(y) for y in first) == len(ds.y_train) and ds.steps_per_epoch(100) == len(first)


def test_validate_arrays_accepts_clean_data_and_names_each_defect():
    import numpy as np
    import pytest

    from blindtrain.errors import UsageError

    x = np.zeros((4, 2, 3), np.float32)
    y = np.array([0, 1, 2, 1])
    out_x, out_y = data.validate_arrays(x, y, source="d.npz", num_classes=3, sample_shape=(2, 3))
    assert out_x.shape == (4, 2, 3) and out_y.dtype == np.int64
    nan = x.copy()
    nan[1, 0, 0] = np.nan
    cases = [
        ((nan, y), {}, "NaN or infinite"),
        ((x, np.array([0, 1, 3, 1])), {"num_classes": 3}, "labels must lie in [0, 2]"),
        ((x, np.array([0, -1, 2, 1])), {}, "labels must lie in"),
        ((x, y[:3]), {}, "4 samples but 3 labels"),
        ((x[:0], y[:0]), {}, "non-empty batch"),
        ((x, y.astype(np.float32)), {}, "labels must be a list of integers"),
        ((np.array(["a", "b"]), y[:2]), {}, "samples must be numbers"),
        ((x, y), {"sample_shape": (3, 2)}, "each sample must have shape [3, 2]"),
        ((x + 300, y), {"pixel_range": (0, 255)}, "must lie in [0, 255]"),
    ]
    for (xs, ys), options, message in cases:
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
            data.validate_arrays(xs, ys, source="d.npz", **options)
