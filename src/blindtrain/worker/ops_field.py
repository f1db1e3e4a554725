"""Worker instructions for prime-field arithmetic (generic: no protocol names)."""

from __future__ import annotations

from ..field.codec import element_dtype
from ..field.engine import engine_for
from .ops import instruction


@instruction("bilinear_mod")
def _bilinear_mod(worker, args, params):
    """``f(A, B) mod p`` exactly on the worker's device with the field engine, as field elements
    (int64; int32 when p < 2^31).

    ``params``: ``fn`` (a :mod:`blindtrain.bilinear` name), ``modulus``, ``backend`` (``int8``:
    int8 limbs on ``torch._int_mm``, CUDA tensor cores on a GPU; ``float64``; ``auto``: measure)
    and ``fn``'s own parameters.
    """
    modulus = int(params["modulus"])
    fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus", "backend")}
    engine = engine_for(modulus, params.get("backend", "auto"))
    return engine.bilinear(params["fn"], args["A"], args["B"], fn_params).to(element_dtype(modulus))
