"""One offload pipeline for every protocol: encode, dispatch to many workers at once, verify, decode.

A protocol supplies a :class:`~blindtrain.pipeline.scheme.Scheme` — how to encode one bilinear op
``Y = f(A, B)`` into requests for its worker roles, and how to verify and decode their answers — and
:class:`~blindtrain.pipeline.pipeline.Pipeline` does the rest the same way for every protocol: tags,
concurrent fan-out through the boundary's one choke point (``call_many``), the ledger's enclave-time
categories, and integrity failures that name the layer, the op and the step.
"""

from .phases import Phases
from .pipeline import Pipeline
from .scheme import Check, Encoded, OffloadOp, Rejected, Replies, Scheme, WorkerId

__all__ = ["Check", "Encoded", "OffloadOp", "Phases", "Pipeline", "Rejected", "Replies", "Scheme", "WorkerId"]
