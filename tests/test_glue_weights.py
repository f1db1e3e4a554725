"""Layers whose weight is not a plain parameter, and the user's hooks, under every training protocol:
parametrized weights (weight_norm, spectral_norm) are offloaded where the protocol reads the weight per
call and kept in the enclave (with the reason) where it keeps the parameter; old-style hooks stay in the
enclave; lazy modules need one forward first (a UsageError says so); hooks on replaced layers still fire.
Every case gives plain PyTorch's result."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from blindtrain import Session
from blindtrain.errors import UsageError
from blindtrain.glue import OffloadedLinear
from blindtrain.protocols import load_all

TRAINING = sorted(name for name, cls in load_all().items() if cls.info.trains)


def _old_weight_norm(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


WRAPPERS = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm,
            "old_weight_norm": _old_weight_norm}


def _build(first_layer):
    torch.manual_seed(0)
    return nn.Sequential(first_layer(), nn.ReLU(), nn.Linear(16, 3))


def _train_twice(protocol, first_layer, *, x=None, example_input=None):
    """Two SGD steps of the same model under ``protocol`` and in plain PyTorch; their outputs after."""
    model, reference = _build(first_layer), _build(first_layer)  # (old-style weight_norm cannot deepcopy)
    x = torch.randn(6, 8) if x is None else x
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    if example_input is not None:
        torch.manual_seed(1)
        reference(example_input)
    if example_input is not None:
        torch.manual_seed(1)
        model(example_input)  # lazy parameters exist once it ran; the optimizer needs them
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    session = Session(protocol=protocol, device="cpu", seed=0)
    prepared, optimizer = session.prepare(model, optimizer, example_input=example_input)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.2)
    for _ in range(2):
        for net, opt in ((prepared, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    prepared.eval(), reference.eval()
    with torch.no_grad():
        out, expected = prepared(x), reference(x)
    placement = session.placement
    session.close()
    return out, expected, placement


@pytest.mark.parametrize("protocol", TRAINING)
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_computed_weights_train_like_plain(protocol, wrapper):
    out, expected, placement = _train_twice(protocol, lambda: WRAPPERS[wrapper](nn.Linear(8, 16)))
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)
    first = placement.ops[0]
    cls = load_all()[protocol]
    if not cls.offloads_layers:
        return
    if wrapper != "old_weight_norm" and cls.weights_per_call:
        assert first.where == "worker" and "recomputed in the enclave" in first.reason
    else:
        assert first.where == "enclave" and "computed by" in first.reason


def test_a_parametrized_layer_is_really_offloaded_under_otp():
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 3))
    keys = set(model.state_dict())
    session = Session(protocol="otp", device="cpu", seed=0)
    model, _ = session.prepare(model, None)
    assert isinstance(model[0], OffloadedLinear) and set(model.state_dict()) == keys
    assert model[0].weight.shape == (16, 8)  # computed on access, as on the original
    before = session.metrics()["bytes_to_worker"]
    model(torch.randn(2, 8))
    assert session.metrics()["bytes_to_worker"] > before
    session.close()


@pytest.mark.parametrize("protocol", TRAINING)
def test_lazy_modules_need_one_forward_first(protocol):
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3))
    session = Session(protocol=protocol, device="cpu", seed=0)
    if load_all()[protocol].offloads_layers:
        with pytest.raises(UsageError, match="lazy parameter"):
            session.prepare(model, None)
    session.close()
    x = torch.randn(6, 8)
    session = Session(protocol=protocol, device="cpu", seed=0)  # example_input= materializes them
    model, _ = session.prepare(nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 3)), None, example_input=x)
    assert model[0].weight.shape == (16, 8) and model(x).shape == (6, 3)
    session.close()
    out, expected, _ = _train_twice(protocol, lambda: nn.LazyLinear(16), x=x, example_input=x)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("protocol", TRAINING)
def test_the_users_hooks_on_a_replaced_layer_still_fire(protocol):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    seen = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    session = Session(protocol=protocol, device="cpu", seed=0)
    model, _ = session.prepare(model, None)
    model(torch.randn(2, 8))
    assert seen == [torch.Size([2, 16])]
    session.close()
