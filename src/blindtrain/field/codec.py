"""Fixed-point encoding of real tensors into the prime field F_p.

Encoding
--------
A tensor ``x`` is encoded with a per-tensor shared exponent ``l`` (an integer, any
sign) as the integers ``x̃ = round(2^l · x)`` (int64) embedded in F_p (negative values as
``p − |x̃|``).  Activations and weights use round-to-nearest (``|x̃·2^-l − x| ≤ 2^-l/2``);
gradients use stochastic rounding from the enclave CSPRNG (unbiased,
``|x̃·2^-l − x| < 2^-l``).  Decoding takes the centred representative in
``(−p/2, p/2]`` and multiplies by ``2^-l``.  ``round(2^l·x)`` is computed exactly in float64
even above 2^53 (a float32 value times a power of two keeps its 24-bit mantissa).

Bits and overflow
-----------------
A product ``f(Ã, B̃)`` decodes correctly only if every output element, as an
integer, lies in ``(−p/2, p/2]``: there is no other way to tell a wrapped value.
:func:`encode_pair` therefore chooses the two exponents so that a *rigorous*
Cauchy–Schwarz bound holds: every output element is a dot product of one window of
``Ã`` (a row for matmul, a receptive field for a convolution) with one column /
filter of ``B̃``, so ``|f(Ã,B̃)| ≤ max‖window(Ã)‖₂ · max‖column(B̃)‖₂ ≤ (p−1)/2``;
the bound is checked on the integers actually produced and the exponents lowered
until it holds.  The bits available to both operands together are thus about
``log2((p−1)/2) − log2(‖window‖·‖column‖ / (max|a|·max|b|))``: with the default
p = 2^61 − 1 about 60 − log2(K) bits for a contraction of length K (≈ 48 for K = 4096).
They are split so that each operand gets the same number of bits relative to its own
largest element, except that the weight operand ``B̃`` is capped at ``b_bits`` signed
bits (``|B̃| ≤ 2^(b_bits−1) − 1``; 16 by default, an int16 on the wire = two int8 limbs in the
field engine) and ``Ã`` takes the rest (≈ 32 bits for K = 4096).  :class:`Encoded` reports
the bits each operand actually used.

Per-row and per-column scales (:func:`encode_scaled`, what ``otp`` uses)
-------------------------------------------------------------------------
A scale per row of ``a`` (per sample for convolutions) commutes with the product from the left and a
scale per output column of ``b`` (per output channel) from the right, so
``fn(ã, b̃)[i, j] ≈ 2^(ea_i + eb_j)·fn(a, b)[i, j]`` is undone exactly by a power of two per output
element.  Each weight column then gets its full ``b_bits`` relative to its own largest element and
each row of ``a`` the largest exponent with ``max‖window_i(ã)‖₂·max_j‖column_j(b̃)‖₂ ≤ (p−1)/2``
(the same rigorous bound, per row, checked on the integers produced), instead of the whole
tensor's leftovers (``otp`` uses per-row scales; per-column ones are an option, off by default).
``slalom`` keeps per-tensor exponents (its weights are encoded once, offline).

Error bound
-----------
With ``e_a = 2^-l_a·ρ`` and ``e_b = 2^-l_b·ρ`` (ρ = 1/2 for nearest, 1 for
stochastic rounding), the decoded result of one op satisfies, elementwise,
``|f̂ − f(a,b)| ≤ e_b·f(|a|, 1) + e_a·f(1, |b|) + e_a·e_b·f(1, 1)``
(:func:`error_bound`), because no wrap-around happens and the field arithmetic is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import bilinear

DEFAULT_MODULUS = 2**61 - 1  # a Mersenne prime: the engine's reductions are rotations
MAX_MODULUS_BITS = 61


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for q in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % q == 0:
            return n == q
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):  # deterministic for n < 3.3e24
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def check_modulus(p) -> int:
    """Validate the field modulus: a prime with 2^8 < p < 2^61 (int64 arithmetic stays exact)."""
    from ..errors import UsageError

    try:
        p = int(p)
    except (TypeError, ValueError):
        raise UsageError(f"modulus must be an integer, got {p!r}") from None
    if not (2**8 < p < 2**MAX_MODULUS_BITS) or not _is_prime(p):
        raise UsageError(f"modulus must be a prime between 2^8 and 2^61 (e.g. 2^61-1 = {2**61 - 1}), got {p}")
    return p


def element_dtype(p: int) -> torch.dtype:
    """The integer dtype field elements travel in: int32 below 2^31, else int64."""
    return torch.int32 if p < 2**31 else torch.int64


def weight_dtype(bits: int) -> torch.dtype:
    """The integer dtype of a ``bits``-bit signed fixed-point weight (int16 up to 16 bits, else int32)."""
    return torch.int16 if bits <= 16 else torch.int32


def headroom(p: int) -> int:
    """Largest magnitude a decoded integer may have: ``(p − 1) / 2``."""
    return (p - 1) // 2


def centred(v: torch.Tensor, p: int) -> torch.Tensor:
    """Centred representatives in ``(−p/2, p/2]`` of integers ``v`` mod p (int64)."""
    v = torch.remainder(v.to(torch.int64), p)
    return torch.where(v > p // 2, v - p, v)


def to_field(q: torch.Tensor, p: int) -> torch.Tensor:
    """Signed integers -> field elements in ``[0, p)`` (int64)."""
    return torch.remainder(q.to(torch.int64), p)


def quantize(x: torch.Tensor, exponent: int, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """``round(2^exponent · x)`` as float64 integers; stochastic rounding when ``uniforms`` (in [0,1)) is given."""
    scaled = x.detach().to(torch.float64) * math.ldexp(1.0, exponent)
    if uniforms is None:
        return torch.round(scaled)
    low = torch.floor(scaled)
    return low + (uniforms.reshape(scaled.shape) < (scaled - low)).to(torch.float64)


def decode(v: torch.Tensor, exponent: int, p: int) -> torch.Tensor:
    """Field elements -> reals: centred representative times ``2^-exponent`` (float64)."""
    return centred(v, p).to(torch.float64) * math.ldexp(1.0, -exponent)


def magnitude_bits(q: torch.Tensor) -> int:
    """Signed bits the integers ``q`` use: ``bitlen(max|q|) + 1`` (the sign)."""
    if q.numel() == 0:
        return 0
    return int(q.abs().max()).bit_length() + 1


# -- overflow-free scales ----------------------------------------------------------------

def _window_sq(fn: str, a: torch.Tensor, b_shape, params: dict) -> torch.Tensor:
    """Squared ℓ2 norms of every window of ``a`` that one output element of ``fn`` reads (a superset)."""
    a2 = a.to(torch.float64).square()
    if fn in ("matmul", "bmm"):
        return a2.sum(-1)
    if fn == "conv2d":
        kh, kw = b_shape[2], b_shape[3]
        ones = torch.ones(1, 1, kh, kw, dtype=torch.float64)
        return F.conv2d(a2.sum(1, keepdim=True), ones, stride=params.get("stride", 1),
                        padding=params.get("padding", 0), dilation=params.get("dilation", 1))
    if fn == "conv2d_input":
        # input position i reads dY positions (i + pad − t·dil)/stride for taps t: within a run of
        # floor((k−1)·dil/stride) + 1 consecutive positions, so full box sums of that size cover it.
        stride = _pair(params.get("stride", 1))
        dil = _pair(params.get("dilation", 1))
        k = (b_shape[2], b_shape[3])
        box = tuple((k[i] - 1) * dil[i] // stride[i] + 1 for i in range(2))
        ones = torch.ones(1, 1, *box, dtype=torch.float64)
        return F.conv2d(a2.sum(1, keepdim=True), ones, padding=(box[0] - 1, box[1] - 1))
    raise ValueError(f"no overflow bound for bilinear function {fn!r}")


def _column_sq(fn: str, b: torch.Tensor) -> torch.Tensor:
    """Squared ℓ2 norms of every column / filter of ``b`` that one output element reads."""
    b2 = b.to(torch.float64).square()
    return b2.sum(bilinear.op(fn).b_summed_axes)  # matmul: columns; conv2d: filters w[o]; conv2d_input: w[:, c]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def norm_bound(fn: str, a: torch.Tensor, b: torch.Tensor, params: dict) -> float:
    """A rigorous bound on ``max |fn(a, b)|`` (Cauchy–Schwarz over windows and columns)."""
    fn, a, b, params, _ = bilinear.as_base(fn, a, b, params)  # a view op (conv1d) as its base op
    wa = float(_window_sq(fn, a, tuple(b.shape), params).max()) if a.numel() else 0.0
    cb = float(_column_sq(fn, b).max()) if b.numel() else 0.0
    return math.sqrt(wa) * math.sqrt(cb) * (1 + 1e-9)  # float64 sums of squares: relative error far below 1e-9


def _log2(v: float) -> float:
    return math.log2(v) if v > 0 else 0.0


@dataclass
class Encoded:
    """One op's operands in fixed point: ``qa = round(2^la·a)``, ``qb = round(2^lb·b)`` (int64)."""

    qa: torch.Tensor
    qb: torch.Tensor
    la: int
    lb: int

    def __iter__(self):  # qa, qb, la, lb = encode_pair(...)
        return iter((self.qa, self.qb, self.la, self.lb))

    @property
    def a_bits(self) -> int:
        return magnitude_bits(self.qa)

    @property
    def b_bits(self) -> int:
        return magnitude_bits(self.qb)

    def decode(self, v: torch.Tensor, p: int) -> torch.Tensor:
        """The result ``fn(ã, b̃) mod p`` (field elements) back to reals: ``centred(v)·2^-(la+lb)``."""
        return decode(v, self.la + self.lb, p)


