"""The bilinear functions every offloaded op is one of: ``f(A, B)``, linear in each operand — one table.

Shapes (b: batch rows, n: input features / channels, m: output features / channels):

=================  =====================================  ===============================
name               f(A, B)                                used for
=================  =====================================  ===============================
``matmul``         ``A @ B``  (…×n, n×m) -> …×m             Linear forward ``X·Wᵀ``, grad-input ``dY·W``
``matmul_tn``      ``Aᵀ @ B`` (b×n, b×m) -> n×m            Linear weight gradient ``Xᵀ·dY``
``bmm``            ``A @ B`` batched (…×p×q, …×q×r)        attention ``Q·Kᵀ``, ``A·V``
``conv2d``         ``conv2d(A=x, B=w)``                    Conv2d forward
``conv2d_input``   ``∂/∂x`` with A = dY, B = w             Conv2d input gradient
``conv2d_weight``  ``∂/∂w`` with A = x, B = dY             Conv2d weight gradient
``conv1d``…        the three Conv1d ops, as *views* of the conv2d ones (height 1)
=================  =====================================  ===============================

Every op is one :class:`BilinearOp` entry of :data:`OPS` holding what the protocols, the field engine,
the Freivalds check, the overflow bounds and the cost model need: ``apply`` (any dtype: float32 for
the float protocols, float64 holding integers for the field ones), the contraction length (products
summed per output element), the output-channel axes the weight indexes (what a check vector
contracts), which axes of B are summed, and the multiply-accumulate count.  An op that is a *view*
of another (``conv1d`` of ``conv2d``) names its ``base`` and the reshapes to and from it; the field
engine lowers it through its base, so such an op is one entry here and nothing anywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

Shape = tuple[int, ...]

CONV_KEYS = ("stride", "padding", "dilation", "groups")


def _conv_kwargs(params: dict) -> dict:
    return {k: params[k] for k in CONV_KEYS if k in params}


@dataclass(frozen=True)
class BilinearOp:
    """One bilinear op ``out = f(A, B)`` and its shape rules.

    Attributes:
        name: the op's name on the wire and in the ledger.
        apply: ``(a, b, **params) -> out``, exact for integers held in float64 below 2^53.
        contraction: ``(a_shape, b_shape, params) -> K``, how many products one output element sums
            (for convolutions: the full window, padding zeros included: an upper bound).
        macs: ``(a_shape, b_shape, out_shape) -> int``, multiply-accumulates of the op (FLOPs = 2·macs).
        b_channel_axis: the axis of B indexing the output channels the result's ``out_channel_axis``
            holds (``B·s`` contracts it in Freivalds' check); ``None`` when B is not a weight-like
            operand with output channels (the both-private ops).
        out_channel_axis: the axis of the result those channels land on.
        b_summed_axes: the axes of B summed into one output element (overflow bounds: a column of B).
        out_size_param: ``params`` key stating the result's shape, for ops whose output size the operands
            do not fix (``input_size`` of a transposed convolution, ``weight_size`` of a weight gradient);
            for a checkable op its entry ``[1]`` is resized when B's channels are contracted to ``k``.
        base: for a view op, the op it is evaluated as; ``to_base(a, b, params) -> (a, b, params)`` and
            ``from_base(out) -> out`` convert operands and result.
    """

    name: str
    apply: Callable[..., torch.Tensor]
    contraction: Callable[[Shape, Shape, dict], int]
    macs: Callable[[Shape, Shape, Shape], int]
    b_channel_axis: int | None = None
    out_channel_axis: int | None = None
    b_summed_axes: tuple[int, ...] = ()
    out_size_param: str | None = None
    base: str | None = None
    to_base: Callable | None = None
    from_base: Callable | None = None

    @property
    def checkable(self) -> bool:
        """Whether ``f(A, B)·s = f(A, B·s)`` over B's output channels (Freivalds' form exists)."""
        return self.b_channel_axis is not None

    def channels(self, b_shape) -> int:
        """Size of the output-channel dimension (what a check vector ``s`` contracts)."""
        if self.b_channel_axis is None:
            raise ValueError(f"no Freivalds form for {self.name!r}")
        return int(b_shape[self.b_channel_axis])

    def with_channels(self, params: dict, k: int) -> dict:
        """``params`` for the op on a B whose output channels were contracted to ``k`` (checkable ops)."""
        if self.out_size_param is None:
            return dict(params)
        size = list(params[self.out_size_param])
        size[1] = k
        return {**params, self.out_size_param: tuple(size)}


# -- conv1d as a conv2d of height 1 -------------------------------------------------------------------

def _pair1d(v):
    v = v[0] if isinstance(v, (tuple, list)) else v
    return (1, int(v)) if not isinstance(v, str) else v


def _params_2d(params: dict) -> dict:
    out = {}
    for key, value in params.items():
        if key in ("stride", "dilation"):
            out[key] = _pair1d(value)
        elif key == "padding":
            out[key] = (0, _pair1d(value)[1]) if not isinstance(value, str) else value
        elif key in ("input_size", "weight_size"):
            out[key] = (*tuple(value)[:2], 1, *tuple(value)[2:])
        else:
            out[key] = value
    return out


def _conv1d_to_2d(a, b, params):
    return a.unsqueeze(2), b.unsqueeze(2), _params_2d(params)


def _drop_height(out):
    return out.squeeze(2)


def _conv1d_view(name: str, base: str, macs, out_size_param=None, b_channel_axis=None, out_channel_axis=None,
                 b_summed_axes=()) -> BilinearOp:
    def apply(a, b, **params):
        a2, b2, p2 = _conv1d_to_2d(a, b, params)
        return _drop_height(OPS[base].apply(a2, b2, **p2))

    def contraction(a_shape, b_shape, params):
        a2 = (*a_shape[:2], 1, *a_shape[2:])
        b2 = (*b_shape[:2], 1, *b_shape[2:])
        return OPS[base].contraction(a2, b2, _params_2d(params))

    return BilinearOp(name, apply, contraction, macs, b_channel_axis, out_channel_axis, b_summed_axes,
                      out_size_param, base=base, to_base=_conv1d_to_2d, from_base=_drop_height)


OPS: dict[str, BilinearOp] = {}


def _add(op: BilinearOp) -> None:
    OPS[op.name] = op


_add(BilinearOp(
    "matmul", lambda a, b, **p: torch.matmul(a, b),
    contraction=lambda a, b, p: int(a[-1]),
    macs=lambda a, b, out: math.prod(out) * int(a[-1]),
    b_channel_axis=-1, out_channel_axis=-1, b_summed_axes=(-2,)))
_add(BilinearOp(
    "matmul_tn", lambda a, b, **p: a.transpose(-2, -1) @ b,
    contraction=lambda a, b, p: int(a[-2]),
    macs=lambda a, b, out: math.prod(out) * int(a[-2]),
    b_summed_axes=(-2,)))
_add(BilinearOp(
    "bmm", lambda a, b, **p: torch.matmul(a, b),
    contraction=lambda a, b, p: int(a[-1]),
    macs=lambda a, b, out: math.prod(out) * int(a[-1]),
    b_summed_axes=(-2,)))
_add(BilinearOp(  # A = x (N, C, H, W), B = w (O, C, kh, kw)
    "conv2d", lambda a, b, **p: F.conv2d(a, b, **_conv_kwargs(p)),
    contraction=lambda a, b, p: int(math.prod(b[1:])),
    macs=lambda a, b, out: math.prod(out) * math.prod(b[1:]),
    b_channel_axis=0, out_channel_axis=1, b_summed_axes=(1, 2, 3)))
_add(BilinearOp(  # A = dY (N, O, Ho, Wo), B = w (O, C, kh, kw) -> dX (N, C, H, W)
    "conv2d_input", lambda a, b, **p: conv2d_input(tuple(p["input_size"]), b, a, **_conv_kwargs(p)),
    contraction=lambda a, b, p: int(b[0] * b[2] * b[3]),
    macs=lambda a, b, out: math.prod(a) * math.prod(b[1:]),
    b_channel_axis=1, out_channel_axis=1, b_summed_axes=(0, 2, 3), out_size_param="input_size"))
_add(BilinearOp(  # A = x (N, C, H, W), B = dY (N, O, Ho, Wo) -> dW (O, C, kh, kw)
    "conv2d_weight", lambda a, b, **p: conv2d_weight(a, tuple(p["weight_size"]), b, **_conv_kwargs(p)),
    contraction=lambda a, b, p: int(b[0] * b[2] * b[3]),
    macs=lambda a, b, out: math.prod(b) * math.prod(out[1:]),
    b_summed_axes=(0, 2, 3), out_size_param="weight_size"))
# Conv1d: x (N, C, L), w (O, C, k), dY (N, O, Lo) — one entry each, evaluated as conv2d of height 1.
_add(_conv1d_view("conv1d", "conv2d", macs=lambda a, b, out: math.prod(out) * math.prod(b[1:]),
                  b_channel_axis=0, out_channel_axis=1, b_summed_axes=(1, 2)))
_add(_conv1d_view("conv1d_input", "conv2d_input", macs=lambda a, b, out: math.prod(a) * math.prod(b[1:]),
                  out_size_param="input_size", b_channel_axis=1, out_channel_axis=1, b_summed_axes=(0, 2)))
_add(_conv1d_view("conv1d_weight", "conv2d_weight", macs=lambda a, b, out: math.prod(b) * math.prod(out[1:]),
                  out_size_param="weight_size", b_summed_axes=(0, 2)))



@dataclass(frozen=True)
class LayerOps:
    """The three ops of a weighted layer kind, as the layer glue hands them to a protocol.

    ``forward = f(X, B)``, ``grad_input = g(dY, W)``, ``grad_weight = h(X, dY)`` with ``B = Wᵀ`` and the
    weight gradient returned transposed when ``transposed_weight`` (Linear stores W as m×n)."""

    forward: str
    grad_input: str
    grad_weight: str
    transposed_weight: bool = False


#: layer kind (``LayerSite.kind``) -> its ops
LAYER_OPS: dict[str, LayerOps] = {
    "linear": LayerOps("matmul", "matmul", "matmul_tn", transposed_weight=True),
    "conv2d": LayerOps("conv2d", "conv2d_input", "conv2d_weight"),
    "conv1d": LayerOps("conv1d", "conv1d_input", "conv1d_weight"),
}


def layer_params(fn: str, layer_params: dict, out_shape=None) -> dict:
    """``fn``'s params for a layer: the layer's own (stride, padding ...) plus the result's shape where
    the op needs it stated (:attr:`BilinearOp.out_size_param`)."""
    params = dict(layer_params)
    key = op(fn).out_size_param
    if key is not None:
        params[key] = tuple(out_shape)
    return params


#: name -> apply, kept for callers that only evaluate
BILINEAR: dict[str, Callable[..., torch.Tensor]] = {name: op.apply for name, op in OPS.items()}


def op(fn: str) -> BilinearOp:
    """The table entry of ``fn`` (``ValueError`` naming the known ops if there is none)."""
    try:
        return OPS[fn]
    except KeyError:
        raise ValueError(f"unknown bilinear function {fn!r}; known: {sorted(OPS)}") from None


def apply(fn: str, a: torch.Tensor, b: torch.Tensor, **params) -> torch.Tensor:
    """Evaluate bilinear function ``fn`` on ``(a, b)`` with its static ``params``."""
    return op(fn).apply(a, b, **params)


def contraction_length(fn: str, a_shape, b_shape, params: dict | None = None) -> int:
    """How many products each output element of ``fn(A, B)`` sums (an upper bound for convolutions)."""
    return op(fn).contraction(tuple(a_shape), tuple(b_shape), params or {})


def macs(fn: str, a_shape, b_shape, out_shape) -> int:
    """Multiply-accumulates of ``fn(A, B)`` with these shapes."""
    return int(op(fn).macs(tuple(a_shape), tuple(b_shape), tuple(out_shape)))


def as_base(fn: str, a, b, params: dict):
    """``(base_fn, a, b, params, finish)``: ``fn(a, b) = finish(base_fn(a', b'))``, identity for a base op.

    ``a`` and ``b`` may be tensors (reshaped) or shapes."""
    entry = op(fn)
    if entry.base is None:
        return fn, a, b, params, (lambda out: out)
    if isinstance(a, torch.Tensor):
        a2, b2, p2 = entry.to_base(a, b, params)
    else:
        a2, b2, p2 = entry.to_base(torch.empty(tuple(a), device="meta"), torch.empty(tuple(b), device="meta"),
                                   params)
        a2, b2 = tuple(a2.shape), tuple(b2.shape)
    base_fn, a3, b3, p3, inner = as_base(entry.base, a2, b2, p2)
    return base_fn, a3, b3, p3, (lambda out: entry.from_base(inner(out)))
