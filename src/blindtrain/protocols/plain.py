"""``plain``: the unprotected baseline.  The whole model and its training step run on
the worker's device (CUDA when present), in the clear.

The model's parameters and buffers cross to the worker once, in the clear, when it is
prepared.  The enclave keeps only the loss: each step the input batch crosses to the
worker, the logits come back, and the logits' gradient goes out again.  The user's model
object is kept (hooks, not a wrapper), so ``state_dict`` keys, indexing and multi-input
forwards are those of plain PyTorch.  Everything on the
worker device is counted as worker time.  This is the upper bound on speed; it
protects nothing.  The worker runs in this process (``--transport inproc``): a
model-resident worker in another process is not what this baseline measures.
"""

from __future__ import annotations

import time

import torch

from ..boundary import Tag
from ..errors import UsageError
from .base import Protocol, ProtocolInfo, register


class _Crossing(torch.autograd.Function):
    """Identity on the values; moves a tensor across the boundary (counted), gradient the other way."""

    @staticmethod
    def forward(ctx, x, anchor, boundary, tag, to_worker, device, timer):
        ctx.boundary, ctx.tag, ctx.to_worker, ctx.timer = boundary, tag, to_worker, timer
        ctx.source_device = x.device
        if to_worker:
            return boundary.hand_over(x, tag=tag, kind="clear", device=device)
        timer.stop()  # forward on the worker ends when the logits come back
        return boundary.hand_back(x, tag=tag)

    @staticmethod
    def backward(ctx, grad):
        if ctx.to_worker:
            ctx.timer.stop()  # the worker's backward is done when it reaches the input
            grad_input = None
            if ctx.needs_input_grad[0]:  # the caller asked for the input's gradient: it comes back, counted
                grad_input = ctx.boundary.hand_back(grad, tag=Tag(step=ctx.tag.step, layer="input", op="grad_input"))
                grad_input = grad_input.to(ctx.source_device)
            return grad_input, torch.zeros(()), None, None, None, None, None
        grad_tag = Tag(step=ctx.tag.step, layer="logits", op="grad_input")
        moved = ctx.boundary.hand_over(grad, tag=grad_tag, kind="clear", device=ctx.source_device)
        ctx.timer.start()
        return moved, None, None, None, None, None, None


class _WorkerTimer:
    """Counts spans in which the model computes on the worker as worker time (and enclave waits)."""

    def __init__(self, ledger) -> None:
        self.ledger, self._start = ledger, None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self.ledger.record_wait(time.perf_counter() - self._start)
            self._start = None


def _cross(value, *, to_worker: bool, protocol: "Plain", tag: Tag, anchor):
    """Move every floating tensor in ``value`` (a tensor, or a tuple / list / dict of them) across."""
    runtime = protocol.runtime
    if torch.is_tensor(value):
        if not value.is_floating_point() and to_worker:
            return runtime.boundary.hand_over(value, tag=tag, kind="clear", device=runtime.worker_device)
        if not value.is_floating_point():
            return runtime.boundary.hand_back(value, tag=tag)
        return _Crossing.apply(value, anchor if to_worker else None, runtime.boundary, tag, to_worker,
                               runtime.worker_device, protocol.timer)
    if isinstance(value, (tuple, list)):
        return type(value)(_cross(v, to_worker=to_worker, protocol=protocol, tag=tag, anchor=anchor) for v in value)
    if isinstance(value, dict):
        return {k: _cross(v, to_worker=to_worker, protocol=protocol, tag=tag, anchor=anchor) for k, v in value.items()}
    return value


class _ResidentHooks:
    """Forward hooks that make the user's own model object run on the worker device.

    Inputs (every positional and keyword tensor) cross to the worker before the forward, outputs cross
    back after it; the model, its ``state_dict`` keys, indexing and multi-input forwards are unchanged.
    """

    def __init__(self, protocol: "Plain") -> None:
        self.protocol = protocol
        self.anchor = torch.zeros((), requires_grad=True)  # keeps the input crossing in the autograd graph

    def before(self, module, args, kwargs):
        runtime = self.protocol.runtime
        tag = Tag(step=runtime.step, layer="input", op="forward")
        args = _cross(args, to_worker=True, protocol=self.protocol, tag=tag, anchor=self.anchor)
        kwargs = _cross(kwargs, to_worker=True, protocol=self.protocol, tag=tag, anchor=self.anchor)
        self.protocol.timer.start()
        return args, kwargs

    def after(self, module, args, kwargs, output):
        tag = Tag(step=self.protocol.runtime.step, layer="logits", op="forward")
        return _cross(output, to_worker=False, protocol=self.protocol, tag=tag, anchor=None)


@register
class Plain(Protocol):
    info = ProtocolInfo(
        name="plain",
        source="baseline",
        trains=True,
        private="nothing (data, labels' logits and model all on the worker device)",
        integrity="none",
        leaks="everything: inputs, model, gradients are in the worker's clear view",
        summary="ordinary training on the worker device; the upper bound on speed",
    )
    offloads_layers = False
    transcript_kinds = {"main": frozenset({"clear"})}

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        if runtime.transport != "inproc":
            raise UsageError("protocol 'plain' runs the model on an in-process worker device; "
                             "use --transport inproc")
        self.timer = _WorkerTimer(runtime.ledger)
        self.model_bytes = 0  # parameters and buffers handed to the worker at prepare()

    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        from ..costs import FLOAT32, StepCost

        used = ops if training else [op for op in ops if op.op == "forward"]
        logits = batch * classes * FLOAT32
        return StepCost(worker_flops=sum(op.flops for op in used),
                        bytes_to_worker=batch * input_numel * FLOAT32 + (logits if training else 0),
                        bytes_from_worker=logits, workers=1,
                        round_trips=3 if training else 2,  # messages: the input, the logits, their gradient
                        setup_bytes_to_worker=self.model_bytes,
                        trust="the worker sees everything", notes=["the loss stays on the trusted side"])

    def wrap(self, model, optimizer):
        """Hand the model to the worker (each parameter and buffer crosses once, counted and recorded as
        ``clear``) and hook its forward; returns the user's own model object, not a wrapper."""
        device = self.runtime.worker_device
        boundary = self.runtime.boundary
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.data = boundary.hand_over(tensor.data, tag=Tag(self.runtime.step, name, "load"),
                                                 kind="clear", device=device, operand="B")
                self.model_bytes += tensor.numel() * tensor.element_size()
        if optimizer is not None:
            # the step runs on the worker device: count it as worker time
            optimizer.register_step_pre_hook(lambda *_: self.timer.start())
            optimizer.register_step_post_hook(lambda *_: self.timer.stop())
            for state in optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)
        hooks = _ResidentHooks(self)
        model.register_forward_pre_hook(hooks.before, with_kwargs=True)
        model.register_forward_hook(hooks.after, with_kwargs=True)
        return model, optimizer
