"""The model factory adapts every model to the dataset's input shape."""

from __future__ import annotations

import pytest
import torch

from blindtrain.errors import UsageError
from blindtrain.models import ACTIVATIONS, MODELS, build


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_takes_every_dataset_shape(name, shape):
    kwargs = {"depth": 2} if name == "vit-tiny" else {}
    if name == "resnet50" and shape == (3, 32, 32):
        kwargs = {}
    model = build(name, shape, 10, **kwargs)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_activations(activation):
    model = build("mlp", (1, 8, 8), 10, hidden=(16, 8), activation=activation)
    assert isinstance(model[2], ACTIVATIONS[activation])
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_standard_sizes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 11.0e6 < count(build("resnet18", (3, 32, 32), 10)) < 11.3e6
    assert 23.4e6 < count(build("resnet50", (3, 32, 32), 10)) < 23.6e6
    assert 5.3e6 < count(build("vit-tiny", (3, 32, 32), 10)) < 5.6e6


def test_bad_model_arguments():
    with pytest.raises(UsageError):
        build("vit-tiny", (3, 30, 30), 10)
    with pytest.raises(UsageError):
        build("mlp", (1, 8, 8), 10, activation="tanhh")
    with pytest.raises(UsageError):
        build("alexnet", (1, 8, 8), 10)
