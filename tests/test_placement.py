"""``bt.validate`` / ``Session.placement``: what runs where, and why, with each op's share of the MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blindtrain as bt
from blindtrain.models import build
from blindtrain.placement import ENCLAVE, WORKER


class _Mixed(nn.Module):
    """Modules and functional calls of every kind the placement distinguishes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.depthwise = nn.Conv1d(16, 16, 3, groups=16, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 16))
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.embed(tokens)
        h, _ = self.attention(h, h, h)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        h = F.scaled_dot_product_attention(h, h, h)
        h = F.linear(h, self.weight)
        return self.head(h @ torch.eye(8)).mean(1)


def test_every_layer_of_a_builtin_model_is_offloaded_with_macs_adding_up():
    model = build("lenet", (1, 8, 8), 10)
    placement = bt.validate(model, "tempo", example_input=torch.zeros(2, 1, 8, 8), strict=True)
    names = [op.name for op in placement.ops]
    assert names == [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert all(op.where == WORKER for op in placement.ops) and placement.offloaded_share == 1.0
    fc = next(op for op in placement.ops if op.kind == "Linear")
    linear = dict(model.named_modules())[fc.name]
    assert fc.macs == 2 * linear.in_features * linear.out_features  # batch 2
    assert sum(placement.share(op) for op in placement.ops) == pytest.approx(1.0)


def test_what_stays_in_the_enclave_is_named_with_its_reason_and_share():
    placement = bt.validate(_Mixed(), "tempo", example_input=torch.randint(0, 10, (2, 5)))
    where = {op.name: op for op in placement.ops}
    assert where["head"].where == WORKER
    # MultiheadAttention's projections are functional F.linear calls: tempo adopts their weights (kept in the
    # enclave) and offloads the products; its out_proj is offloaded as such a call, not as a module
    assert where["attention"].where == WORKER and "projections" in where["attention"].reason
    assert where["attention.out_proj"].where == WORKER and "functional" in where["attention.out_proj"].reason
    assert where["depthwise"].where == ENCLAVE and "Conv1d" in where["depthwise"].reason
    assert where["embed"].where == ENCLAVE and not where["embed"].offloadable_kind
    calls = {op.kind: op for op in placement.ops if ":" in op.name}
    assert calls["F.scaled_dot_product_attention"].where == WORKER  # both-data products: offloaded
    matmul = calls.get("@") or calls["Tensor.matmul"]
    assert matmul.where == WORKER and "two data operands" in matmul.reason
    assert calls["F.linear"].where == WORKER  # a parameter passed to F.linear: adopted by tempo
    assert 0.5 < placement.offloaded_share < 1.0  # all but the depthwise Conv1d
    assert "attention" in placement.table() and "offloaded under tempo" in placement.table()


def test_strict_names_every_offloadable_op_left_in_the_enclave():
    with pytest.raises(bt.UsageError, match="depthwise") as raised:
        bt.validate(_Mixed(), "tempo", strict=True)
    assert "attention" not in str(raised.value)
    with pytest.raises(bt.UsageError, match="depthwise") as raised:  # otp offloads F.linear with a parameter
        bt.validate(_Mixed(), "otp", example_input=torch.randint(0, 10, (2, 5)), strict=True)
    assert "F.linear" not in str(raised.value)
    bt.validate(_Mixed(), "enclave", strict=True)  # the baseline offloads nothing by design


def test_plain_and_enclave_place_the_whole_model():
    model = build("mlp", (1, 8, 8), 10)
    assert {op.where for op in bt.validate(model, "plain").ops} == {WORKER}
    assert {op.where for op in bt.validate(model, "enclave").ops} == {ENCLAVE}


def test_prepare_keeps_the_placement_and_strict_raises_before_wrapping():
    session = bt.Session(protocol="tempo", device="cpu")
    model = build("mlp", (1, 8, 8), 10)
    session.prepare(model, None, example_input=torch.zeros(2, 1, 8, 8), strict=True)
    assert session.placement.offloaded_share == 1.0
    session.close()
    session = bt.Session(protocol="tempo", device="cpu")
    mixed = _Mixed()
    with pytest.raises(bt.UsageError, match="strict"):
        session.prepare(mixed, None, strict=True)
    assert isinstance(mixed.head, nn.Linear)  # nothing was replaced
    session.close()
