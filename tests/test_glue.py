"""Oracle tests of the layer glue: offloaded layers equal plain PyTorch (micrograd's pattern)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import blindtrain as bt
from blindtrain.glue import OffloadedConv2d, OffloadedLinear, OffloadedMatMul
from blindtrain.models import build
from blindtrain.nn import MatMul


def _compare(model: nn.Module, x: torch.Tensor, protocol: str, transport: str = "inproc"):
    reference = copy.deepcopy(model)
    with bt.Session(protocol=protocol, transport=transport, seed=None) as session:
        wrapped, _ = session.prepare(model)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = wrapped(x1), reference(x2)
        torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(y2)
        (y1 * weights).sum().backward()
        (y2 * weights).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
        for (name, p1), (_, p2) in zip(model.named_parameters(), reference.named_parameters()):
            torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-5, msg=name)
        return session.metrics()


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, False), (1, 2, True), (3, (1, 2), True)])
def test_conv2d_forward_and_both_gradients_match_pytorch(clear_protocol, stride, padding, bias):
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=stride, padding=padding, bias=bias), nn.ReLU(),
                          nn.Conv2d(5, 4, (2, 3), padding=padding, bias=bias))
    metrics = _compare(model, torch.randn(2, 3, 11, 9), clear_protocol)
    assert isinstance(model[0], OffloadedConv2d)
    # 2 layers × (forward, grad_input, grad_weight): the first layer's input needs a gradient here
    assert metrics["messages"] == 6


def test_linear_on_3d_input_matches_pytorch(clear_protocol):
    model = nn.Sequential(nn.Linear(6, 7), nn.GELU(), nn.Linear(7, 3, bias=False))
    _compare(model, torch.randn(2, 5, 6), clear_protocol)
    assert isinstance(model[0], OffloadedLinear)


def test_matmul_products_match_pytorch(clear_protocol):
    class Products(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)
            self.scores, self.mix = MatMul(), MatMul()

        def forward(self, x):
            q, k = self.q(x), self.k(x)
            attn = torch.softmax(self.scores(q, k.transpose(-2, -1)), -1)
            return self.mix(attn, k)

    model = Products()
    _compare(model, torch.randn(3, 5, 4), clear_protocol)
    assert isinstance(model.scores, OffloadedMatMul)


@pytest.mark.parametrize("name", ["lenet", "resnet18", "vit-tiny"])
def test_whole_models_match_pytorch(clear_protocol, name):
    kwargs = {"depth": 1, "dim": 16, "heads": 2} if name == "vit-tiny" else {}
    model = build(name, (3, 8, 8), 10, **kwargs).eval()  # eval: BatchNorm uses running stats
    _compare(model, torch.randn(2, 3, 8, 8), clear_protocol)


def test_parameters_and_state_dict_keys_are_preserved(clear_protocol):
    model = build("lenet", (1, 8, 8), 10)
    keys, params = list(model.state_dict()), [id(p) for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with bt.Session(protocol=clear_protocol) as session:
        wrapped, opt = session.prepare(model, optimizer)
        assert list(wrapped.state_dict()) == keys
        assert [id(p) for p in wrapped.parameters()] == params
        assert opt is optimizer
        assert [s.name for s in session.protocol.sites] == ["features.0", "features.3", "classifier.1",
                                                            "classifier.3", "classifier.5"]


def test_grouped_convolutions_stay_in_the_enclave(clear_protocol):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    metrics = _compare(model, torch.randn(1, 4, 5, 5), clear_protocol)
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1], OffloadedConv2d)
    assert metrics["messages"] == 3


def test_the_finiteness_check_is_one_reduction_but_never_fooled_by_overflow():
    from blindtrain.glue import all_finite

    assert all_finite(torch.randn(64, 32))
    big = torch.full((4, 4), 3e38)  # finite, but its sum overflows to inf: the elementwise test decides
    assert all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(8, 8)
        t[3, 5] = bad
        assert not all_finite(t)
    mixed = torch.tensor([float("inf"), -float("inf"), 1.0])  # inf + -inf = nan: still caught
    assert not all_finite(mixed)
    assert all_finite(torch.empty(0)) and all_finite(torch.arange(5))
