"""What a well-formed answer to a request looks like, worked out on the trusted side.

A worker's result is untrusted: before any protocol touches it, the boundary checks that it is
a tensor of the shape and dtype the request implies.  Shapes come from evaluating the requested
bilinear function on PyTorch's ``meta`` device (shapes only, no data, no arithmetic), and from a
shadow of the worker's held tensors (:class:`HeldShapes`): what was kept under which handle, with
which shape.  Any other instruction of the worker's registry is run on a *shadow* of the worker
whose tensors live on the ``meta`` device, which yields the result's shape and dtype without
computing anything; an instruction that cannot run there (it looks at values) is checked for
returning a numeric tensor only, and its protocol verifies the rest.
"""

from __future__ import annotations

from collections.abc import MutableMapping
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

    def meta(self) -> torch.Tensor:
        """A tensor of this shape and dtype on the ``meta`` device (no storage)."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")

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


class _MetaState(MutableMapping):
    """A worker's held tensors as ``meta`` tensors, made on first access from their specs (so a
    request touching two of a hundred held tensors costs two), with changes written back."""

    def __init__(self, specs: dict[str, TensorSpec]) -> None:
        self._specs = specs
        self._tensors: dict[str, torch.Tensor] = {}

    def __getitem__(self, handle: str) -> torch.Tensor:
        if handle not in self._tensors:
            self._tensors[handle] = self._specs[handle].meta()
        return self._tensors[handle]

    def __setitem__(self, handle: str, tensor) -> None:
        self._tensors[handle] = tensor
        self._specs[handle] = TensorSpec.of(tensor) if torch.is_tensor(tensor) else None

    def __delitem__(self, handle: str) -> None:
        del self._specs[handle]
        self._tensors.pop(handle, None)

    def __iter__(self):
        return iter(list(self._specs))

    def __len__(self) -> int:
        return len(self._specs)


class _ShadowWorker:
    """What a worker instruction sees of its worker, with every tensor on the ``meta`` device."""

    device = "meta"

    def __init__(self, state: MutableMapping) -> None:
        self.state = state

    def screen(self, result: torch.Tensor, *, op: str | None = None) -> torch.Tensor:
        return result


#: (instruction, operand specs, params, held specs) -> (result spec, held specs after): see HeldShapes._shadow
_SHADOW_MEMO: dict = {}


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
                from ..field.codec import element_dtype  # field elements: int64 (int32 when p < 2^31)

                fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus", "backend")}
                as_float = [TensorSpec(args[name].shape, torch.float64) for name in ("A", "B")]  # shapes only
                shape = bilinear_spec(params["fn"], *as_float, fn_params).shape
                result = TensorSpec(shape, element_dtype(int(params["modulus"])))
            elif request.instr == "bilinear_products":
                result = self._products(args, params["products"])
            elif request.instr == "fetch":
                result = args.get("X")
            elif request.instr == "free":
                for handle in params.get("handles", ()):
                    self._specs.pop(handle, None)
            elif request.instr != "store":
                result = self._shadow(request)
        except (ValueError, KeyError, TypeError):
            result = None  # an ill-formed request is the protocol's bug, not the worker's: leave it to them
        if request.keep_result:
            self._set(request.keep_result, result)
        return result

    def _shadow(self, request: Request) -> TensorSpec | None:
        """Run ``request``'s instruction on meta tensors (shapes only); mirror what it keeps and drops.

        The outcome depends only on the instruction, the operands' specs, the params and the held specs, so
        it is memoised on exactly those (a training step repeats the same requests every step)."""
        arg_specs = tuple((name, self.spec(arg)) for name, arg in sorted(request.args.items()))
        try:
            key = (request.instr, arg_specs, _freeze(request.params), frozenset(self._specs.items()))
            hash(key)
        except TypeError:  # unhashable params: no memo
            key = None
        if key is not None and key in _SHADOW_MEMO:
            result, self._specs = _SHADOW_MEMO[key]
            self._specs = dict(self._specs)
            return result
        result, specs = self._run_shadow(request, dict(arg_specs))
        if specs is not None:
            self._specs = specs
        if key is not None:
            if len(_SHADOW_MEMO) >= 4096:
                _SHADOW_MEMO.clear()
            _SHADOW_MEMO[key] = (result, dict(self._specs))
        return result

    def _run_shadow(self, request: Request, arg_specs: dict) -> tuple[TensorSpec | None, dict | None]:
        from ..worker.ops import INSTRUCTIONS, load_all

        load_all()
        instruction = INSTRUCTIONS.get(request.instr)
        if instruction is None or any(spec is None for spec in arg_specs.values()):
            return None, None
        args = {name: spec.meta() for name, spec in arg_specs.items()}
        specs = dict(self._specs)  # the shadow works on a copy: an instruction that fails changes nothing
        try:
            out = instruction(_ShadowWorker(_MetaState(specs)), args, request.params)
        except Exception:  # noqa: BLE001 - it needs values: no shape claimed
            return None, None
        return (TensorSpec.of(out) if torch.is_tensor(out) else None,
                {handle: spec for handle, spec in specs.items() if spec is not None})

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
