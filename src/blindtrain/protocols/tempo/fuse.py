"""Fused activations for ``tempo`` (``--fuse-activations``).

A Linear / Conv2d layer followed in an ``nn.Sequential`` by ReLU or LeakyReLU (and, for a conv,
a non-overlapping ``MaxPool2d``) becomes one :class:`FusedOffloaded` module with one autograd
function: the forward product (offloaded and Freivalds-checked like any forward), then bias,
activation and max-pool in the enclave on the verified product; the backward masks by the
output's sign and scatters through the argmax positions.

Integrity: nothing nonlinear runs on the worker.  A worker-applied ReLU or max-pool cannot be
checked against the operands (neither is invertible, and the check ``Y ρ = X q`` needs all of
``Y``); checking it against a returned pre-activation costs the enclave what applying it costs.
So the activation is not fused on the worker — an unchecked fused result let a worker scale or
zero the forward silently (issue 17).
"""

from __future__ import annotations

import torch
from torch import nn

from ...functional import suspended
from ...glue import OffloadedConv2d, OffloadedLinear, _call_state, bilinear_gradients


class _FusedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, module):
        with suspended():  # protocol code: its own products are not offloaded again
            z, idx = module.protocol.fused_forward(module.site, x, weight, bias, module.spec)
        ctx.module, ctx.input_shape, ctx.has_bias = module, x.shape, bias is not None
        ctx.call = module.site.state.pop("call", None)
        ctx.pre_pool_shape = module.spec.get("pre_pool_shape")  # this call's (a module may run twice)  # this forward's keys and handles (see glue._call_state)
        ctx.save_for_backward(x, weight, z, idx if idx is not None else torch.empty(0))
        return z

    @staticmethod
    def backward(ctx, grad_z):
        x, weight, z, idx = ctx.saved_tensors
        module = ctx.module
        spec, site, protocol = module.spec, module.site, module.protocol
        slope = spec["slope"]
        grad_z = grad_z * torch.where(z > 0, 1.0, slope)
        if spec["pool"]:
            b, m, h, w = ctx.pre_pool_shape
            grad_y = torch.zeros(b, m, h * w, dtype=grad_z.dtype)
            grad_y.scatter_(2, idx.view(b, m, -1), grad_z.reshape(b, m, -1))
            grad_y = grad_y.view(b, m, h, w)
        else:
            grad_y = grad_z.contiguous()
        with _call_state(site, ctx.call):
            return (*bilinear_gradients(site, protocol, x, grad_y, weight, needs=ctx.needs_input_grad[:3],
                                        has_bias=ctx.has_bias, input_shape=ctx.input_shape), None)


class FusedOffloaded(nn.Module):
    """An offloaded layer with its activation (and max-pool) run on the worker."""

    def __init__(self, original, spec: dict) -> None:
        super().__init__()
        self.weight, self.bias = original.weight, original.bias  # same Parameters, same state_dict keys
        self.site, self.protocol, self.spec = original.site, original.protocol, spec
        self.padding = getattr(original, "padding", None)  # a conv's ConvPadding: what the enclave pads first
        self.site.module = self

    def forward(self, x):
        if self.padding is not None and self.padding.explicit is not None:
            x = nn.functional.pad(x, self.padding.explicit, mode=self.padding.mode)
        return _FusedFn.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return f"{self.site.name}, fused={self.spec['act']}{'+maxpool' if self.spec['pool'] else ''}"


def _pool_size(module) -> int | None:
    k, s = module.kernel_size, module.stride
    ok = (isinstance(k, int) and (s is None or s == k) and module.padding == 0 and module.dilation == 1
          and not module.ceil_mode and not module.return_indices)
    return k if ok else None


def install_fused(model: nn.Module, protocol) -> list[str]:
    """Fuse (Linear|Conv2d) → ReLU|LeakyReLU [→ MaxPool2d] runs inside ``nn.Sequential`` containers."""
    fused = []
    for container in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(container)
        i = 0
        while i < len(children) - 1:
            layer, act = children[i], children[i + 1]
            if isinstance(layer, (OffloadedLinear, OffloadedConv2d)) and isinstance(act, (nn.ReLU, nn.LeakyReLU)):
                slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else 0.0
                spec = {"act": "leaky_relu" if slope else "relu", "slope": float(slope), "pool": None}
                span = 2
                if (isinstance(layer, OffloadedConv2d) and i + 2 < len(children)
                        and isinstance(children[i + 2], nn.MaxPool2d) and _pool_size(children[i + 2])):
                    spec["pool"] = _pool_size(children[i + 2])
                    span = 3
                container[i] = FusedOffloaded(layer, spec)
                for j in range(i + 1, i + span):
                    container[j] = nn.Identity()
                fused.append(layer.site.name)
                i += span
            else:
                i += 1
    return fused
