"""``plain``: the unprotected baseline.  The whole model and its training step run on
the worker's device (CUDA when present), in the clear.

The enclave keeps only the loss: each step the input batch crosses to the worker,
the logits come back, and the logits' gradient goes out again.  Everything on the
worker device is counted as worker time.  This is the upper bound on speed; it
protects nothing.  The worker runs in this process (``--transport inproc``): a
model-resident worker in another process is not what this baseline measures.
"""

from __future__ import annotations

import time

import torch
from torch import nn

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
            return None, torch.zeros(()), None, None, None, None, None
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


class WorkerResident(nn.Module):
    """Runs ``inner`` on the worker device; inputs and logits cross the boundary."""

    def __init__(self, inner: nn.Module, protocol: "Plain") -> None:
        super().__init__()
        self.inner = inner
        self._protocol = [protocol]  # not a submodule
        self._anchor = torch.zeros((), requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        protocol = self._protocol[0]
        runtime = protocol.runtime
        device = runtime.worker_device
        tag = Tag(step=runtime.step, layer="input", op="forward")
        timer = protocol.timer
        x_worker = _Crossing.apply(x, self._anchor, runtime.boundary, tag, True, device, timer)
        timer.start()
        logits = self.inner(x_worker)
        return _Crossing.apply(logits, None, runtime.boundary, Tag(runtime.step, "logits", "forward"), False,
                               device, timer)


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

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        if runtime.transport != "inproc":
            raise UsageError("protocol 'plain' runs the model on an in-process worker device; "
                             "use --transport inproc")
        self.timer = _WorkerTimer(runtime.ledger)

    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        from ..costs import FLOAT32, StepCost

        used = ops if training else [op for op in ops if op.op == "forward"]
        logits = batch * classes * FLOAT32
        return StepCost(worker_flops=sum(op.flops for op in used),
                        bytes_to_worker=batch * input_numel * FLOAT32 + (logits if training else 0),
                        bytes_from_worker=logits, round_trips=2 if training else 1, workers=1,
                        trust="the worker sees everything", notes=["the loss stays on the trusted side"])

    def wrap(self, model, optimizer):
        device = self.runtime.worker_device
        if optimizer is not None:  # training: the worker gets the initial model once (counted, recorded)
            for name, tensor in model.state_dict().items():
                self.runtime.boundary.hand_over(tensor, tag=Tag(self.runtime.step, name, "load"), kind="clear",
                                                device=device)
        model.to(device)
        if optimizer is not None:
            # the step runs on the worker device: count it as worker time
            optimizer.register_step_pre_hook(lambda *_: self.timer.start())
            optimizer.register_step_post_hook(lambda *_: self.timer.stop())
            for state in optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)
        return WorkerResident(model, self), optimizer
