"""What a protocol supplies to the pipeline: a scheme, and the typed values it exchanges.

For one offloaded op ``Y = f(A, B)`` (``f`` a bilinear function of :mod:`blindtrain.bilinear`:
``matmul`` with ``A: (b, n)``, ``B: (n, m)``, ``Y: (b, m)``; ``conv2d`` and its gradients; ``bmm``):

1. :meth:`Scheme.encode` turns ``(A, B)`` into one :class:`~blindtrain.boundary.Request` per worker
   (:class:`WorkerId`: role and index) plus a *context* the scheme alone reads back (pads, keys,
   exponents, check statistics ...): an :class:`Encoded`;
2. the pipeline sends every request before waiting for any;
3. :meth:`Scheme.verify` yields one :class:`Check` per verified answer (e.g. Freivalds:
   ``f(A', B)·s = f(A', B·s)`` for random ``s``); the pipeline counts each and stops at the first failure;
4. :meth:`Scheme.decode` turns the answers and the context into ``Y`` (e.g.
   ``Y = centred(Y' − U)·2^-(l_a+l_b)``); it may raise :class:`Rejected` when something it needs
   turns out to be tampered with (a sealed factor missing or modified).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from ..boundary import Request, Response, Tag
from .phases import Phases

Context = TypeVar("Context")


@dataclass(frozen=True)
class WorkerId:
    """A worker: its role (``main``, ``mask``, ``s0`` ...) and its index within the role."""

    role: str = "main"
    index: int = 0

    def __str__(self) -> str:
        return f"{self.role}{self.index}"


@dataclass(frozen=True)
class OffloadOp:
    """One bilinear op to offload: ``Y = f(A, B)`` with ``f = bilinear.apply(fn, ·, ·, **params)``.

    Attributes:
        layer: the layer's qualified name (tags, transcript, error messages).
        op: ``forward``, ``grad_input``, ``grad_weight`` or an attention product.
        fn: the bilinear function (``matmul``, ``conv2d``, ``conv2d_input`` ...).
        a, b: the operands, in ``fn``'s layout (``matmul``: ``a`` is ``(b, n)``, ``b`` is ``(n, m)``).
        params: ``fn``'s keyword parameters (stride, padding, sizes ...).
        step: the training step (or inference batch) the op belongs to.
        site: the protocol's layer site (its per-layer state), for the scheme.
    """

    layer: str
    op: str
    fn: str
    a: torch.Tensor
    b: torch.Tensor
    params: Mapping[str, Any]
    step: int
    site: Any = None

    def tag(self, modulus: int | None = None) -> Tag:
        """The tag every request of this op carries (ledger, transcript, adversary triggers)."""
        return Tag(step=self.step, layer=self.layer, op=self.op, modulus=modulus)


@dataclass
class Encoded(Generic[Context]):
    """An op encoded for its workers: one request per worker, and what the scheme keeps to decode.

    ``requests`` are sent in their order (all before any answer is awaited); ``context`` never leaves
    the trusted side."""

    requests: dict[WorkerId, Request]
    context: Context


@dataclass(frozen=True)
class Check:
    """The outcome of one integrity check of one worker's answer.

    ``detail`` says what failed and on whose answer (``Freivalds check failed on the mask worker's result
    (matmul mod p)``); the pipeline adds the layer, the op and the step."""

    passed: bool
    detail: str = ""


class Rejected(Exception):
    """Raised by :meth:`Scheme.decode` when an input it needs fails its integrity (the pipeline turns it
    into an :class:`~blindtrain.errors.IntegrityError` naming the layer, op and step)."""


@dataclass
class Replies:
    """The workers' answers to one :class:`Encoded`, by worker."""

    by_worker: dict[WorkerId, Response] = field(default_factory=dict)

    def __getitem__(self, worker: WorkerId) -> Response:
        return self.by_worker[worker]

    def __contains__(self, worker: WorkerId) -> bool:
        return worker in self.by_worker

    def result(self, worker: WorkerId = WorkerId()) -> torch.Tensor:
        """The tensor ``worker`` returned."""
        return self.by_worker[worker].result


class Scheme(ABC, Generic[Context]):
    """How one protocol computes ``f(A, B)`` with untrusted workers (see the module docstring).

    Every method gets the op and a :class:`Phases` clock: work inside ``with phases.use(category)``
    is attributed to that ledger category (``masking``, ``unmask_factor`` ...), the rest to the method's
    default (``encode`` for :meth:`encode`, ``decode_verify`` for :meth:`verify` and :meth:`decode`).
    """

    #: the modulus of a field scheme (tags carry it into the transcript); ``None`` for float schemes
    modulus: int | None = None

    @abstractmethod
    def encode(self, op: OffloadOp, phases: Phases) -> Encoded[Context]:
        """Requests for the workers, and the context to decode them."""

    @abstractmethod
    def verify(self, op: OffloadOp, replies: Replies, context: Context, phases: Phases) -> Iterator[Check]:
        """One :class:`Check` per verified answer, lazily (the pipeline stops at the first failure)."""

    @abstractmethod
    def decode(self, op: OffloadOp, replies: Replies, context: Context, phases: Phases) -> torch.Tensor:
        """``Y = f(A, B)`` from the verified answers."""
