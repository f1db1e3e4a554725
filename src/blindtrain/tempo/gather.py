"""The enclave's 2-D obfuscation pass: rows and columns gathered and scaled, with the statistics the
checks need taken from the same read.

``gather_rows(x, p0, p1, r0, r1)`` returns ``out = x[p0][:, p1] * (r0 ⊗ r1)`` (``x``: rows×cols;
``r0``, ``r1`` in the output's order) and, on request, per row

* of the source, in the source's row order: ``x @ src_vecsᵀ``, ``‖x_s‖``, and ``min x``;
* of the output: ``out @ out_vecsᵀ`` and ``‖out_i‖``.

Tempo encodes an activation and takes its check products in one read (source statistics), and decodes a
result and takes the check's result side in one read (output statistics).  The fused pass is C
(``gather.c``, compiled on first use by :mod:`.native`); without a compiler the same results come from
PyTorch ops, several passes.  Both are tested against each other and against plain indexing.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import native


class Gathered(NamedTuple):
    out: torch.Tensor                 #: rows×cols, ``x[p0][:, p1] * (r0 ⊗ r1)``
    src_dot: torch.Tensor | None      #: rows×k, ``x @ src_vecsᵀ`` (source row order)
    src_norm: torch.Tensor | None     #: rows×1, ``‖x_s‖`` (source row order)
    src_min: float | None             #: ``min x`` (NaN entries ignored by the native pass)
    out_dot: torch.Tensor | None      #: rows×k, ``out @ out_vecsᵀ``
    out_norm: torch.Tensor | None     #: rows×1, ``‖out_i‖``


_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = [_P, _I, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P, _I, _P, _P, _I]
_LIB: list = []


def _kernel():
    """The C entry point (built on first use), or None."""
    if not _LIB:
        lib = native.load("gather")
        fn = None
        if lib is not None:
            fn = lib.bt_gather_rows
            fn.argtypes, fn.restype = _SIGNATURE, ctypes.c_int
        _LIB.append(fn)
    return _LIB[0]


def backend() -> str:
    """``native (...)`` or ``torch (why)``: which implementation :func:`gather_rows` uses."""
    _kernel()
    return native.status("gather")


_OFFSETS: dict[int, torch.Tensor] = {}


def bag_offsets(n: int) -> torch.Tensor:
    """``torch.arange(n)`` (int64), kept: the offsets of ``n`` one-row bags of ``F.embedding_bag`` (a
    gather-and-scale in one pass) are the same every step."""
    if n not in _OFFSETS:
        if len(_OFFSETS) > 64:  # a few sizes in practice (batch, batch × channels); never grow without bound
            _OFFSETS.clear()
        _OFFSETS[n] = torch.arange(n)
    return _OFFSETS[n]


def _native_ok(x, p0, p1, r0, r1, vecs) -> bool:
    tensors = [x, r0, r1, *[v for v in vecs if v is not None]]
    return (x.dim() == 2 and x.device.type == "cpu" and all(t.dtype == torch.float32 and t.is_contiguous()
                                                            for t in tensors)
            and p0.dtype == p1.dtype == torch.int64 and p0.is_contiguous() and p1.is_contiguous())


def gather_rows(x: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, r0: torch.Tensor, r1: torch.Tensor, *,
                src_vecs: torch.Tensor | None = None, src_norm: bool = False, src_min: bool = False,
                out_vecs: torch.Tensor | None = None, out_norm: bool = False,
                use_native: bool | None = None) -> Gathered:
    """``x[p0][:, p1] * (r0 ⊗ r1)`` and the requested statistics (see the module docstring).

    Shapes: ``x`` rows×cols; ``p0`` (rows), ``p1`` (cols) permutations (int64); ``r0`` (rows), ``r1`` (cols); ``src_vecs``, ``out_vecs`` k×cols.  ``use_native``:
    force (True) or forbid (False) the C pass; by default it serves every float32 CPU call it can."""
    fn = _kernel() if use_native is not False else None
    if use_native and fn is None:
        raise RuntimeError(f"native gather unavailable: {backend()}")
    if fn is not None and _native_ok(x, p0, p1, r0, r1, (src_vecs, out_vecs)):
        return _native(fn, x, p0, p1, r0, r1, src_vecs, src_norm, src_min, out_vecs, out_norm)
    if use_native:
        raise ValueError("native gather needs contiguous float32 CPU tensors and int64 permutations")
    return _torch(x, p0, p1, r0, r1, src_vecs, src_norm, src_min, out_vecs, out_norm)


def _native(fn, x, p0, p1, r0, r1, src_vecs, src_norm, src_min, out_vecs, out_norm) -> Gathered:
    rows, cols = x.shape
    if p0.numel() != rows or p1.numel() != cols or r0.numel() != rows or r1.numel() != cols:
        raise ValueError("gather_rows: p0, r0 need one entry per row and p1, r1 one per column")
    out = torch.empty(rows, cols)
    ks, ko = (0 if v is None else v.shape[0] for v in (src_vecs, out_vecs))
    for v in (src_vecs, out_vecs):
        if v is not None and v.shape[1] != cols:
            raise ValueError("gather_rows: check vectors are k×cols")
    sdot = torch.empty(rows, ks) if ks else None
    ssq = torch.empty(rows, dtype=torch.float64) if src_norm else None
    smin = torch.empty(rows) if src_min else None
    odot = torch.empty(rows, ko) if ko else None
    osq = torch.empty(rows, dtype=torch.float64) if out_norm else None

    def ptr(t):
        return None if t is None else t.data_ptr()

    status = fn(x.data_ptr(), rows, cols, p0.data_ptr(), p1.data_ptr(), r0.data_ptr(), r1.data_ptr(), out.data_ptr(),
       ptr(src_vecs), ks, ptr(sdot), ptr(ssq), ptr(smin), ptr(out_vecs), ko, ptr(odot), ptr(osq),
       torch.get_num_threads())
    if status != 0:
        raise IndexError("gather_rows: a permutation index is out of range")
    return Gathered(out, sdot,
                    None if ssq is None else ssq.sqrt_().float().view(-1, 1),
                    None if smin is None else (float(smin.min()) if rows else float("inf")),
                    odot,
                    None if osq is None else osq.sqrt_().float().view(-1, 1))


def thin_product(a: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``a @ vecsᵀ`` for a few vectors (``vecs``: k×cols), computed as ``(vecs aᵀ)ᵀ``: a GEMM with the thin
    side as its few rows reads ``a`` once and runs several times faster than a GEMM with a few columns or
    than one matrix-vector product per vector (and for ``a = xᵀ`` it reads ``x`` in its own layout).  The
    same inner products, only summed in another order: the checks' error bounds hold for any order."""
    return torch.matmul(vecs, a.t()).t()


def _torch(x, p0, p1, r0, r1, src_vecs, src_norm, src_min, out_vecs, out_norm) -> Gathered:
    """The same in PyTorch ops: rows gathered and scaled in one pass (one-row "bags" weighted by r0:
    ``x·r0`` exactly, one product each), then the columns gathered, then scaled."""
    if x.dtype == r0.dtype:
        out = F.embedding_bag(p0, x, bag_offsets(x.shape[0]), mode="sum", per_sample_weights=r0)
    else:
        out = x.index_select(0, p0).mul_(r0.view(-1, 1).to(x.dtype))
    out = out.index_select(1, p1).mul_(r1.to(x.dtype))
    return Gathered(out,
                    None if src_vecs is None else thin_product(x, src_vecs),
                    x.norm(dim=1, keepdim=True) if src_norm else None,
                    float(x.amin()) if src_min and x.numel() else (float("inf") if src_min else None),
                    None if out_vecs is None else thin_product(out, out_vecs),
                    out.norm(dim=1, keepdim=True) if out_norm else None)
