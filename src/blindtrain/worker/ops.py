"""The worker's instruction set: a registry of small, protocol-agnostic instructions.

Each instruction is ``fn(worker, args, params) -> Tensor | None`` where ``args`` maps
names to tensors already on the worker's device (sent now or held by handle).
Protocols compose these; the worker never knows which protocol drives it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import bilinear

INSTRUCTIONS: dict[str, Callable] = {}


def load_all() -> dict[str, Callable]:
    """Import every ``blindtrain.worker.ops_*`` module (more instructions register themselves there)."""
    import importlib
    import pkgutil

    from .. import worker as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("ops_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    return INSTRUCTIONS


def instruction(name: str, *, screens_results: bool = False):
    """Register a worker instruction under ``name``.

    ``screens_results``: the instruction passes each product it computes through
    :meth:`Worker.screen` itself (with that product's op), instead of the worker screening the
    one returned result under the request's tag."""

    def register(fn):
        if name in INSTRUCTIONS:
            raise ValueError(f"worker instruction {name!r} registered twice")
        fn.screens_results = screens_results
        INSTRUCTIONS[name] = fn
        return fn

    return register


@instruction("bilinear")
def _bilinear(worker, args, params):
    """``f(A, B)`` for ``params["fn"]``; with ``params["modulus"]`` = p, exact in float64 then mod p."""
    a, b = args["A"], args["B"]
    modulus = params.get("modulus")
    fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus")}
    if modulus is None:
        return bilinear.apply(params["fn"], a, b, **fn_params)
    result = bilinear.apply(params["fn"], a.to(torch.float64), b.to(torch.float64), **fn_params)
    return torch.remainder(result, float(modulus))


@instruction("bilinear_products", screens_results=True)
def _bilinear_products(worker, args, params):
    """Several products ``f(A, B)`` in one message (see :func:`blindtrain.boundary.bilinear_products`).

    Each entry of ``params["products"]`` names its ``fn``, its operands ``A`` and ``B`` (argument
    names), its ``params``, its ``op`` and, optionally, ``keep``: a handle under which the product
    stays on the worker, and ``scale``: ``{"operand", "rows", "cols"}`` (argument names), that operand
    multiplied by ``rows ⊗ cols`` along its first two dimensions first.  The one product without
    ``keep`` (if any) is returned."""
    returned = None
    for spec in params["products"]:
        operands = {"A": args[spec["A"]], "B": args[spec["B"]]}
        if spec.get("scale"):
            scale = spec["scale"]
            operand = operands[scale["operand"]]
            shape = [1] * operand.dim()
            rows = args[scale["rows"]].reshape(-1, *shape[1:])
            cols = args[scale["cols"]].reshape(1, -1, *shape[2:])
            operands[scale["operand"]] = operand * rows * cols
        result = bilinear.apply(spec["fn"], operands["A"], operands["B"], **spec["params"])
        result = worker.screen(result, op=spec["op"])
        if spec.get("keep"):
            worker.state[spec["keep"]] = result
        else:
            returned = result
    return returned


@instruction("store")
def _store(worker, args, params):
    """Keep the arguments (via ``Request.keep``); returns nothing."""
    return None


@instruction("fetch")
def _fetch(worker, args, params):
    """Return a held tensor (``args["X"]``, usually a :class:`Ref`)."""
    return args["X"]


@instruction("free")
def _free(worker, args, params):
    """Drop held tensors named in ``params["handles"]``."""
    for handle in params["handles"]:
        worker.state.pop(handle, None)
    return None


@instruction("axpy")
def _axpy(worker, args, params):
    """In place: ``state[target] = alpha * state[target] + sum_i beta_i * args[name_i]``.

    ``params = {"target": handle, "alpha": float, "terms": [[name, beta], ...]}``.
    Linear updates (SGD, momentum, weight decay) applied to tensors the worker holds.
    """
    target = worker.state[params["target"]]
    target.mul_(params.get("alpha", 1.0))
    for name, beta in params["terms"]:
        target.add_(args[name], alpha=beta)
    return None
