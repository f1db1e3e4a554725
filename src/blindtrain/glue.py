"""Layer glue: an unmodified ``nn.Module`` gets its bilinear layers offloaded.

:func:`install` replaces, in place, every ``nn.Linear``, ``nn.Conv2d`` (groups=1)
and :class:`blindtrain.nn.MatMul` with an offloaded twin that keeps the *same*
parameter objects (so an optimizer built on the original model still works and
``state_dict`` keys do not change).  Its ``torch.autograd.Function`` asks the
protocol for the forward op and both gradients; the bias and everything else run
in the enclave in plaintext.  Nothing here knows which protocol it calls.

Before an op is offloaded its plaintext operands are checked to be finite: NaN or Inf there arose
on the trusted side (divergence), and is reported as such (:class:`~blindtrain.errors.TrainingDiverged`,
exit 1) instead of reaching a protocol whose checks would call it an integrity violation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from . import threads
from .errors import TrainingDiverged, UsageError
from .functional import install_functional, suspended
from .nn import MatMul


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: one reduction (a NaN or Inf element makes the sum non-finite; a finite
    sum proves them all finite), the elementwise test only when the sum overflowed or is non-finite."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def require_finite(layer, op: str, **operands) -> None:
    """Raise :class:`TrainingDiverged` if a plaintext operand about to be offloaded is NaN or Inf."""
    for name, tensor in operands.items():
        if tensor is not None and not all_finite(tensor.detach()):
            raise TrainingDiverged(step=layer.protocol.runtime.step,
                                   detail=f"the {name} of layer {layer.site.name!r} ({op}) is non-finite (NaN or Inf)")


@dataclass
class LayerSite:
    """One offloaded layer, as protocols see it.

    Attributes:
        name: the module's qualified name in the model (``features.0``, ``fc1``).
        kind: ``linear``, ``conv2d`` or ``matmul``.
        weight_shape: the weight's shape (``m×n`` Linear, ``m×n×kh×kw`` Conv2d), ``None`` for matmul.
        conv_params: ``stride``, ``padding``, ``dilation`` for conv2d.
        state: per-layer scratch space owned by the protocol (keys, check vectors, ...).
    """

    name: str
    kind: str
    weight_shape: tuple | None = None
    conv_params: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    module: nn.Module | None = field(default=None, repr=False)

    def __deepcopy__(self, memo) -> "LayerSite":
        """A copied layer's site: the same layer description with empty protocol scratch space (``state``
        belongs to the original layer's weights and keys)."""
        from copy import deepcopy

        return LayerSite(self.name, self.kind, self.weight_shape, dict(self.conv_params), {},
                         deepcopy(self.module, memo))


def bilinear_gradients(site, protocol, x, grad_y, weight, *, needs, has_bias: bool, input_shape):
    """``(grad_x, grad_weight, grad_bias)`` of a weighted layer, the products from ``protocol``.

    ``x`` and ``grad_y`` come as the protocol takes them (2-D b×n and b×m for Linear, 4-D for
    Conv2d); ``grad_x`` is reshaped to ``input_shape``; ``needs`` is autograd's ``needs_input_grad``.
    """
    grad_x, grad_w = protocol.weighted_grads(site, x, grad_y, weight, needs=(needs[0], needs[1]),
                                             input_shape=x.shape)
    if grad_x is not None:
        grad_x = grad_x.reshape(input_shape)
    grad_b = None
    if has_bias and needs[2]:
        grad_b = grad_y.sum(0) if site.kind == "linear" else grad_y.sum((0, 2, 3))
    return grad_x, grad_w, grad_b


@contextmanager
def _call_state(site, call):
    """``site.state["call"]``: what the protocol's forward of this autograd node left there (its keys, the
    worker's handle of its operand ...), for the node's backward; a layer called several times per forward,
    or several forwards before one backward, each get their own."""
    site.state["call"] = call
    try:
        yield
    finally:
        site.state.pop("call", None)


