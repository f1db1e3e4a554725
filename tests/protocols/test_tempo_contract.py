"""tempo's side of the PyTorch contract (issue 14) beyond the registry-wide habits (tests/habits): the
alternatives its UsageErrors name work, the ``.grad`` placeholder lets ``zero_grad`` through, and the
per-call state of a forward is released with its autograd graph."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blindtrain import Session
from blindtrain.errors import UsageError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _batches(steps=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(steps)]


def _train(model, optimizer, *, clip=None, set_to_none=True):
    norms = []
    for x, y in _batches():
        optimizer.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(x), y).backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        optimizer.step()
    return norms


def _probe(model):
    model.eval()
    with torch.no_grad():
        return model(_batches(1)[0][0])


def test_the_grad_placeholder_lets_zero_grad_without_set_to_none_through():
    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        _train(wrapped, opt, set_to_none=False)
        got = _probe(wrapped)
    _train(reference, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9), set_to_none=False)
    torch.testing.assert_close(got, _probe(reference), rtol=1e-4, atol=1e-5)


def test_clip_grad_norm_on_worker_held_weights_raises_and_update_enclave_clips_like_plain():
    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        with pytest.raises(UsageError, match="update='enclave'"):
            _train(wrapped, opt, clip=0.5)
    model = copy.deepcopy(reference)
    with Session(protocol="tempo", device="cpu", seed=0, update="enclave") as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        norms = _train(wrapped, opt, clip=0.5)
        got = _probe(wrapped)
    expected = _train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), clip=0.5)
    assert norms == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(got, _probe(reference), rtol=1e-4, atol=1e-5)


def test_an_optimizer_after_prepare_works_under_update_enclave():
    """What the foreign-optimizer UsageError names: prepare with update='enclave' and no optimizer."""
    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0, update="enclave") as session:
        wrapped, _ = session.prepare(model, None)
        _train(wrapped, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        got = _probe(wrapped)
    _train(reference, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9))
    torch.testing.assert_close(got, _probe(reference), rtol=1e-4, atol=1e-5)


def test_a_forwards_worker_slot_is_released_with_its_graph():
    """Two live forwards take two X′ slots; once their graphs are gone (backward, or dropped) none is held,
    so a training forward that is never backpropagated does not pin worker memory."""
    model = _model()
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        layer = session.protocol.layers["0"]
        (x, y), (x2, y2) = _batches(2)
        loss = F.cross_entropy(wrapped(x), y) + F.cross_entropy(wrapped(x2), y2)
        assert layer.live == {0, 1}
        loss.backward()
        del loss
        gc.collect()
        assert layer.live == set()
        dropped = wrapped(x)
        assert layer.live == {0}
        del dropped
        gc.collect()
        assert layer.live == set()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_without_a_step_drops_the_worker_held_gradient(set_to_none):
    """A skipped step (as GradScaler does on an overflow): backward, zero_grad, backward, step applies only
    the second gradient, as in plain PyTorch."""
    def loop(model, optimizer):
        (x, y), (x2, y2) = _batches(2)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.zero_grad(set_to_none=set_to_none)  # the step is skipped
        F.cross_entropy(model(x2), y2).backward()
        optimizer.step()

    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.5))
        loop(wrapped, opt)
        got = _probe(wrapped)
    loop(reference, torch.optim.SGD(reference.parameters(), lr=0.5))
    torch.testing.assert_close(got, _probe(reference), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_then_step_applies_no_gradient(set_to_none):
    """backward, zero_grad, step: plain skips the weights (set_to_none) or steps with a zero gradient
    (momentum and weight decay still act); tempo does the same on the workers."""
    def loop(model, optimizer):
        for x, y in _batches(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        x, y = _batches(1)[0]
        F.cross_entropy(model(x), y).backward()
        optimizer.zero_grad(set_to_none=set_to_none)
        optimizer.step()

    def make(model):
        return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)

    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, make(model))
        loop(wrapped, opt)
        got = _probe(wrapped)
    loop(reference, make(reference))
    torch.testing.assert_close(got, _probe(reference), rtol=1e-4, atol=1e-5)


def test_a_submodules_state_dict_holds_its_plaintext_weight():
    model = _model()
    reference = copy.deepcopy(model)
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        _train(wrapped, opt)
        state = wrapped[2].state_dict()
        buffers = opt.state_dict()["state"]
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    _train(reference, ref_opt)
    torch.testing.assert_close(state["weight"], reference[2].weight.detach(), rtol=1e-4, atol=1e-5)
    assert all(s["momentum_buffer"].numel() > 0 for s in buffers.values())


@pytest.mark.parametrize("backward_again", [True, False])
def test_a_step_without_zero_grad_since_the_last_step_is_refused(backward_again):
    """PyTorch would apply the stepped gradient again (alone, or added to a new backward's); tempo applied it
    on the worker and dropped it, so that step raises instead of silently leaving it out."""
    model = _model()
    with Session(protocol="tempo", device="cpu", seed=0) as session:
        wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        x, y = _batches(1)[0]
        F.cross_entropy(wrapped(x), y).backward()
        opt.step()
        if backward_again:
            F.cross_entropy(wrapped(x), y).backward()
        with pytest.raises(UsageError, match="zero_grad"):
            opt.step()
