"""Shared machinery of the field protocols (``otp``, ``slalom``): checks, counters, summary.

(A private module: :func:`blindtrain.protocols.load_all` skips names starting with ``_``.)
"""

from __future__ import annotations

import torch

from .. import bilinear as bilinear_fns
from ..errors import IntegrityError, UsageError
from ..field import codec, freivalds
from ..field.masks import PadStream
from ..field.modular import contraction_length

WIRE = torch.float32  # field elements < 2^24 and |W̃| < 2^23 are exact in float32
WIRE_BYTES = 4


def check_repetitions(k) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise UsageError(f"repetitions must be an integer, got {k!r}") from None
    if not 1 <= k <= 8:
        raise UsageError(f"repetitions must be between 1 and 8, got {k}")
    return k


class FieldOffload:
    """The masked-offload machinery both field protocols share (encode, pad, call, check, decode)."""

    def _setup_field(self) -> None:
        self.p = codec.check_modulus(self.settings["modulus"])
        self.k = check_repetitions(self.settings["repetitions"])
        self.pads = PadStream(self.runtime.rng, self.p)
        self.runtime.ledger.integrity_soundness_bits = freivalds.soundness_bits(self.k)
        self.both_private_ops = 0
        self.both_private_flops = 0
        self.offloaded_ops = 0
        self.exponents: dict[str, tuple[int, int]] = {}

    def _both_private(self, site, fn, a, b, params) -> torch.Tensor:
        with self.runtime.ledger.timed("both_private"):
            out = bilinear_fns.apply(fn, a, b, **params)
        self.both_private_ops += 1
        self.both_private_flops += 2 * out.numel() * contraction_length(fn, a.shape, b.shape, params)
        return out

    def _verify(self, site, op, fn, a_field, y, bs, s, params, *, who: str) -> None:
        ok = freivalds.check(fn, a_field, y, bs, s, self.p, params)
        self.runtime.ledger.record_check(passed=ok)
        if not ok:
            raise IntegrityError(layer=site.name, op=op, step=self.runtime.step,
                                 detail=f"Freivalds check failed on the {who}'s result ({fn} mod {self.p})")

    def field_summary(self) -> dict:
        return {"modulus": self.p, "freivalds_repetitions": self.k,
                "freivalds_set": f"[-2^19, 2^19] ({2 * freivalds.S_BOUND + 1} values)",
                "soundness_bits_per_check": freivalds.soundness_bits(self.k),
                "quantization": {"activations_weights": "round-to-nearest", "gradients": "stochastic rounding",
                                 "exponent": "per tensor, chosen so that no result wraps mod p (Cauchy-Schwarz)",
                                 "decoding": "centred representatives"},
                "offloaded_ops": self.offloaded_ops, "both_private_ops_in_enclave": self.both_private_ops,
                "pads_drawn": self.pads.drawn, "pad_elements": self.pads.elements,
                "pads_all_distinct": self.pads.all_distinct}
