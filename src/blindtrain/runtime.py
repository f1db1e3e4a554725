"""The trusted side's runtime: what a protocol may use.

One :class:`Runtime` per session holds the ledger, the boundary to the workers,
the enclave's CSPRNG and its configuration.  Protocols receive it at
construction; they never reach for globals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .boundary import Boundary, Request, Response
from .crypto import Csprng
from .ledger import Ledger


@dataclass(frozen=True)
class EnclaveConfig:
    """How the emulated enclave is configured, and the figures used for *modelled* SGX costs.

    Attributes:
        threads: threads of the trusted side (``torch.set_num_threads``); ``None`` leaves the default.
        epc_bytes: enclave page cache budget (SGX1-like: 128 MiB; SGX2-like: much larger).
        transition_cycles: modelled cost of one enclave transition (ecall/ocall), 8-17k cycles.
        page_cycles: modelled cost of paging one 4 KiB EPC page in or out.
        cpu_hz: clock used to turn modelled cycles into seconds.
    """

    threads: int | None = None
    epc_bytes: int = 128 * 2**20
    transition_cycles: int = 13_000
    page_cycles: int = 40_000
    cpu_hz: float = 3.0e9

    def modelled_costs(self, ledger: Ledger) -> dict:
        """Costs an emulation cannot incur, computed from the ledger (never mixed with measured ones)."""
        transition_s = ledger.enclave_transitions * self.transition_cycles / self.cpu_hz
        overflow = max(ledger.enclave_peak_bytes - self.epc_bytes, 0)
        # Lower bound: every page above the EPC budget is evicted and reloaded once per step.
        paging_s = (overflow / 4096) * 2 * self.page_cycles / self.cpu_hz * max(ledger.steps, 1)
        return {"enclave_transitions": ledger.enclave_transitions, "transition_seconds": transition_s,
                "epc_bytes": self.epc_bytes, "epc_overflow_bytes": overflow, "paging_seconds": paging_s,
                "note": "modelled from the ledger; not measured"}


class Runtime:
    """Everything a protocol instance works with."""

    def __init__(self, *, ledger: Ledger, boundary: Boundary, rng: Csprng, config: EnclaveConfig,
                 worker_device: str, transport: str) -> None:
        self.ledger = ledger
        self.boundary = boundary
        self.rng = rng
        self.config = config
        self.worker_device = worker_device
        self.transport = transport
        self.step = 0
        #: a :class:`blindtrain.groundtruth.GroundTruthRecorder` while ``--record-ground-truth`` is on, else None
        self.ground_truth = None
        self._next_nonce = 0

    def call(self, request: Request, *, role: str = "main", index: int = 0) -> Response:
        """Send a request to a worker through the boundary (the choke point)."""
        return self.boundary.call(request, role=role, index=index)

    def submit(self, request: Request, *, role: str = "main", index: int = 0):
        """Send a request now; its answer is collected by the returned future's ``result()``."""
        return self.boundary.submit(request, role=role, index=index)

    def call_many(self, calls) -> list[Response]:
        """Send several requests (:class:`~blindtrain.boundary.boundary.Call`) before waiting for any."""
        return self.boundary.call_many(calls)

    def next_nonce(self) -> int:
        """A number never returned before in this session (for labelling keystream draws)."""
        nonce, self._next_nonce = self._next_nonce, self._next_nonce + 1
        return nonce

    def state_dict(self) -> dict:
        """What a resumed run needs to continue this one bit for bit: the step, the nonce counter and the
        enclave CSPRNG (SECRET: its key — for the sealed checkpoint only, never logged)."""
        rng = {name: torch.from_numpy(np.frombuffer(value, dtype=np.uint8).copy())  # tensors: a weights-only load reads them
               for name, value in self.rng.export_state().items()}
        return {"step": self.step, "next_nonce": self._next_nonce, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (the CSPRNG is rekeyed in place)."""
        self.step = int(state["step"])
        self._next_nonce = int(state["next_nonce"])
        self.rng.load_state({name: bytes(value.numpy().tobytes()) for name, value in state["rng"].items()})
