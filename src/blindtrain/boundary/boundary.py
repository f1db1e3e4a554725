"""The one choke point every crossing goes through.

:meth:`Boundary.call` is the only way the trusted side talks to a worker.  It
counts the bytes each way and the messages in the :class:`~blindtrain.ledger.Ledger`,
times the wait, and appends every tensor sent to the worker role's transcript.
It knows nothing of protocols: it moves :class:`Request` objects.

Every result is checked for being well formed (:mod:`blindtrain.boundary.expect`: a tensor of the
shape and dtype the request implies) before a protocol sees it; a malformed one is an
:class:`~blindtrain.errors.IntegrityError` naming the layer, op and step.

Dispatch is asynchronous: :meth:`Boundary.submit` sends a request and returns a
:class:`PendingCall`; :meth:`Boundary.call_many` sends several (to different workers and roles) before
waiting for any, so N workers compute at the same time.  :meth:`Boundary.call` is ``submit(...).result()``.
All three count the same way: the transcript records a request when it is sent, the ledger counts the
crossing (bytes, one message, the worker's own time) when its answer is collected.  The ledger's
``wait_seconds`` is the wall time the trusted side spent blocked on workers — handing a request over,
then waiting for its answer — so when calls overlap each second of waiting is counted once, and the
enclave-time categories (which subtract waits) stay right.

Workers are addressed by role (``"main"``, ``"mask"``, ...) and index; each role
has its own transcript, so an auditor can check what each kind of worker saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import IntegrityError
from ..ledger import Ledger
from ..transcript import Transcript
from .expect import HeldShapes, malformation
from .messages import Request, Response, tensor_bytes
from .transport import Pending, Transport


@dataclass(frozen=True)
class Call:
    """One request for :meth:`Boundary.call_many`, and the worker ``(role, index)`` it goes to."""

    request: Request
    role: str = "main"
    index: int = 0


class PendingCall:
    """A request sent through the boundary whose answer has not been collected (the boundary's future).

    :meth:`result` waits for the answer, counts the crossing in the ledger, checks the result is well
    formed, and returns the :class:`Response` (or raises the worker's failure, or an
    :class:`~blindtrain.errors.IntegrityError` naming the layer, op and step)."""

    def __init__(self, boundary: "Boundary", call: Call, pending: Pending, *, expected, sent_bytes: int) -> None:
        self._boundary, self.call, self._pending = boundary, call, pending
        self._expected, self._sent_bytes = expected, sent_bytes
        self._outcome: Response | BaseException | None = None

    def done(self) -> bool:
        return self._outcome is not None

    def result(self) -> Response:
        if self._outcome is None:
            self._outcome = self._settle()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def _settle(self) -> Response | BaseException:
        ledger, request = self._boundary.ledger, self.call.request
        worker_name = f"{self.call.role}{self.call.index}"
        start = time.perf_counter()
        try:
            response = self._pending.result()
        except BaseException as exc:  # noqa: BLE001 - kept: result() raises it (again)
            ledger.wait_seconds += time.perf_counter() - start
            return exc
        ledger.wait_seconds += time.perf_counter() - start
        problem = malformation(response.result, self._expected, return_result=request.return_result)
        received = tensor_bytes(response.result) if problem is None else 0
        ledger.record_crossing(worker=worker_name, sent=self._sent_bytes, received=received, waited=0.0,
                               worker_time=response.worker_seconds)
        if problem is not None:
            ledger.record_check(passed=False)
            tag = request.tag
            return IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                                  detail=f"malformed result from worker {worker_name!r}: {problem}")
        return response


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

    def submit(self, request: Request, *, role: str = "main", index: int = 0) -> PendingCall:
        """Send ``request`` to worker ``(role, index)`` now and return its :class:`PendingCall` (the choke
        point: every crossing is one submit).  The time spent handing it over is a wait."""
        worker_name = f"{role}{index}"
        sent = request.sent_tensors()
        for operand, arg in sent:
            self._record(role, worker_name, arg.tensor, request.tag, operand=operand, kind=arg.kind)
        expected = self._held.setdefault((role, index), HeldShapes()).expect(request)
        start = time.perf_counter()
        try:
            pending = self.transport(role, index).submit(request)
        finally:
            self.ledger.wait_seconds += time.perf_counter() - start
        return PendingCall(self, Call(request, role, index), pending, expected=expected,
                           sent_bytes=sum(tensor_bytes(a.tensor) for _, a in sent))

    def call(self, request: Request, *, role: str = "main", index: int = 0) -> Response:
        """Send ``request`` to worker ``(role, index)`` and return its response."""
        return self.submit(request, role=role, index=index).result()

    def call_many(self, calls: Sequence[Call]) -> list[Response]:
        """Send every call (in order) before waiting for any, then collect the answers in order.

        Calls to different workers run at the same time; calls to the same worker run one after the
        other.  Every answer is collected (and counted) even when one fails; then the first failure in
        ``calls``' order is raised."""
        pendings: list[PendingCall | BaseException] = []
        for call in calls:
            try:
                pendings.append(self.submit(call.request, role=call.role, index=call.index))
            except BaseException as exc:  # noqa: BLE001 - raised after the others are collected
                pendings.append(exc)
        responses, failure = [], None
        for pending in pendings:
            try:
                if isinstance(pending, BaseException):
                    raise pending
                responses.append(pending.result())
            except BaseException as exc:  # noqa: BLE001
                failure = failure or exc
        if failure is not None:
            raise failure
        return responses

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