def encode_pair(fn: str, a: torch.Tensor, b: torch.Tensor, params: dict, p: int, *,
                uniforms: torch.Tensor | None = None, b_exponent: int | None = None,
                b_bits: int | None = None) -> Encoded:
    """Quantize ``a`` and ``b`` for ``fn`` so that ``fn(ã, b̃)`` cannot wrap mod p.

    ``uniforms`` (same numel as ``a``) switches ``a`` to stochastic rounding.  With
    ``b_exponent`` given, ``b`` is taken as already quantized with that exponent
    (Slalom's fixed weight scale) and only ``la`` is chosen.  ``b_bits`` caps ``|b̃|`` at
    ``2^(b_bits−1) − 1`` (the weight's width on the wire and in the engine's limbs).
    """
    limit = headroom(p)
    fixed_b = b_exponent is not None
    b_limit = 2 ** (b_bits - 1) - 1 if b_bits else None
    bound = norm_bound(fn, a, b, params)
    if not math.isfinite(bound):
        from ..errors import BlindtrainError

        raise BlindtrainError("a non-finite value (inf or nan) cannot be encoded into the field; "
                              "training diverged: lower --lr")
    if bound == 0.0:  # a or b is zero: so is the product
        la = 0
        lb = b_exponent if fixed_b else 0
        qb = b.to(torch.int64) if fixed_b else quantize(b, lb).to(torch.int64)
        return Encoded(quantize(a, la, uniforms).to(torch.int64) * 0, qb, la, lb)
    amax, bmax = float(a.abs().max()), float(b.abs().max())
    if fixed_b:
        lb = b_exponent
        la = math.floor(math.log2(limit / bound))
    else:
        total = math.floor(math.log2(limit / bound))
        la = math.floor((total + _log2(bmax) - _log2(amax)) / 2)
        lb = total - la
        if b_limit is not None and bmax > 0:
            cap = math.floor(math.log2(b_limit / bmax))  # 2^lb·max|b| ≤ b_limit before rounding
            if lb > cap:
                la, lb = la + lb - cap, cap
    qb = b.to(torch.float64) if fixed_b else quantize(b, lb)
    for _ in range(128):
        if not fixed_b and b_limit is not None and float(qb.abs().max()) > b_limit:
            lb -= 1  # rounding up at the cap
            qb = quantize(b, lb)
            continue
        qa = quantize(a, la, uniforms)
        if norm_bound(fn, qa, qb, params) <= limit:
            return Encoded(qa.to(torch.int64), qb.to(torch.int64), la, lb)
        # rounding pushed the bound over: take one bit from the operand with more bits to spare
        if fixed_b or la + _log2(amax) >= lb + _log2(bmax):
            la -= 1
        else:
            lb -= 1
            qb = quantize(b, lb)
    raise RuntimeError("could not find overflow-free fixed-point scales")  # pragma: no cover


