"""Shared machinery of the field protocols (``otp``, ``slalom``): the engine, checks, counters, summary.

(A private module: :func:`blindtrain.protocols.load_all` skips names starting with ``_``.)

Wire format: field elements (masked operands, pads, results, unmask factors) as int64 (int32 when
p < 2^31: :func:`~blindtrain.field.codec.element_dtype`); weights as ``weight_bits``-bit signed
integers (int16 up to 16 bits: :func:`~blindtrain.field.codec.weight_dtype`), which the engine
splits into int8 limbs straight from their bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .. import bilinear as bilinear_fns
from ..field import codec, freivalds
from ..field.engine import FieldEngine
from ..field.masks import PadStream
from ..field.modular import contraction_length
from ..pipeline import Check, Pipeline

@dataclass(frozen=True)
class OperandBits:
    """What one op's fixed-point encoding used: exponents and signed bits of each operand."""

    la: int
    lb: int
    a_bits: int
    b_bits: int


class FieldOffload:
    """The masked-offload machinery both field protocols share (engine, pads, checks, reporting)."""

    def _setup_field(self) -> None:
        # validated once, by the protocol's FieldOptions (modulus, ranges, fit in the modulus, back-end)
        self.p, self.k, self.weight_bits = self.opts.modulus, self.opts.repetitions, self.opts.weight_bits
        self.engine = FieldEngine(self.p, backend=self.opts.field_backend)
        self.element_dtype = codec.element_dtype(self.p)
        self.weight_wire_dtype = codec.weight_dtype(self.weight_bits)
        self.pads = PadStream(self.runtime.rng, self.p)
        self.pipeline = Pipeline(self.runtime)
        self.runtime.ledger.integrity_soundness_bits = freivalds.soundness_bits(self.k)
        self.both_private_ops = 0
        self.both_private_flops = 0
        self.offloaded_ops = 0
        self.operand_bits: dict[str, OperandBits] = {}
        self.worker_backends: Counter = Counter()

    @property
    def exponents(self) -> dict[str, tuple[int, int]]:
        return {name: (bits.la, bits.lb) for name, bits in self.operand_bits.items()}

    def _record_bits(self, name: str, encoded: codec.Encoded) -> None:
        self.operand_bits[name] = OperandBits(encoded.la, encoded.lb, encoded.a_bits, encoded.b_bits)

    def _worker_backend(self, fn, a, b, params) -> str:
        """The back-end the worker is told to use: the option if fixed; int8 (tensor cores) on CUDA; on a
        CPU worker, the one the enclave's engine measured faster for this shape class."""
        if self.engine.backend != "auto":
            return self.engine.backend
        if str(self.runtime.worker_device).startswith("cuda"):
            return "int8"
        return self.engine.choose(fn, a, b, params)

    def _worker_params(self, fn, backend, params) -> dict:
        self.worker_backends[(fn, backend)] += 1
        return {"fn": fn, "modulus": self.p, "backend": backend, **params}

    def _both_private(self, site, fn, a, b, params) -> torch.Tensor:
        with self.runtime.ledger.timed("both_private"):
            out = bilinear_fns.apply(fn, a, b, **params)
        self.both_private_ops += 1
        self.both_private_flops += 2 * out.numel() * contraction_length(fn, a.shape, b.shape, params)
        return out

    def freivalds_check(self, fn, a_field, y, bs, s, params, *, who: str) -> Check:
        """Freivalds over F_p on ``y = f(a_field, B) mod p`` given ``B·s`` (``bs``) and ``s``: the
        pipeline counts it and, if it fails, raises an ``IntegrityError`` naming the layer, op and step."""
        ok = freivalds.check(fn, a_field, y, bs, s, self.engine, params)
        return Check(passed=ok, detail="" if ok else f"Freivalds check failed on the {who}'s result ({fn} mod {self.p})")

    def wire_bytes(self) -> tuple[int, int]:
        """Bytes per element of field elements and of weights on the wire."""
        return (torch.empty(0, dtype=self.element_dtype).element_size(),
                torch.empty(0, dtype=self.weight_wire_dtype).element_size())

    def field_summary(self) -> dict:
        worker: dict[str, dict[str, int]] = {}
        for (fn, backend), count in sorted(self.worker_backends.items()):
            worker.setdefault(fn, {})[backend] = count
        return {"modulus": self.p, "modulus_bits": self.p.bit_length(), "freivalds_repetitions": self.k,
                "freivalds_set": f"[-2^19, 2^19] ({2 * freivalds.S_BOUND + 1} values)",
                "soundness_bits_per_check": freivalds.soundness_bits(self.k),
                "quantization": {"activations_weights": "round-to-nearest", "gradients": "stochastic rounding",
                                 "exponent": "otp: per row (sample) of the data, per tensor for the weight; "
                                             "slalom: per tensor; chosen so that no result wraps mod p (Cauchy-Schwarz)",
                                 "weight_bits_cap": self.weight_bits, "decoding": "centred representatives"},
                "operand_bits": {name: {"A": bits.a_bits, "B": bits.b_bits, "exponents": [bits.la, bits.lb]}
                                 for name, bits in self.operand_bits.items()},
                "wire_dtypes": {"field_elements": str(self.element_dtype).replace("torch.", ""),
                                "weights": str(self.weight_wire_dtype).replace("torch.", "")},
                "field_engine": {"enclave": self.engine.report(), "worker_backends": worker},
                "offloaded_ops": self.offloaded_ops, "both_private_ops_in_enclave": self.both_private_ops,
                "pads_drawn": self.pads.drawn, "pad_elements": self.pads.elements,
                "pads_all_distinct": self.pads.all_distinct}
