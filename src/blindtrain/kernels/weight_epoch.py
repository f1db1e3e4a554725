"""A weight matrix's key epoch in one read: its obfuscation and the check statistics tempo tracks.

For ``W`` (m×n, float32), permutations ``p0`` (m), ``p1`` (n), scales ``r0``, ``r1`` in the output's order
and check vectors ``ρ`` (m×k), ``σ`` (n×k), :func:`weight_epoch` returns

* ``encrypted = W[p0][:, p1] * (r0 ⊗ r1)``, bit for bit what :func:`blindtrain.kernels.gather.gather` returns
  (the same expression ``(w · r0[i]) · r1[j]`` per element);
* ``q = Wᵀρ`` (n×k), ``q_abs = |W|ᵀ|ρ|`` (n×k), ``v = Wσ`` (m×k), ``v_abs = |W||σ|`` (m×k),
* ``row_norm = ‖W[i, :]‖₂`` (m), ``col_norm = ‖W[:, j]‖₂`` (n),

all float64, every sum accumulated in float64 (a float32 product is exact there), so they equal the
float64 references to float64 rounding (tested).  Why: a new key epoch (the first step, every rotation)
used to take seven passes over ``W`` and four float64 copies of it (about 1.6 s for one 4096×4096 layer on
the loaded 2-core machine, against 0.17 s for the obfuscation itself); the kernel (``weight_epoch.c``)
reads each row once while it is in cache.  Without a C compiler the same results come from PyTorch ops.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch

from . import native

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = [_P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _I]
_FN: list = []


class WeightEpoch(NamedTuple):
    encrypted: torch.Tensor   #: ``W[p0][:, p1] * (r0 ⊗ r1)`` (m×n, float32)
    q: torch.Tensor           #: ``Wᵀρ`` (n×k, float64)
    q_abs: torch.Tensor       #: ``|W|ᵀ|ρ|`` (n×k)
    v: torch.Tensor           #: ``Wσ`` (m×k)
    v_abs: torch.Tensor       #: ``|W||σ|`` (m×k)
    row_norm: torch.Tensor    #: ``‖W[i, :]‖₂`` (m)
    col_norm: torch.Tensor    #: ``‖W[:, j]‖₂`` (n)


def _kernel():
    if not _FN:
        lib = native.load("weight_epoch")
        fn = None
        if lib is not None:
            fn = lib.bt_weight_epoch
            fn.argtypes, fn.restype = _SIGNATURE, ctypes.c_int
        _FN.append(fn)
    return _FN[0]


def backend() -> str:
    """``native (...)`` or ``torch (why)``."""
    _kernel()
    return native.status("weight_epoch")


def weight_epoch(w: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, r0: torch.Tensor, r1: torch.Tensor,
                 rho: torch.Tensor, sigma: torch.Tensor, *, use_native: bool | None = None) -> WeightEpoch:
    """See the module docstring.  ``w`` m×n float32; ``p0``/``p1`` int64 permutations; ``r0`` (m), ``r1``
    (n) float32 in the output's order; ``rho`` m×k, ``sigma`` n×k float32.  ``use_native``: force (True) or
    forbid (False) the C pass.  Raises ``IndexError`` if ``p0`` or ``p1`` is not a permutation."""
    if w.dim() != 2:
        raise ValueError("weight_epoch: W is a matrix (conv weights take the gather pass)")
    m, n = w.shape
    k = rho.shape[1]
    if p0.numel() != m or r0.numel() != m or p1.numel() != n or r1.numel() != n:
        raise ValueError("weight_epoch: p0, r0 need one entry per row and p1, r1 one per column")
    if rho.shape != (m, k) or sigma.shape != (n, k):
        raise ValueError("weight_epoch: rho is m×k and sigma n×k")
    fn = _kernel() if use_native is not False else None
    if use_native and fn is None:
        raise RuntimeError(f"native weight_epoch unavailable: {backend()}")
    if fn is None or w.device.type != "cpu":
        return _torch(w, p0, p1, r0, r1, rho, sigma)
    w = w.detach().float().contiguous()
    p0, p1 = p0.to(torch.int64).contiguous(), p1.to(torch.int64).contiguous()
    r0, r1 = r0.float().contiguous(), r1.float().contiguous()
    rho_c, sigma_t = rho.float().contiguous(), sigma.float().t().contiguous()
    out = torch.empty(m, n)
    q, q_abs = torch.empty(k, n, dtype=torch.float64), torch.empty(k, n, dtype=torch.float64)
    v, v_abs = torch.empty(m, k, dtype=torch.float64), torch.empty(m, k, dtype=torch.float64)
    row_sq, col_sq = torch.empty(m, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    status = fn(w.data_ptr(), m, n, p0.data_ptr(), p1.data_ptr(), r0.data_ptr(), r1.data_ptr(), out.data_ptr(),
                rho_c.data_ptr(), sigma_t.data_ptr(), k, q.data_ptr(), q_abs.data_ptr(), v.data_ptr(),
                v_abs.data_ptr(), row_sq.data_ptr(), col_sq.data_ptr(), torch.get_num_threads())
    if status == -2:
        raise MemoryError("weight_epoch: out of memory")
    if status != 0:
        raise IndexError("weight_epoch: p0 or p1 is not a permutation (an index out of range or repeated)")
    return WeightEpoch(out, q.t(), q_abs.t(), v, v_abs, row_sq.sqrt_(), col_sq.sqrt_())


def _torch(w, p0, p1, r0, r1, rho, sigma) -> WeightEpoch:
    """The same in PyTorch ops (several passes; float64 throughout)."""
    from .gather import gather

    w = w.detach().float()
    wd, aw = w.double(), w.abs().double()
    rho_d, sigma_d = rho.double(), sigma.double()
    encrypted = gather(w.contiguous(), p0, p1, r0.float(), r1.float(), use_native=False).out
    return WeightEpoch(encrypted, wd.t() @ rho_d, aw.t() @ rho_d.abs(), wd @ sigma_d, aw @ sigma_d.abs(),
                       wd.norm(dim=1), wd.norm(dim=0))


__all__ = ["WeightEpoch", "backend", "weight_epoch"]