def weight_exponent(w: torch.Tensor, bits: int) -> int:
    """Exponent giving ``max|round(2^l·w)| ≤ 2^(bits−1) − 1`` (Slalom's fixed weight scale)."""
    wmax = float(w.abs().max())
    if wmax == 0.0:
        return 0
    return math.floor(math.log2((2 ** (bits - 1) - 1) / wmax))


def error_bound(fn: str, a: torch.Tensor, b: torch.Tensor, ea, eb, params: dict) -> torch.Tensor:
    """Elementwise bound on ``|decoded fn(ã, b̃) − fn(a, b)|`` given per-element errors ``ea``, ``eb``.

    ``ea`` / ``eb``: floats, or tensors broadcastable to ``a`` / ``b`` (per-row / per-column scales):
    ``f(|a|, E_b) + f(E_a, |b|) + f(E_a, E_b)`` with ``E`` the error bounds spread to the operands' shapes."""
    a64, b64 = a.detach().to(torch.float64).abs(), b.detach().to(torch.float64).abs()
    err_a = torch.ones_like(a64) * torch.as_tensor(ea, dtype=torch.float64)
    err_b = torch.ones_like(b64) * torch.as_tensor(eb, dtype=torch.float64)
    return (bilinear.apply(fn, a64, err_b, **params) + bilinear.apply(fn, err_a, b64, **params)
            + bilinear.apply(fn, err_a, err_b, **params))


