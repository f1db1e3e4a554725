"""The enclave's obfuscation pass: rows and columns (channels) gathered and scaled, with the statistics
the checks need taken from the same read.

``gather(x, p0, p1, r0, r1)`` returns ``out = x[p0][:, p1] * (r0 ⊗ r1)`` (``x``: rows×cols or
rows×cols×h×w; ``r0``, ``r1`` in the output's order) and, on request, contractions over dim 1 (the
columns, or channels: per row of a matrix, per pixel of a conv activation)

* of the source, in the source's row order: ``Σ_c x[:, c] src_vecs[k, c]`` (for a matrix: accumulated in
  float64 and rounded once), the L2 and L1 norms and
  the max of ``|x|`` over c, and ``min x``;
* of the output: ``Σ_j out[:, j] out_vecs[k, j]`` and the L2 norm over j.

Each statistic has the shape of ``out`` with dim 1 of size k (the vectors) or 1.  Tempo encodes an
activation and takes its check products in one read (source statistics), and decodes a result and
takes the check's result side in one read (output statistics).  The fused pass is C (``gather.c``,
compiled on first use by :mod:`.native`); without a compiler the same results come from PyTorch ops,
several passes.  Both are tested against each other and against plain indexing.
"""

from __future__ import annotations

import ctypes
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import native, thin


class Gathered(NamedTuple):
    out: torch.Tensor                 #: ``x[p0][:, p1] * (r0 ⊗ r1)``
    src_dot: torch.Tensor | None      #: ``Σ_c x[:, c] src_vecs[k, c]`` (source row order; dim 1: k)
    src_norm: torch.Tensor | None     #: ``‖x[:, c]‖₂`` over c (source row order; dim 1: 1)
    src_l1: torch.Tensor | None       #: ``Σ_c |x[:, c]|``
    src_linf: torch.Tensor | None     #: ``max_c |x[:, c]|``
    src_min: float | None             #: ``min x`` (NaN entries ignored by the native pass)
    out_dot: torch.Tensor | None      #: ``Σ_j out[:, j] out_vecs[k, j]``
    out_norm: torch.Tensor | None     #: ``‖out[:, j]‖₂`` over j


_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = [_P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P, _I]
_LIB: list = []


def _kernel():
    """The C entry point (built on first use), or None."""
    if not _LIB:
        lib = native.load("gather")
        fn = None
        if lib is not None:
            fn = lib.bt_gather
            fn.argtypes, fn.restype = _SIGNATURE, ctypes.c_int
        _LIB.append(fn)
    return _LIB[0]


def backend() -> str:
    """``native (...)`` or ``torch (why)``: which implementation :func:`gather` uses (building the
    native one on first call)."""
    status = native.status("gather")
    return status if _kernel() is not None or status.startswith("torch") else "torch (native pass not loaded)"


_OFFSETS: dict[int, torch.Tensor] = {}


def _bag_offsets(n: int) -> torch.Tensor:
    """``torch.arange(n)`` (int64), kept: the offsets of ``n`` one-row bags of ``F.embedding_bag`` (a
    gather-and-scale in one pass) are the same every step."""
    if n not in _OFFSETS:
        if len(_OFFSETS) > 64:  # a few sizes in practice (batch, batch × channels); never grow without bound
            _OFFSETS.clear()
        _OFFSETS[n] = torch.arange(n)
    return _OFFSETS[n]


def _native_ok(x, p0, p1, r0, r1, vecs) -> bool:
    tensors = [x, r0, r1, *[v for v in vecs if v is not None]]
    return (x.dim() >= 2 and x.device.type == "cpu" and all(t.dtype == torch.float32 and t.is_contiguous()
                                                            for t in tensors)
            and p0.dtype == p1.dtype == torch.int64 and p0.is_contiguous() and p1.is_contiguous())


def gather(x: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, r0: torch.Tensor, r1: torch.Tensor, *,
           src_vecs: torch.Tensor | None = None, src_norm: bool = False, src_abs: bool = False,
           src_min: bool = False, out_vecs: torch.Tensor | None = None, out_norm: bool = False,
           use_native: bool | None = None) -> Gathered:
    """``x[p0][:, p1] * (r0 ⊗ r1)`` and the requested statistics (see the module docstring; ``src_abs``:
    both the L1 norm and the max of ``|x|``).

    Shapes: ``x`` rows×cols(×h×w); ``p0`` (rows), ``p1`` (cols) permutations (int64); ``r0`` (rows),
    ``r1`` (cols); ``src_vecs``, ``out_vecs`` k×cols.  ``use_native``: force (True) or forbid (False) the C
    pass; by default it serves every float32 CPU call it can."""
    rows, cols = x.shape[0], x.shape[1]
    if p0.numel() != rows or p1.numel() != cols or r0.numel() != rows or r1.numel() != cols:
        raise ValueError("gather: p0, r0 need one entry per row and p1, r1 one per column")
    for v in (src_vecs, out_vecs):
        if v is not None and (v.dim() != 2 or v.shape[1] != cols):
            raise ValueError("gather: check vectors are k×cols")
    fn = _kernel() if use_native is not False else None
    if use_native and fn is None:
        raise RuntimeError(f"native gather unavailable: {backend()}")
    if fn is not None and _native_ok(x, p0, p1, r0, r1, (src_vecs, out_vecs)):
        return _native(fn, x, p0, p1, r0, r1, src_vecs, src_norm, src_abs, src_min, out_vecs, out_norm)
    if use_native:
        raise ValueError("native gather needs contiguous float32 CPU tensors and int64 permutations")
    return _torch(x, p0, p1, r0, r1, src_vecs, src_norm, src_abs, src_min, out_vecs, out_norm)


