"""The field engine: exact ``f(A, B) mod p`` for every bilinear op, on int8 or float64 arithmetic.

Every field protocol computes its products here, on the worker and in the enclave.
``p`` is any prime below 2^61 (default :data:`~blindtrain.field.codec.DEFAULT_MODULUS`,
the Mersenne prime 2^61 − 1, whose reductions are rotations).

Operands
--------
Integer tensors (or floating tensors holding integers).  An int64 operand with values
above ``(p−1)/2`` is taken as field elements and *centred* (``|a| ≤ (p−1)/2``); int8 / int16 /
int32 operands are signed integers bounded by their dtype.  The protocols exploit this
asymmetry: the masked operand ``x̃ + r`` is uniform in F_p (61 bits: eight int8 limbs), the
weight is a fixed-point value the codec keeps within ``weight_bits`` (int16 on the wire: two
int8 limbs, taken straight from its bytes, :func:`~.limbs.byte_planes`).

Back-ends (both exact; results identical)
-----------------------------------------
Both lower ``f`` to matrix products (:mod:`.lowering`), split each operand into limbs
(:mod:`.limbs`), compute every limb product in one call (limbs stacked along rows / columns)
and recombine ``Σ 2^(shift)·P_ij mod p`` in int64 (:func:`.integers.combine`).

``int8``    ``torch._int_mm`` (int8 × int8 -> int32; CUDA tensor cores, oneDNN VNNI on CPU).
            Digits lie in ``[−128, 127]``, so each product is at most ``2^14`` in magnitude and an
            int32 accumulator of ``K`` of them cannot overflow while ``K·2^14 ≤ 2^31 − 1``, i.e.
            ``K ≤ 131071``: longer contractions are split into chunks of that length and the
            chunks added in int64 (|sum| < 2^62 for any K < 2^48).  CUDA's shape rules (rows > 16,
            K and columns multiples of 8) are met by zero padding, which adds nothing.
``float64`` ``torch.matmul`` on float64 limbs of widths ``w_L + w_R ≤ 55 − ⌈log2 K⌉``, so every
            partial sum is at most ``K·2^(w_L−1)·2^(w_R−1) ≤ 2^53`` and exact; the portable fallback.

``backend="auto"`` runs both back-ends the first time a *shape class* (device, op, sizes
rounded to powers of two, limb counts) is seen (ops of fewer than 2^18 multiply-adds per limb
product go to float64 unmeasured), checks that they agree bit for bit, and keeps
the faster for that class (a process-wide cache: :data:`CALIBRATION`).  :meth:`FieldEngine.report`
says which ran, how often, and the calibration timings.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from . import integers, limbs
from .lowering import Lowered, lower

BACKENDS = ("int8", "float64")
INT32_MAX = 2**31 - 1
TINY_WORK = 2**18  # G·M·K·N below this: not calibrated, float64 (both back-ends take well under 1 ms)
FLOAT64_EXACT = 2**53


@dataclass
class Calibration:
    """The measured choice for one shape class."""

    chosen: str
    milliseconds: dict[str, float]


#: Process-wide calibration results, by shape class (see :meth:`FieldEngine.shape_class`).
CALIBRATION: dict[tuple, Calibration] = {}


@dataclass
class _Operand:
    tensor: torch.Tensor
    bound: int  # max |tensor|


@dataclass
class EngineStats:
    runs: Counter = field(default_factory=Counter)  # (fn, backend) -> count
    classes: dict = field(default_factory=dict)  # shape class -> Calibration (those this engine used)


def _bucket(n: int) -> int:
    return max(int(n) - 1, 0).bit_length()


class FieldEngine:
    """Exact bilinear ops mod ``modulus`` (keyword ``backend``: ``auto``, ``int8`` or ``float64``)."""

    def __init__(self, modulus: int, *, backend: str = "auto") -> None:
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"field back-end must be auto, int8 or float64, got {backend!r}")
        if not 2 < modulus < 2**61 + 1:
            raise ValueError("the field engine takes a modulus below 2^61")
        self.p = int(modulus)
        self.backend = backend
        self.stats = EngineStats()
        self._workspace: dict = {}

    # -- operands ---------------------------------------------------------------------------------
    def _operand(self, t: torch.Tensor) -> _Operand:
        p = self.p
        if t.is_floating_point():
            t = t.to(torch.int64)
        if t.dtype in (torch.int8, torch.int16, torch.int32) and limbs.dtype_bound(t.dtype) <= p // 2:
            return _Operand(t, limbs.dtype_bound(t.dtype))
        t = t.to(torch.int64)
        if t.numel() == 0:
            return _Operand(t, 0)
        low, high = (int(v) for v in torch.aminmax(t))
        bound = max(-low, high)
        if bound <= p // 2:
            return _Operand(t, bound)
        if low < 0 or high >= p:
            t = integers.reduce(t, p)
        return _Operand(integers.centre(t, p), p // 2)

    # -- the op -------------------------------------------------------------------------------------
    def bilinear(self, fn: str, a: torch.Tensor, b: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """``fn(A, B) mod p`` exactly, as int64 in ``[0, p)`` on the operands' device."""
        params = params or {}
        low = lower(fn, a.shape, b.shape, params)
        oa, ob = self._operand(a), self._operand(b)
        backend = self.backend
        if backend == "auto":
            backend, result = self._calibrated(fn, low, oa, ob)
        else:
            result = self._run(backend, low, oa, ob)
        self.stats.runs[(fn, backend)] += 1
        return result

    def choose(self, fn: str, a: torch.Tensor, b: torch.Tensor, params: dict | None = None) -> str:
        """The back-end this engine would run ``fn`` on for such operands (calibrating the class if new)."""
        if self.backend != "auto":
            return self.backend
        low = lower(fn, a.shape, b.shape, params or {})
        oa, ob = self._operand(a), self._operand(b)
        known = CALIBRATION.get(self.shape_class(fn, low, oa, ob))
        return known.chosen if known is not None else self._calibrated(fn, low, oa, ob)[0]

    def shape_class(self, fn: str, low: Lowered, oa: _Operand, ob: _Operand) -> tuple:
        return (oa.tensor.device.type, fn, _bucket(low.groups), _bucket(low.rows), _bucket(low.depth),
                _bucket(low.cols), limbs.limbs_needed(oa.bound, 8), limbs.limbs_needed(ob.bound, 8),
                str(oa.tensor.dtype), str(ob.tensor.dtype))

    def _calibrated(self, fn, low, oa, ob):
        if low.groups * low.rows * low.depth * low.cols < TINY_WORK:
            return "float64", self._run("float64", low, oa, ob)  # too small to time; float64 has no set-up
        key = self.shape_class(fn, low, oa, ob)
        known = CALIBRATION.get(key)
        if known is not None:
            self.stats.classes[key] = known
            return known.chosen, self._run(known.chosen, low, oa, ob)
        results, times = {}, {}
        for backend in (*BACKENDS, BACKENDS[0]):  # the first again: its first run paid the warm-up
            start = time.perf_counter()
            results[backend] = self._run(backend, low, oa, ob)
            if results[backend].is_cuda:
                torch.cuda.synchronize()
            elapsed = (time.perf_counter() - start) * 1e3
            times[backend] = min(times.get(backend, elapsed), elapsed)
        if not torch.equal(results["int8"], results["float64"]):  # pragma: no cover - an engine bug
            raise RuntimeError(f"field engine back-ends disagree on {fn} {key}: refusing to continue")
        chosen = min(times, key=times.get)
        CALIBRATION[key] = self.stats.classes[key] = Calibration(chosen, times)
        return chosen, results[chosen]

    def _run(self, backend: str, low: Lowered, oa: _Operand, ob: _Operand) -> torch.Tensor:
        left, right = (oa, ob) if low.left_is_a else (ob, oa)
        if backend == "int8":
            terms = self._int8_terms(low, left, right)
        elif backend == "float64":
            terms = self._float64_terms(low, left, right)
        else:
            raise ValueError(f"unknown field back-end {backend!r}")
        out = integers.combine(terms, (low.groups, low.rows, low.cols), self.p, device=oa.tensor.device)
        return low.finish(out)

    # -- int8 limbs on torch._int_mm ------------------------------------------------------------------
    def _int8_limbs(self, operand: _Operand, *, right: bool, padding_free: bool) -> limbs.Limbs:
        t = operand.tensor
        if t.dtype == torch.int8:
            return limbs.Limbs(t.unsqueeze(0), 8, (0,), 128)
        if right and padding_free and t.dtype in (torch.int16, torch.int32):  # its bytes, whatever the values
            return limbs.byte_planes(t, self._workspace)
        return limbs.balanced(t, width=8, count=limbs.limbs_needed(operand.bound, 8), dtype=torch.int8)

    def _int8_terms(self, low: Lowered, left: _Operand, right: _Operand) -> list[integers.Term]:
        ll = self._int8_limbs(left, right=False, padding_free=False)
        rl = self._int8_limbs(right, right=True, padding_free=low.right_padding_free)
        lm, rm = low.left(ll.planes), low.right(rl.planes)
        out = int8_matmul(lm, rm, digit_bound=ll.digit_bound * rl.digit_bound)
        g, m, k, n = low.groups, low.rows, low.depth, low.cols
        blocks = out.view(g, ll.count, m, n, rl.count)
        product_bound = k * ll.digit_bound * rl.digit_bound
        terms = [integers.Term(ll.width * i + rl.width * j, blocks[:, i, :, :, j], product_bound)
                 for i in range(ll.count) for j in range(rl.count)]
        if any(rl.offsets):  # f(L_i, offset) = offset·rowsum(L_i)
            ones = torch.ones((g, k, 8), dtype=torch.int8, device=lm.device)  # row sums on _int_mm too
            rows = int8_matmul(lm, ones, digit_bound=ll.digit_bound)[..., 0].view(g, ll.count, m).to(torch.int64)
            for j, offset in enumerate(rl.offsets):
                if offset:
                    terms += [integers.Term(ll.width * i + rl.width * j, rows[:, i, :, None] * offset,
                                            k * ll.digit_bound * offset) for i in range(ll.count)]
        return terms

    # -- float64 limbs -------------------------------------------------------------------------------
    @staticmethod
    def float64_widths(k: int, left_bound: int, right_bound: int) -> tuple[int, int]:
        """Limb widths ``(w_L, w_R)`` with ``w_L + w_R ≤ 55 − ⌈log2 K⌉`` and the fewest limb products."""
        budget = 55 - max(k - 1, 0).bit_length()
        if budget < 4:
            raise ValueError(f"contraction of length {k} is too long for exact float64 limbs")
        best = None
        for wr in range(2, budget - 1):
            wl = budget - wr
            cost = limbs.limbs_needed(left_bound, wl) * limbs.limbs_needed(right_bound, wr)
            if best is None or cost < best[0]:
                best = (cost, wl, wr)
        return best[1], best[2]

    def _float64_terms(self, low: Lowered, left: _Operand, right: _Operand) -> list[integers.Term]:
        k = low.depth
        wl, wr = self.float64_widths(k, left.bound, right.bound)
        ll = limbs.balanced(left.tensor, width=wl, count=limbs.limbs_needed(left.bound, wl), dtype=torch.float64)
        rl = limbs.balanced(right.tensor, width=wr, count=limbs.limbs_needed(right.bound, wr),
                            dtype=torch.float64)
        out = torch.matmul(low.left(ll.planes), low.right(rl.planes))
        blocks = out.view(low.groups, ll.count, low.rows, low.cols, rl.count)
        product_bound = k * ll.digit_bound * rl.digit_bound  # ≤ 2^53: every partial sum exact
        return [integers.Term(wl * i + wr * j, blocks[:, i, :, :, j], product_bound)
                for i in range(ll.count) for j in range(rl.count)]

    # -- reporting -----------------------------------------------------------------------------------
    def report(self) -> dict:
        runs: dict[str, dict[str, int]] = {}
        for (fn, backend), count in sorted(self.stats.runs.items()):
            runs.setdefault(fn, {})[backend] = count
        return {"modulus": self.p, "backend_setting": self.backend, "runs": runs,
                "calibration": [{"class": "/".join(str(v) for v in key), "chosen": cal.chosen,
                                 "ms": {b: round(t, 3) for b, t in cal.milliseconds.items()}}
                                for key, cal in self.stats.classes.items()]}


