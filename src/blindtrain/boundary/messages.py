"""What crosses the boundary.

A :class:`Request` asks a worker to run one instruction of its registry
(``blindtrain.worker.ops``) on named arguments.  An argument is either a tensor
that crosses now (:class:`Sent`, with its transcript *kind*) or a :class:`Ref` to a
tensor the worker already holds from an earlier request.  The :class:`Tag` says
which step, layer and op the request serves; the boundary copies it into the
transcript.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Tag:
    """Where a request comes from: training step, layer name, op (``forward``, ``grad_input``, ...)."""

    step: int
    layer: str
    op: str
    modulus: int | None = None


@dataclass(frozen=True)
class Sent:
    """A tensor that crosses to the worker in this request, and what it is (transcript ``kind``)."""

    tensor: torch.Tensor
    kind: str


@dataclass(frozen=True)
class Ref:
    """A tensor the worker already holds, by handle."""

    handle: str


@dataclass
class Request:
    """One instruction for a worker.

    Attributes:
        instr: name of a worker instruction (``blindtrain.worker.ops.INSTRUCTIONS``).
        args: named operands, each :class:`Sent` or :class:`Ref`.
        params: plain-data parameters (ints, floats, strings, tuples).
        tag: provenance for the ledger and the transcript.
        keep: ``{arg_name: handle}`` — the worker stores these operands under the handles.
        keep_result: store the result under this handle instead of (or as well as) returning it.
        return_result: whether the result travels back.
    """

    instr: str
    args: dict[str, Sent | Ref]
    tag: Tag
    params: dict[str, Any] = field(default_factory=dict)
    keep: dict[str, str] = field(default_factory=dict)
    keep_result: str | None = None
    return_result: bool = True

    def sent_tensors(self) -> list[tuple[str, Sent]]:
        return [(name, arg) for name, arg in self.args.items() if isinstance(arg, Sent)]


@dataclass
class Response:
    """A worker's answer: the result (if asked for) and the worker's own compute time."""

    result: torch.Tensor | None
    worker_seconds: float


def tensor_bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
