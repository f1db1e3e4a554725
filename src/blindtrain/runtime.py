"""The trusted side's runtime: what a protocol may use.

One :class:`Runtime` per session holds the ledger, the boundary to the workers,
the enclave's CSPRNG and its configuration.  Protocols receive it at
construction; they never reach for globals.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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
        self._nonces = itertools.count()

    def call(self, request: Request, *, role: str = "main", index: int = 0) -> Response:
        """Send a request to a worker through the boundary (the choke point)."""
        return self.boundary.call(request, role=role, index=index)

    def next_nonce(self) -> int:
        """A number never returned before in this session (for labelling keystream draws)."""
        return next(self._nonces)