def int8_matmul(left: torch.Tensor, right: torch.Tensor, *, digit_bound: int = 2**14) -> torch.Tensor:
    """``left (G, M, K) @ right (G, K, N)`` for int8 operands, exactly: int32, or int64 when K is chunked.

    ``digit_bound`` bounds ``|l·r|`` for one pair of entries; a chunk of ``K`` accumulates at most
    ``K_chunk·digit_bound ≤ 2^31 − 1`` (see the module docstring)."""
    g, m, k = left.shape
    n = right.shape[-1]
    chunk = max(INT32_MAX // digit_bound, 1)
    cuda = left.is_cuda
    outs = []
    for index in range(g):
        lg, rg = left[index], right[index]
        if cuda:
            lg, rg = _cuda_pad(lg, rg)
        if k <= chunk:
            out = torch._int_mm(lg.contiguous(), rg.contiguous())
        else:
            out = None
            for start in range(0, k, chunk):
                part = torch._int_mm(lg[:, start:start + chunk].contiguous(), rg[start:start + chunk].contiguous())
                out = part.to(torch.int64) if out is None else out.add_(part)
        outs.append(out[:m, :n])
    return outs[0].unsqueeze(0) if g == 1 else torch.stack(outs)


def _cuda_pad(lg: torch.Tensor, rg: torch.Tensor):
    """Zero padding to CUDA ``_int_mm``'s shape rules (rows > 16; K, columns multiples of 8)."""
    m, k = lg.shape
    n = rg.shape[1]
    m2, k2, n2 = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    if (m2, k2) != (m, k):
        lg = torch.nn.functional.pad(lg, (0, k2 - k, 0, m2 - m))
    if (k2, n2) != (k, n):
        rg = torch.nn.functional.pad(rg, (0, n2 - n, 0, k2 - k))
    return lg, rg


_DEFAULT_ENGINES: dict[tuple, FieldEngine] = {}


def engine_for(modulus: int, backend: str = "auto") -> FieldEngine:
    """A shared engine per (modulus, back-end) for callers that keep none of their own."""
    key = (int(modulus), backend)
    if key not in _DEFAULT_ENGINES:
        _DEFAULT_ENGINES[key] = FieldEngine(int(modulus), backend=backend)
    return _DEFAULT_ENGINES[key]


def bits(bound: int) -> int:
    """Magnitude bits of a bound: ``⌈log2(bound + 1)⌉``."""
    return int(bound).bit_length()


__all__ = ["BACKENDS", "CALIBRATION", "FieldEngine", "engine_for", "int8_matmul", "bits"]
