"""Adversaries do what DESIGN.md says, once, where their trigger says."""

from __future__ import annotations

import pytest
import torch

from blindtrain.boundary import Tag
from blindtrain.errors import UsageError, WorkerCrashed
from blindtrain.worker.adversaries import Adversary, AdversarySpec


def _run(name, results, modulus=None, **trigger):
    adversary = Adversary(AdversarySpec(name=name, **trigger), in_process=True)
    return [adversary.on_result(Tag(step, "fc", "forward"), r.clone(), modulus) for step, r in results]


def test_parse():
    assert AdversarySpec.parse("tamper:step=3,layer=fc2,op=grad_input") == AdversarySpec("tamper", 3, "fc2",
                                                                                          "grad_input")
    assert AdversarySpec.parse(None).name == "honest"
    for bad in ("evil", "tamper:step=x", "tamper:when=2"):
        with pytest.raises(UsageError):
            AdversarySpec.parse(bad)


def test_tamper_changes_exactly_one_element_once():
    results = [(s, torch.randn(4, 5)) for s in range(4)]
    out = _run("tamper", results)
    changed = [int((o != r).sum()) for o, (_, r) in zip(out, results)]
    assert changed == [0, 1, 0, 0]  # default trigger: the first result of step >= 1


def test_tamper_in_a_field_stays_in_the_field():
    p = 97
    result = torch.randint(0, p, (3, 3)).double()
    out = _run("tamper", [(0, result)], modulus=p, step=0)[0]
    assert int((out != result).sum()) == 1 and out.min() >= 0 and out.max() < p


def test_zeros_noise_and_replay():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.count_nonzero(_run("zeros", [(1, a)])[0]) == 0
    noisy = _run("noise", [(1, a)])[0]
    assert int((noisy != a).sum()) == a.numel()
    replayed = _run("replay", [(0, a), (1, b)])
    assert torch.equal(replayed[0], a) and torch.equal(replayed[1], a)


def test_crash_in_process_raises():
    with pytest.raises(WorkerCrashed, match="step 1"):
        _run("crash", [(0, torch.zeros(1)), (1, torch.zeros(1))])
