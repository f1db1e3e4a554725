"""``enclave``: the TEE-only baseline.  Everything runs on the trusted side, on CPU.

Nothing is offloaded, so nothing crosses the boundary and nothing leaks to a
worker; the cost is that the enclave's few CPU threads do all the work.  Its
``enclave_seconds`` is the denominator of every protocol's offload ratio.
"""

from __future__ import annotations

import torch

from .base import Protocol, ProtocolInfo, register


@register
class EnclaveOnly(Protocol):
    info = ProtocolInfo(
        name="enclave",
        source="baseline (TEE-only)",
        trains=True,
        private="everything: data, labels, model (nothing offloaded)",
        integrity="n/a (no untrusted computation)",
        leaks="nothing to a worker; only the enclave's size and timing",
        summary="the whole training step inside the enclave, on its CPU threads",
    )
    offloads_layers = False

    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        from ..costs import StepCost

        used = ops if training else [op for op in ops if op.op == "forward"]
        return StepCost(enclave_flops=sum(op.flops for op in used), trust="none: nothing leaves the enclave",
                        workers=0, notes=["every bilinear op runs on the enclave's CPU threads"])

    def wrap(self, model, optimizer):
        threads = self.runtime.config.threads
        if threads:
            torch.set_num_threads(threads)
        return model.to("cpu"), optimizer
