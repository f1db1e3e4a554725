"""Conv2d layers with any padding ('same', 'valid', even-kernel 'same', reflect, replicate, circular) are
offloaded under every protocol that offloads layers, and give plain PyTorch's forward and gradients; the
placement says so."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import blindtrain as bt
from blindtrain import Session
from blindtrain.glue import ConvPadding, OffloadedConv2d
from blindtrain.protocols import load_all

OFFLOADING = sorted(name for name, cls in load_all().items() if cls.offloads_layers and cls.info.trains)
PADDINGS = [dict(padding="same"), dict(padding="valid"), dict(padding="same", kernel_size=4),
            dict(padding=1, padding_mode="reflect"), dict(padding=(1, 2), padding_mode="replicate"),
            dict(padding=1, padding_mode="circular"), dict(padding="same", kernel_size=3, dilation=2)]


def _model(spec):
    torch.manual_seed(0)
    spec = {"kernel_size": 3, **spec}
    # a 1×1 conv in front: its weight gradient needs the padded conv's input gradient
    return nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 4, **spec), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


@pytest.mark.parametrize("spec", PADDINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_padding_is_described_exactly(spec):
    conv = nn.Conv2d(2, 4, **{"kernel_size": 3, **spec})
    padding = ConvPadding.of(conv)
    x = torch.randn(1, 2, 7, 7)
    padded = x if padding.explicit is None else nn.functional.pad(x, padding.explicit, mode=padding.mode)
    ours = nn.functional.conv2d(padded, conv.weight, conv.bias, conv.stride, padding.numeric, conv.dilation)
    torch.testing.assert_close(ours, conv(x))


@pytest.mark.parametrize("protocol", OFFLOADING)
@pytest.mark.parametrize("spec", PADDINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_padded_convs_are_offloaded_and_match_plain(protocol, spec):
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 0])
    model = _model(spec)
    model(x)  # materialize the lazy head
    reference = copy.deepcopy(model)
    session = Session(protocol=protocol, device="cpu", seed=0)
    model, optimizer = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.5))
    assert isinstance(model[1], OffloadedConv2d)
    assert session.placement.ops[1].where == "worker"
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    tolerance = dict(rtol=1e-3, atol=1e-4)
    losses = []
    for net, opt in ((model, optimizer), (reference, reference_optimizer)):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], **tolerance)
    model.eval(), reference.eval()
    with torch.no_grad():  # after one step: both gradients of every layer went into these outputs
        moved = reference(x)
        torch.testing.assert_close(model(x), moved, **tolerance)
        assert not torch.allclose(moved, _before(spec, x), atol=1e-3)  # the step moved the outputs
    session.close()


def _before(spec, x):
    model = _model(spec)
    model(x)
    return model.eval()(x)


def test_validate_reports_padded_convs_on_the_worker():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"))
    placed = bt.validate(model, "tempo", example_input=torch.randn(1, 2, 5, 5)).ops[0]
    assert placed.where == "worker" and "reflect padding applied in the enclave" in placed.reason


def test_fused_tempo_layers_keep_their_padding():
    """``--fuse-activations`` replaces the offloaded conv: the enclave-side padding must come along."""
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 3))
    reference = copy.deepcopy(model)
    session = Session(protocol="tempo", device="cpu", seed=0, fuse_activations=True)
    model, _ = session.prepare(model, None)
    assert type(model[0]).__name__ == "FusedOffloaded"
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    session.close()
