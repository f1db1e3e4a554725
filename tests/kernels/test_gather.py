"""The fused 2-D obfuscation pass: the C kernel and the PyTorch fallback against plain indexing and float64
products, and the native build's failure modes (each falls back, none crashes)."""

from __future__ import annotations

import shutil

import pytest
import torch

from blindtrain.kernels import gather, native

HAVE_CC = native._compiler() is not None
BACKENDS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler"))]


def _case(shape, k_src, k_out, seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape[0], shape[1]
    x = torch.randn(*shape, generator=g)
    p0, p1 = torch.randperm(rows, generator=g), torch.randperm(cols, generator=g)
    # tempo's scales: powers of two (and signs), so that decoding is exact
    r0 = torch.ldexp(torch.ones(rows), torch.randint(-4, 5, (rows,), generator=g))
    r1 = torch.ldexp(torch.ones(cols), torch.randint(-4, 5, (cols,), generator=g)) * (
        torch.randint(0, 2, (cols,), generator=g) * 2 - 1)
    src_vecs = torch.rand(k_src, cols, generator=g) * 2 - 1 if k_src else None
    out_vecs = torch.rand(k_out, cols, generator=g) * 2 - 1 if k_out else None
    return x, p0, p1, r0, r1, src_vecs, out_vecs


def _contract(t, vecs):
    """Σ_c t[:, c] vecs[k, c] in float64 (dim 1 becomes k)."""
    return torch.einsum("bc...,kc->bk...", t.double(), vecs.double())


@pytest.mark.parametrize("use_native", BACKENDS)
@pytest.mark.parametrize("shape,k_src,k_out", [((64, 4096), 6, 2), ((7, 37), 1, 5), ((1, 9), 4, 0), ((33, 130), 0, 7),
                                               ((5, 3), 2, 1), ((4, 5, 3, 3), 2, 2), ((2, 130, 1, 4), 3, 1),
                                               ((3, 7, 8, 8), 0, 4), ((6, 64, 4, 4), 2, 0)])
def test_gather_against_plain_indexing_and_float64_contractions(use_native, shape, k_src, k_out):
    x, p0, p1, r0, r1, src_vecs, out_vecs = _case(shape, k_src, k_out, seed=sum(shape))
    got = gather.gather(x, p0, p1, r0, r1, src_vecs=src_vecs, src_norm=True, src_abs=True, src_min=True,
                        out_vecs=out_vecs, out_norm=True, use_native=use_native)
    spread = (-1, 1) + (1,) * (x.dim() - 2)
    want = x[p0][:, p1] * r0.view(spread) * r1.view(1, -1, *(1,) * (x.dim() - 2))
    assert torch.equal(got.out, want)  # powers of two and signs: exact, in any order of the products
    cols = shape[1]

    def close(a, b):
        # sums of nonnegative terms: float32 error below cols·u times the sum
        assert a.shape == b.shape
        assert torch.allclose(a.double(), b, rtol=0, atol=cols * 2 ** -24 * float(b.abs().max()) * 4 + 1e-30)

    if k_src:
        # the bound's scale: the terms' magnitudes, not their (possibly cancelling) sum
        assert torch.allclose(got.src_dot.double(), _contract(x, src_vecs), rtol=0,
                              atol=cols * 2 ** -24 * float(_contract(x.abs(), src_vecs.abs()).max()) + 1e-30)
    else:
        assert got.src_dot is None
    if k_out:
        assert torch.allclose(got.out_dot.double(), _contract(want, out_vecs), rtol=0,
                              atol=cols * 2 ** -24 * float(_contract(want.abs(), out_vecs.abs()).max()) + 1e-30)
    else:
        assert got.out_dot is None
    close(got.src_norm, x.double().norm(dim=1, keepdim=True))
    close(got.out_norm, want.double().norm(dim=1, keepdim=True))
    close(got.src_l1, x.double().abs().sum(1, keepdim=True))
    assert torch.equal(got.src_linf, x.abs().amax(1, keepdim=True))
    assert got.src_min == float(x.min())


@pytest.mark.parametrize("use_native", BACKENDS)
def test_statistics_are_optional_and_decoding_inverts_encoding(use_native):
    for shape in ((16, 100), (16, 10, 5, 5)):
        x, p0, p1, r0, r1, _, _ = _case(shape, 0, 0, seed=3)
        enc = gather.gather(x, p0, p1, r0, r1, use_native=use_native)
        assert all(stat is None for stat in enc[1:])
        inv0, inv1 = torch.argsort(p0), torch.argsort(p1)
        dec = gather.gather(enc.out, inv0, inv1, 1 / r0[inv0], 1 / r1[inv1], use_native=use_native)
        assert torch.equal(dec.out, x)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_native_pass_rejects_what_is_not_a_permutation_and_unsupported_inputs():
    x, p0, p1, r0, r1, _, _ = _case((8, 20), 0, 0, seed=4)
    bad = p1.clone()
    bad[3] = 20
    with pytest.raises(IndexError):
        gather.gather(x, p0, bad, r0, r1, use_native=True)
    bad = p0.clone()
    bad[0] = -1
    with pytest.raises(IndexError):
        gather.gather(x, bad, p1, r0, r1, use_native=True)
    bad = p1.clone()
    bad[0] = bad[1]  # in range, repeated: the source-row statistics would leave a row unwritten
    with pytest.raises(IndexError):
        gather.gather(x, p0, bad, r0, r1, use_native=True)
    bad = p0.clone()
    bad[2] = bad[5]
    with pytest.raises(IndexError):
        gather.gather(x, bad, p1, r0, r1, src_norm=True, use_native=True)
    x4 = x.view(8, 5, 2, 2)
    bad = torch.arange(5)
    bad[4] = 5
    with pytest.raises(IndexError):
        gather.gather(x4, p0, bad, r0, torch.ones(5), use_native=True)
    with pytest.raises(ValueError):
        gather.gather(x, p0[:-1].contiguous(), p1, r0[:-1].contiguous(), r1, use_native=True)
    with pytest.raises(ValueError):
        gather.gather(x, p0, p1, r0, r1, src_vecs=torch.ones(2, 19), use_native=True)
    with pytest.raises(ValueError):  # float64 is not the kernel's
        gather.gather(x.double(), p0, p1, r0, r1, use_native=True)
    # by default such inputs take the PyTorch path, with the same result
    want = x.double()[p0][:, p1] * r0.view(-1, 1).double() * r1.view(1, -1).double()
    assert torch.equal(gather.gather(x.double(), p0, p1, r0, r1).out, want)
    t = x.t()  # not contiguous
    assert torch.equal(gather.gather(t, p1, p0, r1, r0).out, t[p1][:, p0] * r1.view(-1, 1) * r0.view(1, -1))


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


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler")
def test_native_builds_serial_when_the_compiler_has_no_openmp(fresh_native, monkeypatch):
    real = native._compiler()
    fake = fresh_native / "cc-without-openmp"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec "{real}" "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    lib = native.load("gather")
    assert lib is not None and native.status("gather").startswith("native")
    fn = lib.bt_gather
    fn.argtypes, fn.restype = gather._SIGNATURE, gather.ctypes.c_int
    monkeypatch.setattr(gather, "_LIB", [fn])
    x, p0, p1, r0, r1, src_vecs, out_vecs = _case((9, 6, 2, 3), 2, 2, seed=5)
    got = gather.gather(x, p0, p1, r0, r1, src_vecs=src_vecs, out_vecs=out_vecs, src_abs=True, use_native=True)
    want = gather.gather(x, p0, p1, r0, r1, src_vecs=src_vecs, out_vecs=out_vecs, src_abs=True, use_native=False)
    assert torch.equal(got.out, want.out)
    for a, b in ((got.src_dot, want.src_dot), (got.out_dot, want.out_dot), (got.src_l1, want.src_l1)):
        assert torch.allclose(a, b, atol=1e-5)
