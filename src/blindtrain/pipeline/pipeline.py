"""The pipeline: runs a :class:`~blindtrain.pipeline.scheme.Scheme` for one op, the same way for every
protocol.

``run(scheme, op)``:

====================  ==================================================  =========================
stage                 what                                                ledger
====================  ==================================================  =========================
encode                ``scheme.encode`` → one request per worker          ``encode`` (and the
                                                                          categories the scheme uses)
dispatch              every request sent before any answer is awaited     ``wait_seconds`` (not
                      (:meth:`Boundary.call_many`): N workers and roles   enclave time); bytes and
                      compute at the same time                            messages per worker
verify                ``scheme.verify`` → checks, each counted; the       ``decode_verify``;
                      first failure is an ``IntegrityError`` naming the   ``integrity_checks`` /
                      layer, the op and the step                          ``integrity_failures``
decode                ``scheme.decode`` → ``Y``                           ``decode_verify``
====================  ==================================================  =========================
"""

from __future__ import annotations

import torch

from ..boundary.boundary import Call
from ..errors import IntegrityError
from .phases import Phases
from .scheme import Encoded, OffloadOp, Rejected, Replies, Scheme


class Pipeline:
    """Offloads ops through one session's boundary.

    Args:
        runtime: the session's :class:`~blindtrain.runtime.Runtime` (its boundary and ledger).
    """

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def run(self, scheme: Scheme, op: OffloadOp) -> torch.Tensor:
        """``Y = f(A, B)`` for ``op`` under ``scheme``: encode, dispatch, verify, decode."""
        ledger = self.runtime.ledger
        phases = Phases(ledger, "encode")
        with phases.running("encode"):
            encoded = scheme.encode(op, phases)
        replies = self.dispatch(encoded)
        with phases.running("decode_verify"):
            try:
                for check in scheme.verify(op, replies, encoded.context, phases):
                    ledger.record_check(passed=check.passed)
                    if not check.passed:
                        raise IntegrityError(layer=op.layer, op=op.op, step=op.step, detail=check.detail)
                return scheme.decode(op, replies, encoded.context, phases)
            except Rejected as exc:
                raise IntegrityError(layer=op.layer, op=op.op, step=op.step, detail=str(exc)) from None

    def dispatch(self, encoded: Encoded) -> Replies:
        """Send every request of ``encoded`` (in order) before waiting for any; the answers by worker."""
        workers = list(encoded.requests)
        responses = self.runtime.call_many([Call(encoded.requests[w], w.role, w.index) for w in workers])
        return Replies(dict(zip(workers, responses)))
