"""What a well-formed answer to a request looks like, worked out on the trusted side.

A worker's result is untrusted: before any protocol touches it, the boundary checks that it is
a tensor of the shape and dtype the request implies.  Shapes come from evaluating the requested
bilinear function on PyTorch's ``meta`` device (shapes only, no data, no arithmetic), and from a
shadow of the worker's held tensors (:class:`HeldShapes`): what was kept under which handle, with
which shape.  Instructions this module does not know (a protocol's own) are checked for being a
numeric tensor only; their protocol verifies the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .. import bilinear
from .messages import Ref, Request, Sent


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorSpec":
        return cls(tuple(tensor.shape), tensor.dtype)

    def describe(self) -> str:
        return f"{list(self.shape)} {str(self.dtype).removeprefix('torch.')}"


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@lru_cache(maxsize=4096)
def _bilinear_spec(fn: str, a: TensorSpec, b: TensorSpec, frozen_params) -> TensorSpec:
    params = {k: v for k, v in frozen_params}
    out = bilinear.apply(fn, torch.empty(a.shape, dtype=a.dtype, device="meta"),
                         torch.empty(b.shape, dtype=b.dtype, device="meta"), **params)
    return TensorSpec(tuple(out.shape), out.dtype)


def bilinear_spec(fn: str, a: TensorSpec, b: TensorSpec, params: dict) -> TensorSpec:
    """Shape and dtype of ``bilinear.apply(fn, a, b, **params)`` (``ValueError`` if it has none)."""
    try:
        return _bilinear_spec(fn, a, b, tuple(sorted((k, _freeze(v)) for k, v in params.items())))
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"{fn} is not defined on {a.describe()} and {b.describe()}: {exc}") from None


class HeldShapes:
    """The trusted side's record of the shapes of tensors a worker holds, by handle."""

    def __init__(self) -> None:
        self._specs: dict[str, TensorSpec] = {}

    def spec(self, arg) -> TensorSpec | None:
        if isinstance(arg, Sent):
            return TensorSpec.of(arg.tensor)
        if isinstance(arg, Ref):
            return self._specs.get(arg.handle)
        return None

    def expect(self, request: Request) -> TensorSpec | None:
        """The spec of the result ``request`` returns (``None``: unknown); updates the record as the
        worker will (kept operands and results, freed handles)."""
        args = {name: self.spec(arg) for name, arg in request.args.items()}
        for name, handle in request.keep.items():
            self._set(handle, args.get(name))
        params = request.params
        result: TensorSpec | None = None
        try:
            if request.instr == "bilinear" and args.get("A") and args.get("B"):
                fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus")}
                result = bilinear_spec(params["fn"], args["A"], args["B"], fn_params)
                if params.get("modulus") is not None:
                    result = TensorSpec(result.shape, torch.float64)
            elif request.instr == "bilinear_mod" and args.get("A") and args.get("B"):
                fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus")}
                result = TensorSpec(bilinear_spec(params["fn"], args["A"], args["B"], fn_params).shape,
                                    torch.float32)
            elif request.instr == "bilinear_products":
                result = self._products(args, params["products"])
            elif request.instr == "fetch":
                result = args.get("X")
            elif request.instr == "free":
                for handle in params.get("handles", ()):
                    self._specs.pop(handle, None)
        except (ValueError, KeyError, TypeError):
            result = None  # an ill-formed request is the protocol's bug, not the worker's: leave it to them
        if request.keep_result:
            self._set(request.keep_result, result)
        return result

    def _products(self, args: dict, products: list[dict]) -> TensorSpec | None:
        returned = None
        for spec in products:
            a, b = args.get(spec["A"]), args.get(spec["B"])
            out = None
            if a is not None and b is not None:
                if spec.get("scale"):
                    scale = spec["scale"]
                    scaled = a if scale["operand"] == "A" else b
                    dtype = scaled.dtype
                    for name in (scale["rows"], scale["cols"]):
                        if args.get(name) is not None:
                            dtype = torch.promote_types(dtype, args[name].dtype)
                    scaled = TensorSpec(scaled.shape, dtype)
                    a, b = (scaled, b) if scale["operand"] == "A" else (a, scaled)
                out = bilinear_spec(spec["fn"], a, b, spec.get("params", {}))
            if spec.get("keep"):
                self._set(spec["keep"], out)
            else:
                returned = out
        return returned

    def _set(self, handle: str, spec: TensorSpec | None) -> None:
        if spec is None:
            self._specs.pop(handle, None)
        else:
            self._specs[handle] = spec


def malformation(result, expected: TensorSpec | None, *, return_result: bool) -> str | None:
    """Why ``result`` is not a well-formed answer (``None`` when it is)."""
    if not return_result:
        return None
    if result is None:
        return None if expected is None else f"the worker returned no result (expected {expected.describe()})"
    if not torch.is_tensor(result):
        return f"the worker returned a {type(result).__name__}, not a tensor"
    if result.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32):
        return f"the worker returned a tensor of dtype {str(result.dtype).removeprefix('torch.')}"
    if expected is None:
        return None
    if tuple(result.shape) != expected.shape or result.dtype != expected.dtype:
        return f"expected a {expected.describe()} result, got {TensorSpec.of(result).describe()}"
    return None
