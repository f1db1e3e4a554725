"""A weight matrix's key epoch in one read (:mod:`blindtrain.kernels.weight_epoch`): W′ bit for bit what
the gather pass (tempo's encryption) gives, the check statistics equal to their float64 references, in C
and in the PyTorch fallback; and tempo's key epochs send exactly the gather pass's W′."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain.kernels import weight_epoch as we
from blindtrain.protocols import tempo as tempo_module
from blindtrain.protocols.tempo import projections as tempo_projections
from blindtrain.kernels import gather, native

HAVE_CC = native._compiler() is not None
BACKENDS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler"))]


def _case(m, n, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g)
    pm, pn = torch.randperm(m, generator=g), torch.randperm(n, generator=g)
    c = torch.ldexp(torch.ones(m), torch.randint(-4, 5, (m,), generator=g))   # tempo's keys: powers of two
    s = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).float()                # and signs
    rho, sigma = torch.rand(m, k, generator=g) * 2 - 1, torch.rand(n, k, generator=g) * 2 - 1
    return w, pm, pn, c, s, rho, sigma


@pytest.mark.parametrize("use_native", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 300), (301, 17)])
def test_encrypted_weights_bit_identical_to_the_gather_pass_and_statistics_to_float64(shape, use_native):
    w, pm, pn, c, s, rho, sigma = _case(*shape)
    e = we.weight_epoch(w, pm, pn, c[pm], s[pn], rho, sigma, use_native=use_native)
    for native_gather in (False, True) if HAVE_CC else (False,):
        want = gather.gather(w, pm, pn, c[pm], s[pn], use_native=native_gather).out
        assert torch.equal(e.encrypted, want)                      # bit for bit
    assert torch.equal(e.encrypted, (w[pm][:, pn] * c[pm].view(-1, 1)) * s[pn])
    wd, aw = w.double(), w.double().abs()
    refs = {"q": wd.t() @ rho.double(), "q_abs": aw.t() @ rho.double().abs(), "v": wd @ sigma.double(),
            "v_abs": aw @ sigma.double().abs(), "row_norm": wd.norm(dim=1), "col_norm": wd.norm(dim=0)}
    for name, ref in refs.items():
        got = getattr(e, name)
        assert got.dtype == torch.float64 and got.shape == ref.shape, name
        # float64 sums in another order: equal to float64 rounding (relative to the absolute sums)
        scale = (aw.t() @ rho.double().abs()) if name.startswith("q") else (aw @ sigma.double().abs())
        scale = scale if name in ("q", "v") else ref.abs()
        torch.testing.assert_close(got, ref, rtol=0, atol=float(scale.max()) * 1e-13 + 1e-300, msg=name)


@pytest.mark.parametrize("use_native", BACKENDS)
def test_not_a_permutation_raises(use_native):
    w, pm, pn, c, s, rho, sigma = _case(6, 4)
    bad = pm.clone()
    bad[0] = bad[1]
    if use_native:
        with pytest.raises(IndexError):
            we.weight_epoch(w, bad, pn, c, s, rho, sigma, use_native=True)
    with pytest.raises(ValueError):
        we.weight_epoch(w, pm[:-1], pn, c, s, rho, sigma, use_native=use_native)


def test_tempo_key_epochs_send_the_gather_passes_weights(monkeypatch):
    """Every W′ tempo stores on its worker at a key epoch equals ``Tempo._enc`` (the gather pass) of the
    plaintext weights under that epoch's key; training still matches plain PyTorch."""
    sent = []
    real = tempo_projections.weight_epoch

    def spy(w, *args, **kwargs):
        result = real(w, *args, **kwargs)
        sent.append((w.clone(), result.encrypted))
        return result

    monkeypatch.setattr(tempo_projections, "weight_epoch", spy)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    reference.load_state_dict(model.state_dict())
    session = bt.Session(protocol="tempo", device="cpu", seed=None, rotate_every=2)
    wrapped, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    for _ in range(5):  # key epochs at steps 0, 2 and 4 (rotations re-encrypt weights and momentum)
        for m, o in ((wrapped, opt), (reference, ref_opt)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    layers = list(session.protocol.layers.values())
    assert len(sent) >= 2 * len(layers) + 2  # first epoch, plus rotations with a momentum buffer
    # bit-identity at the call site: the last epoch's W′ of each layer against the gather pass
    for layer in layers:
        key = layer.key
        w_plain = next(w for w, _ in reversed(sent) if w.shape == (layer.m, layer.n))
        enc = next(e for w, e in reversed(sent) if w.shape == (layer.m, layer.n))
        assert torch.equal(enc, tempo_module.Tempo._enc(w_plain, key.pm, key.pn, key.c, key.s))
    session.protocol.materialize()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5)
    session.close()
