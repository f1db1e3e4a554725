"""Analytic cost model: the bilinear ops of one training step, from the model's layer shapes.

:func:`trace_ops` runs one forward pass of a plain (unwrapped) model on a batch of
the given shape with hooks on every ``nn.Linear``, ``nn.Conv2d`` and
:class:`~blindtrain.nn.MatMul`, and lists the three ops per layer (forward,
grad_input, grad_weight) as :class:`OpShape` records, with operand shapes exactly
as the layer glue hands them to a protocol.  Each protocol turns that list into
its own :class:`StepCost` (``Protocol.cost_model``): what the enclave and the
worker compute, what crosses, how many round trips.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import bilinear
from .nn import MatMul

FLOAT32 = 4


@dataclass(frozen=True)
class OpShape:
    """One bilinear op of a training step: ``out = fn(A, B)``.

    ``roles`` says which operands are data (activations, gradients) and which a weight.
    ``macs`` is the number of multiply-accumulates (FLOPs = 2·macs).
    """

    layer: str
    kind: str
    op: str
    fn: str
    a_shape: tuple
    b_shape: tuple
    out_shape: tuple
    roles: tuple
    macs: int
    params: dict = field(default_factory=dict, compare=False)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def numel(self, which: str) -> int:
        return math.prod({"A": self.a_shape, "B": self.b_shape, "out": self.out_shape}[which])


@dataclass
class StepCost:
    """Modelled cost of one training step (or one inference batch) under a protocol."""

    enclave_flops: float = 0.0
    enclave_elementwise: float = 0.0
    worker_flops: float = 0.0
    bytes_to_worker: int = 0
    bytes_from_worker: int = 0
    round_trips: int = 0
    workers: int = 0
    #: bytes that cross once, when the model is prepared (plain hands the whole model over), not per step
    setup_bytes_to_worker: int = 0
    trust: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _op(layer, kind, op, fn, a_shape, b_shape, out_shape, roles, params=None) -> OpShape:
    """One :class:`OpShape`, its multiply-accumulates from the op table (:func:`blindtrain.bilinear.macs`)."""
    return OpShape(layer, kind, op, fn, tuple(a_shape), tuple(b_shape), tuple(out_shape), roles,
                   bilinear.macs(fn, a_shape, b_shape, out_shape), params or {})


def trace_ops(model: nn.Module, input_shape, *, batch: int) -> list[OpShape]:
    """The bilinear ops of one training step of ``model`` on a ``batch×input_shape`` input.

    The model is run once in eval mode under ``torch.no_grad`` on zeros; its
    parameters are not changed.
    """
    records: list[OpShape] = []
    handles = []
    model_input = torch.zeros(batch, *input_shape)
    first_layers: set[str] = set()

    def reads_model_input(inputs) -> bool:
        # the glue skips grad_input where the input needs no gradient: the model's own input
        return inputs[0].data_ptr() == model_input.data_ptr()

    def linear_hook(name):
        def hook(module, inputs, output):
            if reads_model_input(inputs):
                first_layers.add(name)
            x = inputs[0]
            b, n = math.prod(x.shape[:-1]), x.shape[-1]
            m = module.out_features
            records.extend([
                _op(name, "linear", "forward", "matmul", (b, n), (n, m), (b, m), ("data", "weight")),
                _op(name, "linear", "grad_input", "matmul", (b, m), (m, n), (b, n), ("data", "weight")),
                _op(name, "linear", "grad_weight", "matmul_tn", (b, n), (b, m), (n, m), ("data", "data")),
            ])
        return hook

    def conv_hook(name):
        def hook(module, inputs, output):
            if reads_model_input(inputs):
                first_layers.add(name)
            x = tuple(inputs[0].shape)
            w, y = tuple(module.weight.shape), tuple(output.shape)
            params = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation}
            records.extend([
                _op(name, "conv2d", "forward", "conv2d", x, w, y, ("data", "weight"), params),
                _op(name, "conv2d", "grad_input", "conv2d_input", y, w, x, ("data", "weight"),
                    {**params, "input_size": x}),
                _op(name, "conv2d", "grad_weight", "conv2d_weight", x, y, w, ("data", "data"),
                    {**params, "weight_size": w}),
            ])
        return hook

    def matmul_hook(name):
        def hook(module, inputs, output):
            a, b = tuple(inputs[0].shape), tuple(inputs[1].shape)
            y = tuple(output.shape)
            bt = b[:-2] + (b[-1], b[-2])
            at = a[:-2] + (a[-1], a[-2])
            records.extend([
                _op(name, "matmul", "forward", "bmm", a, b, y, ("data", "data")),
                _op(name, "matmul", "grad_input", "bmm", y, bt, a, ("data", "data")),
                _op(name, "matmul", "grad_weight", "bmm", at, y, b, ("data", "data")),
            ])
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook(name)))
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, MatMul):
            handles.append(module.register_forward_hook(matmul_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(model_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [op for op in records if not (op.op == "grad_input" and op.layer in first_layers)]


def forward_only(ops: list[OpShape]) -> list[OpShape]:
    """The ops of an inference batch."""
    return [op for op in ops if op.op == "forward"]
