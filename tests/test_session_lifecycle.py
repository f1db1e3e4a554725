"""A closed session's model refuses to run, under every registered protocol, with a UsageError that says
why and what to do instead (before: a KeyError from the worker, or workers silently started again)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blindtrain import Session
from blindtrain.errors import UsageError
from blindtrain.protocols import load_all

PROTOCOLS = sorted(load_all())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_after_close_is_a_usage_error(protocol):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    trains = load_all()[protocol].info.trains
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if trains else None
    session = Session(protocol=protocol, device="cpu", seed=0)
    model, optimizer = session.prepare(model, optimizer)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    if trains:
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert before.shape == (4, 3)
    session.close()
    with pytest.raises(UsageError, match="session is closed"):
        model(x)
    with torch.no_grad(), pytest.raises(UsageError, match="session is closed"):
        model(x)
