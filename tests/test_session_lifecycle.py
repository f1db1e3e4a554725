"""A closed session's model refuses to run, under every registered protocol, with a UsageError that says
why and what to do instead (before: a KeyError from the worker, or workers silently started again)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from blindtrain import Session
from blindtrain.errors import UsageError
from blindtrain.protocols import load_all

PROTOCOLS = sorted(load_all())


def _prepared(protocol):
    """A small MLP prepared under ``protocol`` (with SGD where the protocol trains)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    trains = load_all()[protocol].info.trains
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if trains else None
    session = Session(protocol=protocol, device="cpu", seed=0)
    model, optimizer = session.prepare(model, optimizer)
    return session, model, optimizer


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_after_close_is_a_usage_error(protocol):
    session, model, optimizer = _prepared(protocol)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    if optimizer is not None:
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


def _step(model, optimizer, x, y):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deepcopy_and_averaged_model_work_or_are_refused_with_the_reason(protocol):
    """A copy (``deepcopy``, ``AveragedModel``) computes with its own weights in the same session, or the
    protocol refuses it up front (never a pickling traceback, never the original's weights)."""
    session, model, optimizer = _prepared(protocol)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    refusal = load_all()[protocol].copy_refusal
    if refusal is not None:
        for make in (lambda: copy.deepcopy(model), lambda: torch.optim.swa_utils.AveragedModel(model)):
            with pytest.raises(UsageError, match="cannot be deep-copied"):
                make()
        session.close()
        return
    twin = copy.deepcopy(model)
    ema = torch.optim.swa_utils.AveragedModel(model)
    ema.update_parameters(model)  # the first average: the weights as they are
    model.eval(), twin.eval(), ema.eval()
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(twin(x), reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ema(x), reference, rtol=1e-4, atol=1e-5)
    model.train()
    if optimizer is not None:
        _step(model, optimizer, x, y)
        ema.update_parameters(model)
        model.eval()
        with torch.no_grad():
            moved = model(x)
            assert not torch.allclose(moved, reference, atol=1e-4)
            torch.testing.assert_close(twin(x), reference, rtol=1e-4, atol=1e-5)  # its own weights
            # the EMA's plaintext oracle: the average of the copy's and the trained weights
            plain = copy.deepcopy(_plain_twin(twin))
            for p_avg, p_old, p_new in zip(plain.parameters(), _plain_twin(twin).parameters(), model.parameters()):
                p_avg.data = (p_old.data + p_new.data) / 2
            torch.testing.assert_close(ema(x), plain(x), rtol=1e-4, atol=1e-5)
    session.close()


def _plain_twin(model):
    """An ordinary nn.Sequential holding the (plaintext) weights of an offloaded MLP."""
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    plain.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return plain
