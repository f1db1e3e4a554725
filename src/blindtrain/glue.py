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

from dataclasses import dataclass, field

import torch
from torch import nn

from . import threads
from .errors import TrainingDiverged
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


class _WeightedFn(torch.autograd.Function):
    """``y = protocol.forward(x, W) + b`` with both gradients from the protocol."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
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
        with threads.for_pass(x2.numel() + g2.numel()):
            return (*bilinear_gradients(site, protocol, x2, g2, weight, needs=ctx.needs_input_grad[:3],
                                        has_bias=ctx.has_bias, input_shape=ctx.input_shape), None)


class _MatMulFn(torch.autograd.Function):
    """``y = a @ b`` (both data) with both gradients from the protocol."""

    @staticmethod
    def forward(ctx, a, b, layer):
        require_finite(layer, "forward", left_operand=a, right_operand=b)
        ctx.layer = layer
        ctx.save_for_backward(a, b)
        with threads.for_pass(a.numel() + b.numel()):
            return layer.protocol.matmul(layer.site, a, b)

    @staticmethod
    def backward(ctx, grad_y):
        a, b = ctx.saved_tensors
        require_finite(ctx.layer, "backward", output_gradient=grad_y)
        with threads.for_pass(a.numel() + b.numel() + grad_y.numel()):
            grad_a, grad_b = ctx.layer.protocol.matmul_grads(ctx.layer.site, a, b, grad_y.contiguous(),
                                                             (ctx.needs_input_grad[0], ctx.needs_input_grad[1]))
        return grad_a, grad_b, None


class OffloadedLinear(nn.Module):
    """``nn.Linear`` whose products are computed by a protocol."""

    def __init__(self, original: nn.Linear, site: LayerSite, protocol) -> None:
        super().__init__()
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight, self.bias = original.weight, original.bias
        self.site, self.protocol = site, protocol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightedFn.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, protocol={self.protocol.info.name}"


class OffloadedConv2d(nn.Module):
    """``nn.Conv2d`` (groups=1, zero padding) whose products are computed by a protocol."""

    def __init__(self, original: nn.Conv2d, site: LayerSite, protocol) -> None:
        super().__init__()
        self.in_channels, self.out_channels = original.in_channels, original.out_channels
        self.kernel_size = original.kernel_size
        self.weight, self.bias = original.weight, original.bias
        self.site, self.protocol = site, protocol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _WeightedFn.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
               f"{self.site.conv_params}, protocol={self.protocol.info.name}"


class OffloadedMatMul(nn.Module):
    """:class:`blindtrain.nn.MatMul` computed by a protocol."""

    def __init__(self, site: LayerSite, protocol) -> None:
        super().__init__()
        self.site, self.protocol = site, protocol

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _MatMulFn.apply(a, b, self)


def _offloadable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return isinstance(module, (nn.Linear, MatMul))


def install(model: nn.Module, protocol) -> list[LayerSite]:
    """Replace the bilinear layers of ``model`` in place; returns their sites in model order.

    Conv2d layers with ``groups > 1`` or non-zero padding modes stay in the enclave.
    """
    sites: list[LayerSite] = []
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, nn.MultiheadAttention):
            continue  # it reads its projections' weights directly (F.multi_head_attention_forward)
        for child_name, child in list(parent.named_children()):
            if not _offloadable(child):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear):
                site = LayerSite(name, "linear", tuple(child.weight.shape))
                replacement = OffloadedLinear(child, site, protocol)
            elif isinstance(child, nn.Conv2d):
                params = {"stride": child.stride, "padding": child.padding, "dilation": child.dilation}
                site = LayerSite(name, "conv2d", tuple(child.weight.shape), params)
                replacement = OffloadedConv2d(child, site, protocol)
            else:
                site = LayerSite(name, "matmul")
                replacement = OffloadedMatMul(site, protocol)
            site.module = replacement
            setattr(parent, child_name, replacement)
            sites.append(site)
    sites.sort(key=lambda site: order[site.name])  # the model's own (pre-)order
    return sites
