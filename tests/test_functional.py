"""Products a model's forward calls as functions (F.linear, matmul / @, bmm, F.scaled_dot_product_attention,
and everything nn.MultiheadAttention and nn.TransformerEncoder do inside) are offloaded under every
protocol that offloads layers, train like plain PyTorch, and really cross to the worker (transcript)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blindtrain import Session
from blindtrain.functional import FunctionalOffload, suspended
from blindtrain.protocols import load_all

OFFLOADING = sorted(name for name, cls in load_all().items() if cls.offloads_layers and cls.info.trains)


class Functional(nn.Module):
    """Parameters used directly, products of two activations, and attention, all written as functions."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8) * 0.3)
        self.v = nn.Parameter(torch.randn(16, 3) * 0.3)

    def forward(self, x):
        h = F.relu(F.linear(x, self.w))
        q = h.view(-1, 4, 4)
        h = h + torch.matmul(torch.matmul(q, q.transpose(1, 2)), q).reshape(h.shape)
        h = h + F.scaled_dot_product_attention(q.unsqueeze(1), q.unsqueeze(1), q.unsqueeze(1),
                                               is_causal=True).reshape(h.shape)
        return h @ self.v


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = x.view(x.shape[0], 2, 4).repeat(1, 1, 2)
        out, _ = self.attention(tokens, tokens, tokens)
        return self.head(out.mean(1))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        # (PyTorch's nested-tensor fast path zeroes padded positions in eval; the math path does not)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = x.view(x.shape[0], 2, 4).repeat(1, 1, 2)
        padding = torch.tensor([[False, True]] * x.shape[0])
        return self.head(self.encoder(tokens, src_key_padding_mask=padding)[:, 0])


MODELS = {"functional": Functional, "attention": Attention, "encoder": Encoder}


@pytest.mark.parametrize("protocol", OFFLOADING)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_functional_products_train_like_plain_and_cross_to_the_worker(protocol, name):
    torch.manual_seed(0)
    model = MODELS[name]()
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    session = Session(protocol=protocol, device="cpu", seed=0, transcript=True)
    model, optimizer = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    losses = [[], []]
    for _ in range(3):
        for i, (net, opt) in enumerate(((model, optimizer), (reference, reference_optimizer))):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses[i].append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-3, atol=1e-4)
    functional = session.protocol.functional
    crossed = ({m["layer"] for m in session.boundary.transcripts["main"].meta} if protocol == "tempo" else None)
    session.close()
    sites = set(functional.layers)
    if name == "functional":
        assert {"matmul#0", "matmul#1", "sdpa.scores#2", "sdpa.values#3"} <= sites
        cls = load_all()[protocol]
        assert ("w@linear" in sites) == (cls.weights_per_call or cls.adopts_weights)
        assert ("v@matmul" in sites) == cls.weights_per_call  # a parameter on the right of @: per-call protocols
    else:
        assert any(site.startswith(("bmm", "sdpa")) for site in sites)  # the attention products
    if crossed is not None:  # every functional product tempo offloads is in the worker's transcript
        assert sites <= crossed


def test_protocol_code_runs_without_the_mode():
    """Inside an offloaded op the mode is suspended, so a protocol's own products are never re-offloaded."""
    model = Functional()
    mode = FunctionalOffload(model, load_all()["tempo"])
    seen = []
    mode.begin(model, ())
    try:
        with suspended():
            seen.append(torch.overrides._get_current_function_mode())
        seen.append(torch.overrides._get_current_function_mode())
    finally:
        mode.end(model, (), None)
    assert seen == [None, mode]
