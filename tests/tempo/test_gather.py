"""The fused 2-D obfuscation pass: the C kernel and the PyTorch fallback against plain indexing and float64
products, and the native build's failure modes (each falls back, none crashes)."""

from __future__ import annotations

import shutil

import pytest
import torch

from blindtrain.tempo import gather, native

HAVE_CC = native._compiler() is not None
BACKENDS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler"))]


def _case(rows, cols, k_src, k_out, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    p0, p1 = torch.randperm(rows, generator=g), torch.randperm(cols, generator=g)
    # tempo's scales: powers of two (and signs), so that decoding is exact
    r0 = torch.ldexp(torch.ones(rows), torch.randint(-4, 5, (rows,), generator=g))
    r1 = torch.ldexp(torch.ones(cols), torch.randint(-4, 5, (cols,), generator=g)) * (
        torch.randint(0, 2, (cols,), generator=g) * 2 - 1)
    src_vecs = torch.rand(k_src, cols, generator=g) * 2 - 1 if k_src else None
    out_vecs = torch.rand(k_out, cols, generator=g) * 2 - 1 if k_out else None
    return x, p0, p1, r0, r1, src_vecs, out_vecs


@pytest.mark.parametrize("use_native", BACKENDS)
@pytest.mark.parametrize("rows,cols,k_src,k_out", [(64, 4096, 6, 2), (7, 37, 1, 5), (1, 9, 4, 0), (33, 130, 0, 7),
                                                   (5, 3, 2, 1)])
def test_gather_rows_against_plain_indexing_and_float64_products(use_native, rows, cols, k_src, k_out):
    x, p0, p1, r0, r1, src_vecs, out_vecs = _case(rows, cols, k_src, k_out, seed=rows * cols)
    got = gather.gather_rows(x, p0, p1, r0, r1, src_vecs=src_vecs, src_norm=True, src_min=True,
                             out_vecs=out_vecs, out_norm=True, use_native=use_native)
    want = x[p0][:, p1] * r0.view(-1, 1) * r1.view(1, -1)
    assert torch.equal(got.out, want)  # powers of two and signs: exact, in any order of the products
    x64, out64 = x.double(), want.double()

    def close(a, b, scale):
        # float32 inner products of length cols: error below cols·u·Σ|terms|
        assert a.shape == b.shape
        assert torch.allclose(a.double(), b, rtol=0, atol=cols * 2 ** -24 * float(scale) + 1e-30)

    if k_src:
        close(got.src_dot, x64 @ src_vecs.double().t(), (x64.abs() @ src_vecs.double().abs().t()).max())
    else:
        assert got.src_dot is None
    if k_out:
        close(got.out_dot, out64 @ out_vecs.double().t(), (out64.abs() @ out_vecs.double().abs().t()).max())
    else:
        assert got.out_dot is None
    close(got.src_norm, x64.norm(dim=1, keepdim=True), x64.norm(dim=1).max())
    close(got.out_norm, out64.norm(dim=1, keepdim=True), out64.norm(dim=1).max())
    assert got.src_min == float(x.min())


@pytest.mark.parametrize("use_native", BACKENDS)
def test_statistics_are_optional_and_decoding_inverts_encoding(use_native):
    x, p0, p1, r0, r1, _, _ = _case(16, 100, 0, 0, seed=3)
    enc = gather.gather_rows(x, p0, p1, r0, r1, use_native=use_native)
    assert enc.src_dot is enc.src_norm is enc.src_min is enc.out_dot is enc.out_norm is None
    inv0, inv1 = torch.argsort(p0), torch.argsort(p1)
    dec = gather.gather_rows(enc.out, inv0, inv1, 1 / r0[inv0], 1 / r1[inv1], use_native=use_native)
    assert torch.equal(dec.out, x)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_native_pass_rejects_out_of_range_indices_and_unsupported_inputs():
    x, p0, p1, r0, r1, _, _ = _case(8, 20, 0, 0, seed=4)
    bad = p1.clone()
    bad[3] = 20
    with pytest.raises(IndexError):
        gather.gather_rows(x, p0, bad, r0, r1, use_native=True)
    bad = p0.clone()
    bad[0] = -1
    with pytest.raises(IndexError):
        gather.gather_rows(x, bad, p1, r0, r1, use_native=True)
    with pytest.raises(ValueError):
        gather.gather_rows(x, p0[:-1].contiguous(), p1, r0[:-1].contiguous(), r1, use_native=True)
    with pytest.raises(ValueError):  # float64 is not the kernel's
        gather.gather_rows(x.double(), p0, p1, r0, r1, use_native=True)
    # by default such inputs take the PyTorch path, with the same result
    want = x.double()[p0][:, p1] * r0.view(-1, 1).double() * r1.view(1, -1).double()
    assert torch.equal(gather.gather_rows(x.double(), p0, p1, r0, r1).out, want)
    t = x.t()  # not contiguous
    assert torch.equal(gather.gather_rows(t, p1, p0, r1, r0).out, t[p1][:, p0] * r1.view(-1, 1) * r0.view(1, -1))


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native module with nothing loaded yet and its own cache folder."""
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "_STATUS", {})
    monkeypatch.setenv("BLINDTRAIN_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_native_build_is_cached_per_source_and_machine(fresh_native):
    lib = native.load("gather")
    assert lib is not None and native.status("gather").startswith("native")
    built = sorted(p.name for p in (fresh_native / "native").iterdir())
    assert len(built) == 1 and built[0].startswith("gather-") and built[0].endswith(".so")
    native._LOADED.clear()
    assert native.load("gather") is not None  # from the cache: no second build
    assert sorted(p.name for p in (fresh_native / "native").iterdir()) == built


def test_native_falls_back_when_disabled_or_the_build_fails(fresh_native, monkeypatch):
    monkeypatch.setenv("BLINDTRAIN_NATIVE", "0")
    assert native.load("gather") is None
    assert native.status("gather") == "torch (BLINDTRAIN_NATIVE=0)"
    monkeypatch.delenv("BLINDTRAIN_NATIVE")
    native._LOADED.clear()
    failing = shutil.which("false")
    if failing is None:
        pytest.skip("no `false` command to stand in for a failing compiler")
    monkeypatch.setenv("CC", failing)
    assert native.load("gather") is None
    assert native.status("gather").startswith("torch (native build unavailable")