# -- per-row and per-column scales ------------------------------------------------------------

#: Bilinear functions :func:`encode_scaled` gives per-row / per-column exponents.
SCALED_FNS = ("matmul", "conv2d", "conv2d_input")


def _row_view(fn: str, a: torch.Tensor) -> tuple[int, ...]:
    """Shape of a per-row exponent, broadcastable to ``a`` and to ``fn``'s output.

    matmul ``(…, n)``: one per row ``(…, 1)``; conv2d / conv2d_input ``(N, C, H, W)``: one per sample."""
    if fn == "matmul":
        return (*a.shape[:-1], 1)
    return (a.shape[0], 1, 1, 1)


def _column_view(fn: str, b: torch.Tensor) -> tuple[int, ...]:
    """Shape of a per-output-column exponent of ``b`` (broadcastable to ``b``).

    matmul ``(n, m)``: ``(1, m)``; conv2d ``w (O, C, kh, kw)``: ``(O, 1, 1, 1)`` (output channels);
    conv2d_input ``w``: ``(1, C, 1, 1)`` (its output is ``dX``, whose channels are ``w``'s inputs)."""
    if fn == "matmul":
        return (1, b.shape[-1])
    if fn == "conv2d":
        return (b.shape[0], 1, 1, 1)
    return (1, b.shape[1], 1, 1)


def _column_to_output(fn: str, eb: torch.Tensor) -> torch.Tensor:
    return eb.reshape(1, -1, 1, 1) if fn == "conv2d" else eb


def _row_window_sq(fn: str, q: torch.Tensor, b_shape, params: dict) -> torch.Tensor:
    """Per row (sample), the largest squared ℓ2 norm of a window one output element reads."""
    w = _window_sq(fn, q, b_shape, params)
    if fn == "matmul":
        return w.unsqueeze(-1)
    return w.flatten(1).amax(1).reshape(-1, 1, 1, 1)


def _column_max(fn: str, b: torch.Tensor) -> torch.Tensor:
    """Per output column / channel of ``b``, its largest magnitude (in :func:`_column_view`'s shape)."""
    mag = b.detach().abs().to(torch.float64)
    if fn == "matmul":
        return mag.amax(-2, keepdim=True)
    if fn == "conv2d":
        return mag.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    return mag.transpose(0, 1).flatten(1).amax(1).reshape(1, -1, 1, 1)


def _floor_log2(t: torch.Tensor) -> torch.Tensor:
    """``floor(log2(t))`` elementwise (int64) for positive finite ``t``: exact via frexp."""
    mantissa, exponent = torch.frexp(t)  # t = mantissa·2^exponent, mantissa in [0.5, 1)
    return exponent.to(torch.int64) - 1


