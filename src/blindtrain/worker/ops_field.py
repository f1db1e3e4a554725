"""Worker instructions for prime-field arithmetic (generic: no protocol names)."""

from __future__ import annotations

import torch

from ..field.modular import mod_bilinear
from .ops import instruction


@instruction("bilinear_mod")
def _bilinear_mod(worker, args, params):
    """``f(A, B) mod p`` exactly (float64 with limb splitting), returned as float32 (exact: p < 2^24).

    ``params``: ``fn`` (a :mod:`blindtrain.bilinear` name), ``modulus`` and ``fn``'s own parameters.
    """
    modulus = int(params["modulus"])
    fn_params = {k: v for k, v in params.items() if k not in ("fn", "modulus")}
    result = mod_bilinear(params["fn"], args["A"], args["B"], modulus, fn_params)
    return result.to(torch.float32)
