"""The one choke point every crossing goes through.

:meth:`Boundary.call` is the only way the trusted side talks to a worker.  It
counts the bytes each way and the messages in the :class:`~blindtrain.ledger.Ledger`,
times the wait, and appends every tensor sent to the worker role's transcript.
It knows nothing of protocols: it moves :class:`Request` objects.

Every result is checked for being well formed (:mod:`blindtrain.boundary.expect`: a tensor of the
shape and dtype the request implies) before a protocol sees it; a malformed one is an
:class:`~blindtrain.errors.IntegrityError` naming the layer, op and step.

Workers are addressed by role (``"main"``, ``"mask"``, ...) and index; each role
has its own transcript, so an auditor can check what each kind of worker saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import IntegrityError
from ..ledger import Ledger
from ..transcript import Transcript
from .expect import HeldShapes, malformation
from .messages import Request, Response, tensor_bytes
from .transport import Transport


class Boundary:
    """Routes requests to workers through their transports and accounts for them.

    Args:
        ledger: where counts and times go.
        transport_factory: ``factory(role, index) -> Transport``; called lazily on first use.
        record_transcript: keep a transcript per worker role (streamed to a spool file in
            ``transcript_spool_dir``, default the system's temporary folder).
    """

    def __init__(self, *, ledger: Ledger, transport_factory: Callable[[str, int], Transport],
                 record_transcript: bool = False) -> None:
        self.ledger = ledger
        self._factory = transport_factory
        self._transports: dict[tuple[str, int], Transport] = {}
        self.transcripts: dict[str, Transcript] = {}
        self.record_transcript = record_transcript
        self.transcript_spool_dir = None
        self._held: dict[tuple[str, int], HeldShapes] = {}

    def transport(self, role: str = "main", index: int = 0) -> Transport:
        key = (role, index)
        if key not in self._transports:
            self._transports[key] = self._factory(role, index)
        return self._transports[key]

    def _record(self, role: str, worker_name: str, tensor, tag, *, operand: str, kind: str) -> None:
        """Append a tensor the worker receives to its role's transcript (when recording)."""
        if self.record_transcript:
            if role not in self.transcripts:
                self.transcripts[role] = Transcript(spool_dir=self.transcript_spool_dir)
            self.transcripts[role].append(
                tensor, step=tag.step, layer=tag.layer, op=tag.op, operand=operand, kind=kind,
                modulus=tag.modulus, worker=worker_name)

    def call(self, request: Request, *, role: str = "main", index: int = 0) -> Response:
        """Send ``request`` to worker ``(role, index)`` and return its response (the choke point)."""
        worker_name = f"{role}{index}"
        sent = request.sent_tensors()
        for operand, arg in sent:
            self._record(role, worker_name, arg.tensor, request.tag, operand=operand, kind=arg.kind)
        expected = self._held.setdefault((role, index), HeldShapes()).expect(request)
        start = time.perf_counter()
        response = self.transport(role, index).call(request)
        waited = time.perf_counter() - start
        problem = malformation(response.result, expected, return_result=request.return_result)
        received = tensor_bytes(response.result) if problem is None else 0
        self.ledger.record_crossing(worker=worker_name, sent=sum(tensor_bytes(a.tensor) for _, a in sent),
                                    received=received, waited=waited, worker_time=response.worker_seconds)
        if problem is not None:
            self.ledger.record_check(passed=False)
            tag = request.tag
            raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                                 detail=f"malformed result from worker {worker_name!r}: {problem}")
        return response

    # -- crossings without a worker instruction (a model resident on an in-process worker) --
    def hand_over(self, tensor, *, tag, kind: str, device: str, role: str = "main", operand: str = "A"):
        """Copy ``tensor`` to the in-process worker's ``device`` (counted and recorded like a request)."""
        self._record(role, f"{role}0", tensor, tag, operand=operand, kind=kind)
        moved = tensor.detach().to(device, copy=True)
        self.ledger.record_crossing(worker=f"{role}0", sent=tensor_bytes(tensor), received=0, waited=0.0,
                                    worker_time=0.0)
        return moved

    def hand_back(self, tensor, *, tag, role: str = "main"):
        """Copy a worker-side tensor back to the trusted side (counted)."""
        moved = tensor.detach().to("cpu", copy=True)
        self.ledger.record_crossing(worker=f"{role}0", sent=0, received=tensor_bytes(tensor), waited=0.0,
                                    worker_time=0.0)
        return moved

    @property
    def device(self) -> str:
        """The main worker's compute device (starts it if needed)."""
        return self.transport("main", 0).device

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