def quantize_scaled(x: torch.Tensor, exponents: torch.Tensor,
                    uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """``round(2^e · x)`` with a broadcast tensor of integer exponents ``e`` (float64 integers, exact)."""
    scaled = x.detach().to(torch.float64) * torch.pow(2.0, exponents.to(torch.float64))  # powers of two: exact
    if uniforms is None:
        return torch.round(scaled)
    low = torch.floor(scaled)
    return low + (uniforms.reshape(scaled.shape) < (scaled - low)).to(torch.float64)


@dataclass
class ScaledEncoded:
    """One op's operands with a scale per row of ``a`` and per output column of ``b``.

    ``qa = round(2^ea·a)`` with ``ea`` of :func:`_row_view`'s shape, ``qb = round(2^eb·b)`` with ``eb``
    of :func:`_column_view`'s shape (int64 tensors).  Row scales commute with the product from the
    left and column scales from the right, so ``fn(ã, b̃)[i, j] = 2^(ea_i + eb_j)·fn(a, b)[i, j]`` up
    to rounding, and :meth:`decode` undoes them exactly (powers of two)."""

    fn: str
    qa: torch.Tensor
    qb: torch.Tensor
    row_exponents: torch.Tensor
    column_exponents: torch.Tensor

    @property
    def la(self) -> int:
        """The coarsest row exponent (for reporting)."""
        return int(self.row_exponents.min())

    @property
    def lb(self) -> int:
        """The coarsest column exponent (for reporting)."""
        return int(self.column_exponents.min())

    @property
    def a_bits(self) -> int:
        return magnitude_bits(self.qa)

    @property
    def b_bits(self) -> int:
        return magnitude_bits(self.qb)

    def output_exponents(self) -> torch.Tensor:
        """Exponent of every output element, broadcastable to ``fn``'s output: ``ea_i + eb_j``."""
        return self.row_exponents + _column_to_output(self.fn, self.column_exponents)

    def decode(self, v: torch.Tensor, p: int) -> torch.Tensor:
        """Field elements -> reals: ``centred(v)·2^-(ea_i + eb_j)`` (float64)."""
        return centred(v, p).to(torch.float64) * torch.pow(2.0, -self.output_exponents().to(torch.float64))


def encode_scaled(fn: str, a: torch.Tensor, b: torch.Tensor, params: dict, p: int, *, b_bits: int,
                  uniforms: torch.Tensor | None = None, column_scales: bool = False) -> ScaledEncoded:
    """Quantize ``a`` per row (sample) and ``b`` per output column (channel) so ``fn(ã, b̃)`` cannot wrap.

    Each column of ``b`` gets the full ``b_bits`` signed bits relative to its own largest element
    (``|b̃| ≤ 2^(b_bits−1) − 1``); then each row ``i`` of ``a`` the largest exponent with
    ``max‖window_i(ã)‖₂ · max_j ‖column_j(b̃)‖₂ ≤ (p−1)/2`` — the same rigorous Cauchy–Schwarz bound as
    :func:`encode_pair`, per row, checked on the integers actually produced.  A row (sample) with
    small values thus gets as many bits as the largest one instead of the tensor's maximum's
    leftovers.  ``column_scales=False`` (the default) gives every column the same exponent (the
    tensor's: the weights a worker sees keep one power-of-two scale, as the model-theft attack in
    :mod:`blindtrain.attacks` assumes); ``True`` one per column.  ``uniforms`` switches ``a`` to
    stochastic rounding.  Other functions (and empty
    operands) fall back to :func:`encode_pair`'s per-tensor exponents; both results have ``decode``.
    """
    if fn not in SCALED_FNS or a.numel() == 0 or b.numel() == 0:
        return encode_pair(fn, a, b, params, p, uniforms=uniforms, b_bits=b_bits)
    limit = headroom(p)
    b_limit = 2 ** (b_bits - 1) - 1
    # columns of b: b_bits each, relative to the column's own maximum
    bmax = _column_max(fn, b)
    window = _row_window_sq(fn, a, tuple(b.shape), params).sqrt() * (1 + 1e-9)
    if not (math.isfinite(float(bmax.max())) and math.isfinite(float(window.max()))):  # nan propagates too
        from ..errors import BlindtrainError

        raise BlindtrainError("a non-finite value (inf or nan) cannot be encoded into the field; "
                              "training diverged: lower --lr")
    eb = torch.where(bmax > 0, _floor_log2(b_limit / bmax.clamp_min(1e-300)), torch.zeros_like(bmax, dtype=torch.int64))
    if not column_scales:
        eb = torch.full_like(eb, int(eb[bmax > 0].min()) if bool((bmax > 0).any()) else 0)
    for _ in range(4):
        qb = quantize_scaled(b, eb)
        over = _column_max(fn, qb) > b_limit  # rounded up at the cap: one bit less for that column
        if not bool(over.any()):
            break
        eb = eb - (over.to(torch.int64) if column_scales else int(over.any()))
    else:  # pragma: no cover
        raise RuntimeError("could not fit the weight columns into b_bits")
    column_norm = math.sqrt(float(_column_sq(fn, qb).max())) * (1 + 1e-9) if qb.numel() else 0.0
    # rows of a: the largest exponent that keeps every output of that row within the headroom
    if column_norm == 0.0:
        ea = torch.zeros(window.shape, dtype=torch.int64)
    else:
        budget = limit / column_norm
        ea = torch.where(window > 0, _floor_log2(budget / window.clamp_min(1e-300)),
                         torch.zeros(window.shape, dtype=torch.int64))
    for _ in range(128):
        qa = quantize_scaled(a, ea, uniforms)
        bound = _row_window_sq(fn, qa, tuple(b.shape), params).sqrt() * (1 + 1e-9) * column_norm
        over = bound > limit  # rounding pushed a row over: one bit less for it
        if not bool(over.any()):
            return ScaledEncoded(fn, qa.to(torch.int64), qb.to(torch.int64), ea, eb)
        ea = ea - over.to(torch.int64)
    raise RuntimeError("could not find overflow-free fixed-point scales")  # pragma: no cover
