"""The cost model equals the ledger: bytes to and from the worker and round trips of a steady-state step
(the third: keys and weights set up, calibrations done) or inference batch, for every protocol."""

from __future__ import annotations

import copy
import math

import pytest

from blindtrain.costs import forward_only, trace_ops

from .harness import INPUT, CLASSES, REGISTRY, batch, session, step, tiny_model, variants


def _steady_state(protocol: str, options: dict):
    """(modelled cost, measured (bytes to, bytes from, messages)) of the third step or batch."""
    cls = REGISTRY[protocol]
    model = tiny_model()
    x, y = batch()
    ops = trace_ops(copy.deepcopy(model), INPUT, batch=x.shape[0])
    if not cls.info.trains:
        ops = forward_only(ops)
    s, wrapped, optimizer = session(protocol, model=model, lr=0.01, **options)
    try:
        for index in range(3):
            if index == 2:
                ledger = s.ledger
                before = (ledger.bytes_to_worker, ledger.bytes_from_worker, ledger.messages)
            step(protocol, wrapped, optimizer, x, y)
        cost = s.protocol.cost_model(ops, batch=x.shape[0], input_numel=math.prod(INPUT), classes=CLASSES,
                                     training=cls.info.trains)
        return cost, (ledger.bytes_to_worker - before[0], ledger.bytes_from_worker - before[1],
                      ledger.messages - before[2])
    finally:
        s.close()


@pytest.mark.parametrize("protocol,options", variants())
def test_cost_model_bytes_equal_the_ledger(protocol, options):
    cost, measured = _steady_state(protocol, options)
    assert (cost.bytes_to_worker, cost.bytes_from_worker) == measured[:2]
    if protocol != "enclave":
        assert measured[0] > 0 and measured[1] > 0  # the comparison is not 0 == 0


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_cost_model_round_trips_equal_the_ledgers_messages(protocol):
    cost, measured = _steady_state(protocol, {})
    assert cost.round_trips == measured[2]
