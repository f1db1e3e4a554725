"""Oracle tests: each tempo-obfuscated op (forward, input gradient, weight gradient) equals plain PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import blindtrain as bt
from blindtrain.nn import MatMul


def _oracle(model, x, *, workers=1, transport="inproc", tol=1e-5):
    """Forward, input gradient and (enclave-update mode) weight gradients vs the unwrapped model."""
    reference = copy.deepcopy(model)
    with bt.Session(protocol="tempo", enclave_key=bytes(32), seed=None, device="cpu", transport=transport,
                    update="enclave", workers=workers) as session:
        optimizer = torch.optim.Adam(model.parameters())  # non-SGD: the gradient comes back to the enclave
        wrapped, _ = session.prepare(model, optimizer)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = wrapped(x1), reference(x2)
        torch.testing.assert_close(y1, y2, rtol=tol, atol=tol)
        weights = torch.randn_like(y2)
        (y1 * weights).sum().backward()
        (y2 * weights).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=tol, atol=tol)
        for (name, p1), (_, p2) in zip(model.named_parameters(), reference.named_parameters()):
            torch.testing.assert_close(p1.grad, p2.grad, rtol=tol, atol=tol, msg=name)
        return session.metrics()


def test_linear_matches_pytorch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 17), nn.ReLU(), nn.Linear(17, 5, bias=False))
    metrics = _oracle(model, torch.randn(9, 13))
    assert metrics["integrity_failures"] == 0 and metrics["integrity_checks"] >= 6


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, (1, 2))])
def test_conv2d_matches_pytorch(stride, padding):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=stride, padding=padding), nn.ReLU(),
                          nn.Conv2d(6, 4, (2, 3), padding=padding, bias=False))
    _oracle(model, torch.randn(4, 3, 11, 9))


def test_attention_products_match_pytorch():
    class Products(nn.Module):
        def __init__(self):
            super().__init__()
            self.scores, self.mix = MatMul(), MatMul()
            self.lin = nn.Linear(6, 6)

        def forward(self, x):
            q = self.lin(x)
            return self.mix(torch.softmax(self.scores(q, x.transpose(-2, -1)), -1), q)

    torch.manual_seed(0)
    _oracle(Products(), torch.randn(2, 3, 7, 6))


@pytest.mark.parametrize("transport", ["inproc", "process"])
def test_two_workers_split_by_output_blocks(transport):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 25, 7))
    metrics = _oracle(model, torch.randn(3, 3, 5, 5), workers=2, transport=transport)
    assert set(metrics["per_worker"]) == {"main0", "main1"}
    assert all(row["messages"] > 0 for row in metrics["per_worker"].values())


def test_encode_decode_is_exact():
    from blindtrain.protocols.tempo import Tempo

    x = torch.randn(5, 7, 3, 2)
    p0, p1 = torch.randperm(5), torch.randperm(7)
    s0 = torch.tensor([2.0, 0.5, 4.0, 1.0, 0.25])
    s1 = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    enc = Tempo._enc(x, p0, p1, s0, s1)
    assert torch.equal(enc, (x * s0.view(-1, 1, 1, 1) * s1.view(1, -1, 1, 1))[p0][:, p1])
    assert torch.equal(Tempo._dec(enc, p0, p1, s0, s1), x)