def _native(fn, x, p0, p1, r0, r1, src_vecs, src_norm, src_abs, src_min, out_vecs, out_norm) -> Gathered:
    rows, cols, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    plane = math.prod(spatial)
    out = torch.empty(x.shape)
    ks, ko = (0 if v is None else v.shape[0] for v in (src_vecs, out_vecs))

    def stat(wanted, channels=1, dtype=torch.float32):
        return torch.empty(rows, channels, *spatial, dtype=dtype) if wanted else None

    sdot, odot = stat(ks, ks), stat(ko, ko)
    ssq, osq = stat(src_norm, dtype=torch.float64), stat(out_norm, dtype=torch.float64)
    sl1, slinf = stat(src_abs), stat(src_abs)
    smin = torch.empty(rows) if src_min else None

    def ptr(t):
        return None if t is None else t.data_ptr()

    status = fn(x.data_ptr(), rows, cols, plane, p0.data_ptr(), p1.data_ptr(), r0.data_ptr(), r1.data_ptr(),
                out.data_ptr(), ptr(src_vecs), ks, ptr(sdot), ptr(ssq), ptr(sl1), ptr(slinf), ptr(smin),
                ptr(out_vecs), ko, ptr(odot), ptr(osq), torch.get_num_threads())
    if status == -2:
        raise MemoryError("gather: out of memory")
    if status != 0:
        raise IndexError("gather: p0 or p1 is not a permutation (an index out of range or repeated)")
    return Gathered(out, sdot, None if ssq is None else ssq.sqrt_().float(), sl1, slinf,
                    None if smin is None else (float(smin.min()) if rows else float("inf")),
                    odot, None if osq is None else osq.sqrt_().float())


def thin_product(a: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``a @ vecsᵀ`` for a few vectors (``vecs``: k×cols), computed as ``(vecs aᵀ)ᵀ``: a GEMM with the thin
    side as its few rows reads ``a`` once and runs several times faster than a GEMM with a few columns or
    than one matrix-vector product per vector (and for ``a = xᵀ`` it reads ``x`` in its own layout).  The
    same inner products, only summed in another order: the checks' error bounds hold for any order."""
    return torch.matmul(vecs, a.t()).t()


def _contract(t, vecs):
    """``Σ_c t[:, c] vecs[k, c]`` with dim 1 of size k: a thin GEMM (a matrix's in float64, rounded to float32
    once, as the native pass does: the linear checks' tolerances count on it)."""
    if t.dim() == 2:
        return thin_product(t.double(), vecs.double()).to(t.dtype)
    return thin.channels(t, vecs.t())


def _torch(x, p0, p1, r0, r1, src_vecs, src_norm, src_abs, src_min, out_vecs, out_norm) -> Gathered:
    """The same in PyTorch ops.  2-D: rows gathered and scaled in one pass (one-row "bags" weighted by r0:
    ``x·r0`` exactly, one product each), then the columns gathered, then scaled.  More dims: one gather
    and scale of the (row, channel) planes."""
    d0, d1 = x.shape[0], x.shape[1]
    if x.dim() == 2:
        if x.dtype == r0.dtype:
            out = F.embedding_bag(p0, x, _bag_offsets(d0), mode="sum", per_sample_weights=r0)
        else:
            out = x.index_select(0, p0).mul_(r0.view(-1, 1).to(x.dtype))
        out = out.index_select(1, p1).mul_(r1.to(x.dtype))
    else:
        scale = r0.view(-1, 1) * r1.view(1, -1)
        planes = (p0.view(-1, 1) * d1 + p1.view(1, -1)).view(-1)
        flat = x.reshape(d0 * d1, -1)
        if flat.dtype == scale.dtype:
            out = F.embedding_bag(planes, flat, _bag_offsets(planes.numel()), mode="sum",
                                  per_sample_weights=scale.reshape(-1))
        else:
            out = flat.index_select(0, planes).mul_(scale.reshape(-1, 1).to(x.dtype))
        out = out.view(x.shape)
    ax = x.abs() if src_abs else None
    return Gathered(out,
                    None if src_vecs is None else _contract(x, src_vecs),
                    x.norm(dim=1, keepdim=True) if src_norm else None,
                    None if ax is None else ax.sum(1, keepdim=True),
                    None if ax is None else ax.amax(1, keepdim=True),
                    None if not src_min else (float(x.amin()) if x.numel() else float("inf")),
                    None if out_vecs is None else _contract(out, out_vecs),
                    out.norm(dim=1, keepdim=True) if out_norm else None)