class _WeightedFn(torch.autograd.Function):
    """``y = protocol.forward(x, W) + b`` with both gradients from the protocol."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        with suspended():
            return _WeightedFn._forward(ctx, x, weight, bias, layer)

    @staticmethod
    def _forward(ctx, x, weight, bias, layer):
        site, protocol = layer.site, layer.protocol
        require_finite(layer, "forward", input=x, weight=weight)
        with threads.for_pass(x.numel()):  # the enclave's thread policy (blindtrain.threads)
            if site.kind == "linear":
                lead = x.shape[:-1]
                y = protocol.forward(site, x.reshape(-1, x.shape[-1]), weight)
                y = y.reshape(*lead, y.shape[-1])
            else:
                y = protocol.forward(site, x, weight)
        if bias is not None:
            y = y + (bias if site.kind == "linear" else bias.view(1, -1, 1, 1))
        ctx.layer = layer
        ctx.call = site.state.pop("call", None)  # a protocol's per-call state: back in site.state for the backward
        ctx.input_shape = x.shape
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        site, protocol = ctx.layer.site, ctx.layer.protocol
        require_finite(ctx.layer, "backward", output_gradient=grad_y)
        grad_y = grad_y.contiguous()
        if site.kind == "linear":
            x2, g2 = x.reshape(-1, x.shape[-1]), grad_y.reshape(-1, grad_y.shape[-1])
        else:
            x2, g2 = x, grad_y
        with threads.for_pass(x2.numel() + g2.numel()), _call_state(site, ctx.call):
            return (*bilinear_gradients(site, protocol, x2, g2, weight, needs=ctx.needs_input_grad[:3],
                                        has_bias=ctx.has_bias, input_shape=ctx.input_shape), None)


class _MatMulFn(torch.autograd.Function):
    """``y = a @ b`` (both data) with both gradients from the protocol."""

    @staticmethod
    def forward(ctx, a, b, layer):
        require_finite(layer, "forward", left_operand=a, right_operand=b)
        ctx.layer = layer
        ctx.save_for_backward(a, b)
        with suspended(), threads.for_pass(a.numel() + b.numel()):
            return layer.protocol.matmul(layer.site, a, b)

    @staticmethod
    def backward(ctx, grad_y):
        a, b = ctx.saved_tensors
        require_finite(ctx.layer, "backward", output_gradient=grad_y)
        with threads.for_pass(a.numel() + b.numel() + grad_y.numel()):
            grad_a, grad_b = ctx.layer.protocol.matmul_grads(ctx.layer.site, a, b, grad_y.contiguous(),
                                                             (ctx.needs_input_grad[0], ctx.needs_input_grad[1]))
        return grad_a, grad_b, None


def _eager(forward):
    """Offloaded layers run eagerly under ``torch.compile``: the compiler graph-breaks around them instead of
    tracing protocol code (the enclave CSPRNG, worker calls, checks), which must run as written."""
    return torch.compiler.disable(forward, recursive=True)


class _OffloadedWeighted(nn.Module):
    """What offloaded Linear and Conv2d share: the original's parameter objects (so optimizers built before
    ``prepare`` and ``state_dict`` keys are unchanged), or its ``parametrizations`` when the weight is computed
    (``torch.nn.utils.parametrizations.weight_norm`` ...: recomputed at every forward, its gradient flows
    to the original parameters; only under protocols with ``weights_per_call``)."""

    def __init__(self, original: nn.Module, site: LayerSite, protocol) -> None:
        super().__init__()
        from torch.nn.utils import parametrize

        if parametrize.is_parametrized(original, "weight"):
            self.parametrizations = original.parametrizations
        else:
            self.weight = original.weight
        self.bias = original.bias
        self.site, self.protocol = site, protocol

    def current_weight(self) -> torch.Tensor:
        """The weight this forward multiplies by."""
        if "parametrizations" in self._modules:
            return self._modules["parametrizations"].weight()
        return self.weight

    def __getattr__(self, name: str):
        if name == "weight" and "parametrizations" in self._modules:
            return self._modules["parametrizations"].weight()
        return super().__getattr__(name)


class OffloadedLinear(_OffloadedWeighted):
    """``nn.Linear`` whose products are computed by a protocol."""

    def __init__(self, original: nn.Linear, site: LayerSite, protocol) -> None:
        super().__init__(original, site, protocol)
        self.in_features, self.out_features = original.in_features, original.out_features

    @_eager
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightedFn.apply(x, self.current_weight(), self.bias, self)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, protocol={self.protocol.info.name}"


@dataclass(frozen=True)
class ConvPadding:
    """How an ``nn.Conv2d``'s padding is offloaded: ``numeric`` (symmetric zero padding, per spatial dim)
    goes to the protocol's conv as its ``padding``; ``explicit`` (``F.pad`` amounts, last dim first, as
    ``nn.Conv2d._reversed_padding_repeated_twice``), in ``mode``, is applied in the enclave first (an
    elementwise copy), the offloaded conv then pads nothing.  Same result as the module's own forward:
    ``padding='same'`` / ``'valid'``, asymmetric 'same' padding of even kernels, and the ``reflect``,
    ``replicate`` and ``circular`` padding modes."""

    numeric: tuple[int, int]
    explicit: tuple[int, ...] | None = None
    mode: str = "constant"

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvPadding":
        if conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
            return cls(tuple(conv.padding))
        left_w, right_w, top_h, bottom_h = conv._reversed_padding_repeated_twice
        if conv.padding_mode == "zeros" and left_w == right_w and top_h == bottom_h:
            return cls((top_h, left_w))  # 'same' with odd kernels, 'valid'
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return cls((0, 0), tuple(conv._reversed_padding_repeated_twice), mode)

    def describe(self) -> str:
        if self.explicit is None:
            return ""
        return f" ({self.mode if self.mode != 'constant' else 'asymmetric zero'} padding applied in the enclave first)"


class OffloadedConv2d(_OffloadedWeighted):
    """``nn.Conv2d`` (groups=1, any padding: see :class:`ConvPadding`) whose products are computed by a protocol."""

    def __init__(self, original: nn.Conv2d, site: LayerSite, protocol, padding: ConvPadding) -> None:
        super().__init__(original, site, protocol)
        self.in_channels, self.out_channels = original.in_channels, original.out_channels
        self.kernel_size = original.kernel_size
        self.padding = padding

    @_eager
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding.explicit is not None:
            x = nn.functional.pad(x, self.padding.explicit, mode=self.padding.mode)
        return _WeightedFn.apply(x, self.current_weight(), self.bias, self)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
               f"{self.site.conv_params}, protocol={self.protocol.info.name}"


class OffloadedMatMul(nn.Module):
    """:class:`blindtrain.nn.MatMul` computed by a protocol."""

    def __init__(self, site: LayerSite, protocol) -> None:
        super().__init__()
        self.site, self.protocol = site, protocol

    @_eager
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _MatMulFn.apply(a, b, self)


#: old-style weight reparametrizations: a forward pre-hook on the module sets ``module.weight``
_WEIGHT_HOOKS = ("WeightNorm", "SpectralNorm")


def computed_weight(module: nn.Module) -> str | None:
    """How ``module``'s weight is computed at each forward instead of being a parameter, or ``None``."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, "weight"):
        names = ", ".join(type(p).__name__ for p in module.parametrizations.weight)
        return f"its weight is computed by a parametrization ({names})"
    for hook in module._forward_pre_hooks.values():
        if type(hook).__name__ in _WEIGHT_HOOKS:
            return f"its weight is computed by an old-style {type(hook).__name__} hook"
    return None


