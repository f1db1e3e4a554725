"""The cost model of ``shares``: bytes per link of one training step, equal to what the ledger measures.

Per Beaver product ``f(A, B)`` with ``a``, ``b``, ``o`` elements (A, B, result) and 8-byte field elements
(p > 2^31), 32-byte seeds:

========================  ===============================  ==================================
message                   to the worker                    from the worker
========================  ===============================  ==================================
enclave → D               5 seeds (160 B)                  ``[C]_1``: 8·o (relayed to S1)
enclave → S0 (open)       seeds of X (and B if data), of   ``E_0, F_0``: 8·(a + b) (→ S1)
                          A, Bt, C: 128 B (160 B)
enclave → S1 (open)       ``[X]_1`` 8·a (``[B]_1`` 8·b if  ``E_1, F_1``: 8·(a + b) (→ S0)
                          data), seeds of A, Bt: 64 B
S0 close                  ``E_1, F_1``: 8·(a + b)          ``[Y]_0``: 8·o (0 if kept: SGD)
S1 close                  ``E_0, F_0, [C]_1``: 8·(a+b+o)   ``[Y]_1``: 8·o (0 if kept)
========================  ===============================  ==================================

A weight operand (forward, input gradient) is held by S0 / S1: it does not cross, but ``F_i`` (its masked
difference, b elements) does.  SGD on the shares sends nothing more (``share_update`` carries no tensor);
a layer updated in the enclave is re-shared every step: 32 B to S0 (a seed), 8·|W| to S1.
"""

from __future__ import annotations

import math
from collections import Counter

from ..costs import StepCost

ELEMENT = 8
SEED = 32


def beaver_bytes(a: int, b: int, out: int, *, b_held: bool, kept: bool) -> tuple[int, int]:
    """``(bytes to workers, bytes from workers)`` of one Beaver product (all five messages)."""
    seeds_s0 = SEED * (1 + (0 if b_held else 1) + 3)
    seeds_s1 = SEED * 2
    to = (5 * SEED + seeds_s0 + ELEMENT * a + (0 if b_held else ELEMENT * b) + seeds_s1
          + 2 * ELEMENT * (a + b) + ELEMENT * out)
    back = ELEMENT * out + 2 * ELEMENT * (a + b) + (0 if kept else 2 * ELEMENT * out)
    return to, back


def step_cost(ops, *, resident: dict[str, bool], weight_numel: dict[str, int], training: bool) -> StepCost:
    """Modelled :class:`StepCost` of one steady-state step for the traced ``ops``."""
    cost = StepCost(workers=3, trust="S0, S1 and the dealer must not collude: any two together see everything")
    used = ops if training else [op for op in ops if op.op == "forward"]
    for op in used:
        a, b, out = op.numel("A"), op.numel("B"), op.numel("out")
        held = op.roles == ("data", "weight")
        kept = op.op == "grad_weight" and op.kind != "matmul" and resident.get(op.layer, False)
        to, back = beaver_bytes(a, b, out, b_held=held, kept=kept)
        cost.bytes_to_worker += to
        cost.bytes_from_worker += back
        cost.round_trips += 5
        cost.worker_flops += 4 * op.flops + op.flops  # S0, S1: two products each; the dealer: one
        cost.enclave_elementwise += 6 * (a + (0 if held else b)) + 4 * out
        m = max(out // max(op.out_shape[0], 1), 1) if op.kind == "linear" else 1
        cost.enclave_flops += 2 * op.flops / max(m, 1)  # Freivalds k = 2: f(A, B·s)
    if training and any(resident.get(layer, False) for layer in weight_numel):
        cost.round_trips += 2  # share_update to S0 and S1 after optimizer.step() (no tensor)
    for layer, numel in weight_numel.items():
        if training and not resident.get(layer, False):
            cost.bytes_to_worker += SEED + ELEMENT * numel  # re-shared every step after the enclave's update
            cost.enclave_elementwise += 3 * numel
            cost.round_trips += 2
        cost.setup_bytes_to_worker += SEED + ELEMENT * numel
    cost.notes.append("openings relayed through the enclave (counted once, on their logical link); "
                      "enclave flops: Freivalds only (modelled roughly); SGD on the shares sends no tensor")
    return cost


def weight_numels(layers) -> dict[str, int]:
    return {name: math.prod(layer.site.weight_shape) for name, layer in layers.items()}


def link_bytes(ops, *, resident: dict[str, bool], weight_numel: dict[str, int], training: bool = True) -> Counter:
    """Modelled bytes per logical link of one steady-state step, as :class:`~blindtrain.boundary.peer.Links`
    counts them (a relayed tensor once, on its sender → receiver link)."""
    links: Counter = Counter()
    used = ops if training else [op for op in ops if op.op == "forward"]
    for op in used:
        a, b, out = op.numel("A"), op.numel("B"), op.numel("out")
        held = op.roles == ("data", "weight")
        kept = op.op == "grad_weight" and op.kind != "matmul" and resident.get(op.layer, False)
        links["enclave->dealer"] += 5 * SEED
        links["dealer->s1"] += ELEMENT * out
        links["enclave->s0"] += SEED * (1 + (0 if held else 1) + 3)
        links["enclave->s1"] += ELEMENT * a + (0 if held else ELEMENT * b) + 2 * SEED
        links["s0->s1"] += ELEMENT * (a + b)
        links["s1->s0"] += ELEMENT * (a + b)
        if not kept:
            links["s0->enclave"] += ELEMENT * out
            links["s1->enclave"] += ELEMENT * out
    for layer, numel in weight_numel.items():
        if training and not resident.get(layer, False):
            links["enclave->s0"] += SEED
            links["enclave->s1"] += ELEMENT * numel
    return links
