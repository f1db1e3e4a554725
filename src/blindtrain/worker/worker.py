"""The worker: executes instructions from :mod:`blindtrain.worker.ops` on its device.

It holds tensors by handle between requests (state), measures its own compute
time, and runs an :class:`~blindtrain.worker.adversaries.Adversary` over every
result it returns (``honest`` by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ..boundary.messages import Ref, Request, Response
from .adversaries import Adversary, AdversarySpec
from .ops import INSTRUCTIONS, load_all


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass(frozen=True)
class WorkerConfig:
    name: str = "main0"
    device: str = "auto"
    threads: int | None = None
    adversary: AdversarySpec = AdversarySpec()
    in_process: bool = True


class Worker:
    """An untrusted worker.  Sees everything it receives; may be adversarial."""

    def __init__(self, config: WorkerConfig) -> None:
        load_all()
        self.config = config
        self.device = resolve_device(config.device)
        if config.threads and not config.in_process:
            torch.set_num_threads(config.threads)
        self.state: dict[str, torch.Tensor] = {}
        self.adversary = Adversary(config.adversary, in_process=config.in_process)
        self._tag, self._modulus = None, None  # of the request being handled

    def _resolve(self, arg) -> torch.Tensor:
        if isinstance(arg, Ref):
            try:
                return self.state[arg.handle]
            except KeyError:
                raise KeyError(f"worker holds no tensor {arg.handle!r}") from None
        return arg.tensor.to(self.device)

    def screen(self, result: torch.Tensor, *, op: str | None = None) -> torch.Tensor:
        """A product of the request being handled, as the adversary lets it out (returned or kept);
        ``op`` names the product when one request computes several."""
        tag = self._tag if op is None else replace(self._tag, op=op)
        return self.adversary.on_result(tag, result, self._modulus)

    def handle(self, request: Request) -> Response:
        start = time.perf_counter()
        self.adversary.before_request(request.tag, self.state)
        args = {name: self._resolve(arg) for name, arg in request.args.items()}
        for name, handle in request.keep.items():
            self.state[handle] = args[name]
        try:
            instruction = INSTRUCTIONS[request.instr]
        except KeyError:
            raise ValueError(f"unknown worker instruction {request.instr!r}") from None
        self._tag, self._modulus = request.tag, request.params.get("modulus")
        result = instruction(self, args, request.params)
        if result is not None and request.instr != "store":
            if not instruction.screens_results:
                result = self.screen(result)
            if request.keep_result:
                self.state[request.keep_result] = result
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        return Response(result=result if request.return_result else None, worker_seconds=elapsed)