def stays_in_enclave(module: nn.Module, protocol_cls) -> str | None:
    """Why a bilinear module (Linear, Conv2d, MatMul) stays in the enclave under a protocol that offloads
    layers, or ``None`` when :func:`install` offloads it.  :mod:`blindtrain.placement` reports the same."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        kind = "depthwise" if module.groups == module.in_channels else "grouped"
        return (f"{kind} conv (groups={module.groups}): each group is its own small product and the "
                f"protocols' conv ops are dense; it stays in the enclave")
    computed = computed_weight(module)
    if computed is None:
        return None
    if "old-style" in computed:
        return (f"{computed}, which the offloaded layer cannot run; use torch.nn.utils.parametrizations."
                f"{'weight_norm' if 'Weight' in computed else 'spectral_norm'} instead")
    if not protocol_cls.weights_per_call:
        return f"{computed}, and {protocol_cls.info.name} keeps each offloaded weight on the worker as a parameter"
    return None


def _copy_hooks(source: nn.Module, target: nn.Module) -> None:
    """The user's hooks on a replaced module keep firing on its replacement (same dicts, same order)."""
    for attribute in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                      "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                      "_backward_hooks", "_is_full_backward_hook"):
        if hasattr(source, attribute):
            setattr(target, attribute, getattr(source, attribute))


def lazy_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters a lazy module (``LazyLinear`` ...) has not initialized yet."""
    return [name for name, param in model.named_parameters() if isinstance(param, nn.parameter.UninitializedParameter)]


def install(model: nn.Module, protocol) -> list[LayerSite]:
    """Replace the bilinear layers of ``model`` in place; returns their sites in model order.

    Products the model's ``forward`` calls as functions are offloaded too (:mod:`blindtrain.functional`).
    What stays in the enclave and why: :func:`stays_in_enclave`.  The user's hooks on a replaced module
    move to its replacement.  Lazy modules (``LazyLinear`` ...) must have run once before.
    """
    lazy = lazy_parameters(model)
    if lazy:
        raise UsageError(f"{', '.join(lazy)}: lazy parameter(s) not yet initialized; run one forward "
                         f"(model(example_batch)) before session.prepare(), or pass example_input= to prepare()")
    sites: list[LayerSite] = []
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, nn.MultiheadAttention):
            continue  # it reads its projections' weights directly (F.multi_head_attention_forward)
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, (nn.Linear, nn.Conv2d, MatMul)) or stays_in_enclave(child, type(protocol)):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear):
                site = LayerSite(name, "linear", tuple(child.weight.shape))
                replacement = OffloadedLinear(child, site, protocol)
            elif isinstance(child, nn.Conv2d):
                padding = ConvPadding.of(child)
                params = {"stride": child.stride, "padding": padding.numeric, "dilation": child.dilation}
                site = LayerSite(name, "conv2d", tuple(child.weight.shape), params)
                replacement = OffloadedConv2d(child, site, protocol, padding)
            else:
                site = LayerSite(name, "matmul")
                replacement = OffloadedMatMul(site, protocol)
            site.module = replacement
            _copy_hooks(child, replacement)
            setattr(parent, child_name, replacement)
            sites.append(site)
    sites.sort(key=lambda site: order[site.name])  # the model's own (pre-)order
    protocol.functional = install_functional(model, protocol)  # F.linear, matmul, sdpa ... in forward()
    return sites
