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
