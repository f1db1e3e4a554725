"""What the in-process worker's own thread costs tempo: enclave seconds per step with the inproc transport
as shipped (the worker on its own thread, so --worker-timeout holds and call_many overlaps workers)
against an *inline* variant that runs the worker in the caller's thread (no timeout can end a hang
there, and no two workers can overlap; measurement only).  mlp 3×4096 on synthetic, batch 64, the two
sessions' steps interleaved after one untimed warm-up step.

    PYTHONPATH=src python scripts/inproc_hop_cost.py [--steps 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offload_ratio import CONFIGS, Runner  # noqa: E402

from blindtrain import data as datasets  # noqa: E402
from blindtrain.boundary import transport  # noqa: E402
from blindtrain.boundary.messages import Response  # noqa: E402


class InlineTransport(transport.InprocTransport):
    """The worker runs in the caller's thread at submit (measurement only: no timeout, no overlap)."""

    def _send(self, request):
        response = self.worker.handle(transport._copy_request(request))
        result = response.result
        if torch.is_tensor(result):
            result = result.detach().to("cpu", copy=True)
        answer = Response(result=result, worker_seconds=response.worker_seconds)
        return lambda: answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    dataset = datasets.load("synthetic", seed=0)
    shipped = transport.TRANSPORTS["inproc"]
    runners = {}
    try:
        for name, cls in (("thread", shipped), ("inline", InlineTransport)):
            transport.TRANSPORTS["inproc"] = cls
            runners[name] = Runner("tempo", CONFIGS["mlp4096"], dataset)
    finally:
        transport.TRANSPORTS["inproc"] = shipped
    for runner in runners.values():
        runner.step(timed=False)
    for _ in range(args.steps):
        for runner in runners.values():
            runner.step()
    per_step = {name: runner.result()["enclave_s_per_step"] for name, runner in runners.items()}
    for runner in runners.values():
        runner.session.close()
    print(f"tempo enclave ms/step: worker thread {per_step['thread'] * 1e3:.1f}, inline {per_step['inline'] * 1e3:.1f}; "
          f"inline / thread = {per_step['inline'] / per_step['thread']:.3f}")


if __name__ == "__main__":
    main()
