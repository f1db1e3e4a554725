"""tempo's check tolerance is the derived bound, not more: an error just above it is caught.

The forward check of a linear layer compares ``Y ρ`` with ``X q`` row by row; its tolerance (tempo/bounds.py,
``LAMBDA``) is ``λ·√n·u·‖x_i‖·(Σ_m ρ_m²‖W_m‖²)^½`` plus a few ``u`` of the check's own double-accumulated
products, with ``λ = √(2·ln(2·2^20 / 2^-40))`` from the stated false-alarm probability.  The test restates
that bound from first principles (plaintext weights, the layer's check vectors) and puts an error of a
given multiple of it into one entry of the worker's result.  The tolerance before (λ = 10 on 2n roundings
per inner product: 1.54× this one) let an error of 1.25× the derived bound through; this one must not.
"""

from __future__ import annotations

import math

import pytest
import torch

import blindtrain as bt
from blindtrain.errors import IntegrityError
from blindtrain.protocols import tempo

U = 2.0 ** -24
#: λ for a per-check false-alarm probability of 2^-40 over at most 2^20 compared numbers (restated)
STATED_LAMBDA = math.sqrt(2 * math.log(2 * 2 ** 20 / 2.0 ** -40))
_DECODE, _CHECK = tempo.Tempo._decode_result, tempo.Tempo._check  # the unpatched methods


def _forward_with_error(monkeypatch, factor: float):
    """One training-mode forward of a 256→64 linear layer whose result gets, in row 0 and the output where
    the first check vector is largest, an error of ``factor`` × the derived tolerance of check 0 (row 0)."""
    torch.manual_seed(0)
    n, m = 256, 64
    model = torch.nn.Sequential(torch.nn.Linear(n, m, bias=False))
    weight = model[0].weight.detach().double().clone()
    x = torch.randn(16, n)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    decoded = {}
    decode, check = _DECODE, _CHECK

    def keep_result(self, layer, encoded, batch_key, vectors):
        out = decode(self, layer, encoded, batch_key, vectors)
        decoded["y"] = out[0]
        return out

    def tampered_check(self, layer, op, expected, lhs, result_norm):
        if op == "forward" and factor:
            rho = layer.t["rho"].double()
            bound = STATED_LAMBDA * math.sqrt(n) * U * float(x[0].double().norm()) * float(
                ((rho[:, 0] ** 2) * weight.norm(dim=1) ** 2).sum().sqrt())
            out = int(rho[:, 0].abs().argmax())
            error = factor * bound / float(rho[out, 0].abs())
            error = math.copysign(error, float(rho[out, 0]))
            decoded["y"][0, out] += error  # the result training would use ...
            lhs = lhs.clone()
            lhs[0] += (error * rho[out]).to(lhs.dtype)  # ... and what the decoding pass reads from it
        return check(self, layer, op, expected, lhs, result_norm)

    monkeypatch.setattr(tempo.Tempo, "_decode_result", keep_result)
    monkeypatch.setattr(tempo.Tempo, "_check", tampered_check)
    with bt.Session(protocol="tempo", device="cpu", seed=None) as session:
        wrapped, opt = session.prepare(model, opt)
        wrapped.train()
        wrapped(x)
        return session.protocol.tolerance_report()


def test_the_stated_lambda_is_the_one_in_use():
    assert tempo.LAMBDA == pytest.approx(STATED_LAMBDA)
    assert tempo.FALSE_ALARM_PER_CHECK == 2.0 ** -40 and tempo.MAX_COMPARED == 2 ** 20


def test_an_error_just_above_the_derived_tolerance_is_caught(monkeypatch):
    """1.25× the derived bound: caught (the tolerance before this change, 1.54× larger, let it through)."""
    with pytest.raises(IntegrityError, match="forward result fails the Freivalds check"):
        _forward_with_error(monkeypatch, 1.25)


def test_an_error_below_the_derived_tolerance_passes(monkeypatch):
    """0.8× the derived bound passes: the implemented tolerance is not below the derivation (the check is not
    tighter than what its false-alarm probability was derived for), and an honest result uses little of it."""
    report = _forward_with_error(monkeypatch, 0.8)
    assert 0.7 < report["per_check"]["forward"]["max_used_fraction"] < 1
    honest = _forward_with_error(monkeypatch, 0.0)
    assert honest["per_check"]["forward"]["max_used_fraction"] < 0.2
