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


def bilinear_products(tag: Tag, products: list[dict]) -> Request:
    """One request for several bilinear products on the same worker (one message, one round trip).

    Each product: ``{"op": str, "fn": str, "A": Sent | Ref, "B": Sent | Ref, "params": dict,
    "keep": handle or None, "scale": optional}``.  A product with ``keep`` stays on the worker under that
    handle; the one without (at most one) is the request's result.  ``scale = {"operand": "A" | "B",
    "rows": Sent, "cols": Sent}``: the worker multiplies that operand by ``rows ⊗ cols`` (its first two
    dimensions) before the product.  An operand object given to several products crosses once.  The
    worker's adversary sees every product under its own ``op``."""
    args, specs, names_of = {}, [], {}
    returned = [p for p in products if not p.get("keep")]
    if len(returned) > 1:
        raise ValueError("at most one product of a request can be returned")

    def name(operand, default):
        if id(operand) not in names_of:  # (the products hold their operands: ids stay unique meanwhile)
            names_of[id(operand)] = default
            args[default] = operand
        return names_of[id(operand)]

    for index, product in enumerate(products):
        spec = {"op": product["op"], "fn": product["fn"], "params": dict(product.get("params", {})),
                "keep": product.get("keep"), **{operand: name(product[operand], f"{operand}{index}")
                                                for operand in ("A", "B")}}
        if product.get("scale"):
            scale = product["scale"]
            spec["scale"] = {"operand": scale["operand"], "rows": name(scale["rows"], f"rows{index}"),
                             "cols": name(scale["cols"], f"cols{index}")}
        specs.append(spec)
    return Request("bilinear_products", args, tag, params={"products": specs}, return_result=bool(returned))
