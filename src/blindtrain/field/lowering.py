"""Every bilinear op of :mod:`blindtrain.bilinear` as a batch of plain matrix products.

``f(A, B) = finish(left(·) @ right(·))`` with ``left: (G, M, K)`` and ``right: (G, K, N)``;
any integer or floating dtype works (the int8 back-end needs that: PyTorch has no int8
convolution on CPU).  Each operand arrives as a *limb stack* ``(n, *shape)`` (n digit planes,
:mod:`.limbs`); the left side puts its limbs along the rows (``(G, n·M, K)``, limb-major), the
right side along the columns (``(G, K, N·n)``, limb-minor), so one product computes all
``n_left × n_right`` limb products.  ``K`` is the exact number of products summed per output
element (padding zeros included), which is what the accumulation bounds use.

* ``matmul``       ``A (…, K) @ B (K, N)``: rows are A's leading elements;
* ``bmm``          broadcast batch ``G``; ``matmul_tn`` is ``bmm`` of ``Aᵀ``;
* ``conv2d``       im2col of ``x`` (``as_strided`` on the padded, channels-last input: stride, padding,
                   dilation) against ``w`` as a ``(kh·kw·C, O)`` matrix;
* ``conv2d_input`` the transposed convolution as a stride-1 convolution: ``dY`` with ``stride − 1``
                   zeros inserted, padded by ``dil·(k−1) − pad`` (plus the output padding; negative =
                   crop), against ``w`` flipped and with its channel axes swapped;
* ``conv2d_weight`` ``dW (O, kh·kw·C) = dY (O, N·L) @ im2col(x) (N·L, kh·kw·C)``: here the *left* side
                   is operand B (``left_is_a = False``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import bilinear


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@dataclass
class Lowered:
    """``f(A, B)`` as ``finish(left(stack) @ right(stack))``; see the module docstring."""

    groups: int
    rows: int
    depth: int
    cols: int
    left_is_a: bool
    right_padding_free: bool  # the right operand's entries map 1:1 onto its matrix (offsets allowed)
    left: Callable[[torch.Tensor], torch.Tensor]
    right: Callable[[torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor], torch.Tensor]


def im2col(x: torch.Tensor, kernel, stride, padding, dilation, out_hw=None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, Ho·Wo, kh·kw·C)``: every receptive field as a row, columns ordered
    ``(kh, kw, C)`` (channels innermost: the copy moves contiguous runs of C; any dtype)."""
    kh, kw = kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    x = x.permute(0, 2, 3, 1)  # channels last
    if ph or pw:
        x = F.pad(x, (0, 0, pw, pw, ph, ph))
    x = x.contiguous()
    b, hp, wp, c = x.shape
    if out_hw is None:
        out_hw = ((hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1)
    ho, wo = out_hw
    s = x.stride()
    view = x.as_strided((b, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]))
    return view.reshape(b, ho * wo, kh * kw * c)


def _kernel_matrix(s: torch.Tensor) -> torch.Tensor:
    """A limb stack of kernels ``(n, O, C, kh, kw)`` -> ``(kh·kw·C, O·n)`` (rows in im2col's column order)."""
    n, o = s.shape[0], s.shape[1]
    return s.permute(3, 4, 2, 1, 0).reshape(-1, o * n)


def _left_rows(stack: torch.Tensor, rows: int, depth: int) -> torch.Tensor:
    return stack.reshape(1, stack.shape[0] * rows, depth)


def _matmul(a_shape, b_shape) -> Lowered:
    k, n = b_shape
    m = math.prod(a_shape[:-1])
    return Lowered(1, m, k, n, True, True,
                   left=lambda s: _left_rows(s, m, k),
                   right=lambda s: s.permute(1, 2, 0).reshape(1, k, n * s.shape[0]),
                   finish=lambda out: out.reshape(*a_shape[:-1], n))


def _bmm(a_shape, b_shape, *, transpose_a: bool = False) -> Lowered:
    if transpose_a:
        a_shape = (*a_shape[:-2], a_shape[-1], a_shape[-2])
    batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    g, (p, q), r = math.prod(batch), a_shape[-2:], b_shape[-1]

    def left(s):
        if transpose_a:
            s = s.transpose(-2, -1)
        s = s.expand(s.shape[0], *batch, p, q).reshape(s.shape[0], g, p, q)
        return s.permute(1, 0, 2, 3).reshape(g, s.shape[0] * p, q)

    def right(s):
        s = s.expand(s.shape[0], *batch, q, r).reshape(s.shape[0], g, q, r)
        return s.permute(1, 2, 3, 0).reshape(g, q, r * s.shape[0])

    return Lowered(g, p, q, r, True, True, left, right, finish=lambda out: out.reshape(*batch, p, r))


