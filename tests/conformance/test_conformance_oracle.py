"""Every protocol against plain PyTorch: the forward, the input gradient and the weight update of one SGD
step (lr = 1, so the update is the weight gradient), within the protocol's stated ``tolerance``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from blindtrain.errors import UsageError

from .harness import REGISTRY, batch, relative_error, session, tiny_model, variants


def _one_step(protocol: str, options: dict):
    """One SGD step (lr = 1) of the tiny model under ``protocol`` and in plain PyTorch; returns
    ``(out, out_ref, grad_x, grad_x_ref, updates, updates_ref)`` (updates = weights before - after)."""
    cls = REGISTRY[protocol]
    reference = tiny_model()
    before = copy.deepcopy(reference.state_dict())
    s, wrapped, optimizer = session(protocol, model=copy.deepcopy(reference), **options)
    x, y = batch()
    x_ref = x.clone().requires_grad_(True)
    out_ref = reference(x_ref)
    F.cross_entropy(out_ref, y).backward()
    torch.optim.SGD(reference.parameters(), lr=1.0).step()
    try:
        if not cls.info.trains:
            with torch.no_grad():
                return wrapped(x), out_ref.detach(), None, None, {}, {}
        x_in = x.clone().requires_grad_(True)
        out = wrapped(x_in)
        F.cross_entropy(out, y).backward()
        optimizer.step()
        after, after_ref = s.plaintext_model().state_dict(), reference.state_dict()
        updates = {key: before[key] - after[key] for key in before}
        updates_ref = {key: before[key] - after_ref[key] for key in before}
        return out.detach(), out_ref.detach(), x_in.grad, x_ref.grad, updates, updates_ref
    finally:
        s.close()


@pytest.mark.parametrize("protocol,options", variants())
def test_forward_and_weight_gradients_match_plain_pytorch(protocol, options):
    tolerance = REGISTRY[protocol].tolerance
    out, out_ref, _, _, updates, updates_ref = _one_step(protocol, options)
    assert relative_error(out, out_ref) <= tolerance, "forward"
    assert set(updates) == set(updates_ref)
    for key in updates_ref:
        assert relative_error(updates[key], updates_ref[key]) <= tolerance, f"weight gradient of {key}"


def _input_gradient_cases():
    for param in variants():
        protocol, options = param.values
        if not REGISTRY[protocol].info.trains:
            continue
        yield pytest.param(protocol, options, id=param.id)


@pytest.mark.parametrize("protocol,options", list(_input_gradient_cases()))
def test_input_gradient_matches_plain_pytorch(protocol, options):
    _, _, grad_x, grad_x_ref, _, _ = _one_step(protocol, options)
    assert grad_x is not None, "no gradient for the model's input"
    assert relative_error(grad_x, grad_x_ref) <= REGISTRY[protocol].tolerance


@pytest.mark.parametrize("protocol", sorted(name for name, cls in REGISTRY.items() if not cls.info.trains))
def test_inference_only_protocols_refuse_to_train(protocol):
    model = tiny_model()
    import blindtrain as bt

    with bt.Session(protocol=protocol, device="cpu") as s, pytest.raises(UsageError, match="cannot train"):
        s.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_each_protocol_states_a_tolerance_it_could_miss(protocol):
    """The tolerance is a real bound: positive, and far below what a wrong result would give."""
    assert 0 < REGISTRY[protocol].tolerance <= 1e-3
