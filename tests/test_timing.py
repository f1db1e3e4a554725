"""Enclave-time attribution: non-offloaded layers count as `nonlinear`, only inside training steps."""

from __future__ import annotations

import torch

import blindtrain as bt
from blindtrain.ledger import Ledger
from blindtrain.models import build


def test_nonlinear_layers_are_timed_within_steps_only():
    model = build("resnet18", (3, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with bt.Session(protocol="enclave", seed=0) as session:
        model, optimizer = session.prepare(model, optimizer)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(10, (4,))
        for _ in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        ledger = session.ledger
        nonlinear = ledger.category_seconds["nonlinear"]
        assert 0 < nonlinear <= ledger.enclave_seconds
        assert abs(sum(ledger.enclave_breakdown().values()) - ledger.enclave_seconds) < 1e-9
        model.eval()
        with torch.no_grad():
            model(x)  # an evaluation forward is not a training step
        assert ledger.category_seconds["nonlinear"] == nonlinear


def test_worker_waits_are_not_enclave_time():
    ledger = Ledger()
    ledger.step_begin()
    mark = ledger.span_mark()
    ledger.record_wait(3600.0)  # an hour on the worker inside the span
    assert ledger.own_seconds(mark) == 0.0
    ledger.step_end()
    assert ledger.enclave_seconds == 0.0 and ledger.worker_seconds == 3600.0