def _conv2d(a_shape, b_shape, params) -> Lowered:
    n, c, h, w = a_shape
    o, _, kh, kw = b_shape
    stride, padding, dilation = (_pair(params.get(k, d)) for k, d in (("stride", 1), ("padding", 0),
                                                                        ("dilation", 1)))
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    depth, rows = c * kh * kw, n * ho * wo

    def left(s):
        cols = im2col(s.reshape(s.shape[0] * n, c, h, w), (kh, kw), stride, padding, dilation, (ho, wo))
        return cols.reshape(1, s.shape[0] * rows, depth)

    def right(s):
        return _kernel_matrix(s).unsqueeze(0)

    def finish(out):
        return out.reshape(n, ho, wo, o).permute(0, 3, 1, 2).contiguous()

    return Lowered(1, rows, depth, o, True, True, left, right, finish)


def _dilate(t: torch.Tensor, stride) -> torch.Tensor:
    sh, sw = stride
    if sh == 1 and sw == 1:
        return t
    b, c, h, w = t.shape
    out = t.new_zeros((b, c, (h - 1) * sh + 1, (w - 1) * sw + 1))
    out[:, :, ::sh, ::sw] = t
    return out


def _conv2d_input(a_shape, b_shape, params) -> Lowered:
    n, o, ho, wo = a_shape
    _, c, kh, kw = b_shape
    _, _, h, w = params["input_size"]
    stride, padding, dilation = (_pair(params.get(k, d)) for k, d in (("stride", 1), ("padding", 0),
                                                                        ("dilation", 1)))
    pads = []
    for size, out_size, k, s, p, d in ((w, wo, kw, stride[1], padding[1], dilation[1]),
                                       (h, ho, kh, stride[0], padding[0], dilation[0])):
        before = d * (k - 1) - p
        extra = size - ((out_size - 1) * s - 2 * p + d * (k - 1) + 1)  # the output padding
        pads += [before, before + extra]
    depth, rows = o * kh * kw, n * h * w

    def left(s):
        z = F.pad(_dilate(s.reshape(s.shape[0] * n, o, ho, wo), stride), pads)
        cols = im2col(z, (kh, kw), (1, 1), (0, 0), dilation, (h, w))
        return cols.reshape(1, s.shape[0] * rows, depth)

    def right(s):
        return _kernel_matrix(s.flip(3, 4).transpose(1, 2)).unsqueeze(0)  # kernels (n, C, O, kh, kw)

    def finish(out):
        return out.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()

    return Lowered(1, rows, depth, c, True, True, left, right, finish)


def _conv2d_weight(a_shape, b_shape, params) -> Lowered:
    n, c, h, w = a_shape
    _, o, ho, wo = b_shape
    _, _, kh, kw = params["weight_size"]
    stride, padding, dilation = (_pair(params.get(k, d)) for k, d in (("stride", 1), ("padding", 0),
                                                                        ("dilation", 1)))
    depth, cols = n * ho * wo, c * kh * kw

    def left(s):  # operand B = dY: (nl, N, O, Ho, Wo) -> (1, nl·O, N·Ho·Wo)
        return s.permute(0, 2, 1, 3, 4).reshape(1, s.shape[0] * o, depth)

    def right(s):  # operand A = x: im2col -> (1, N·L, C·kh·kw·nr)
        im = im2col(s.reshape(s.shape[0] * n, c, h, w), (kh, kw), stride, padding, dilation, (ho, wo))
        return im.reshape(s.shape[0], depth, cols).permute(1, 2, 0).reshape(1, depth, cols * s.shape[0])

    return Lowered(1, o, depth, cols, False, False, left, right,  # columns (kh, kw, C)
                   finish=lambda out: out.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous())


_LOWERINGS: dict[str, Callable[..., Lowered]] = {
    "matmul": lambda a, b, p: _matmul(a, b) if len(b) == 2 else _bmm(a, b),
    "bmm": lambda a, b, p: _bmm(a, b),
    "matmul_tn": lambda a, b, p: _bmm(a, b, transpose_a=True),
    "conv2d": _conv2d,
    "conv2d_input": _conv2d_input,
    "conv2d_weight": _conv2d_weight,
}


def lower(fn: str, a_shape, b_shape, params: dict | None = None) -> Lowered:
    """The matrix-product form of ``fn(A, B)`` for operands of these shapes (a view op of
    :data:`blindtrain.bilinear.OPS` through its base op's form)."""
    params = params or {}
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if fn.startswith("conv") and int(params.get("groups", 1)) != 1:
        raise ValueError("the field engine supports convolutions with groups=1 only")
    base_fn, base_a, base_b, base_params, finish = bilinear.as_base(fn, a_shape, b_shape, params)
    try:
        lowering = _LOWERINGS[base_fn]
    except KeyError:
        raise ValueError(f"no matrix-product form for bilinear function {fn!r}") from None
    low = lowering(base_a, base_b, base_params)
    if base_fn == fn:
        return low
    left_shape, right_shape = (base_a, base_b) if low.left_is_a else (base_b, base_a)
    left, right, base_finish = low.left, low.right, low.finish
    return dataclasses.replace(
        low, left=lambda s: left(s.reshape(s.shape[0], *left_shape)),
        right=lambda s: right(s.reshape(s.shape[0], *right_shape)),
        finish=lambda out: finish(base_finish(out)))
