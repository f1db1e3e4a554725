"""``otp``: one-time-pad blinding extended to training (``seeds/001_af587737009674ef.txt``,
Slalom extended to training), every offloaded result verified with Freivalds.

Per offloaded op ``f(X, W)`` whose second operand is a weight (Linear / Conv2d
forward and input gradient):

1. encode: ``X̃ = round(2^l_x·X)`` (stochastic rounding for gradients), ``W̃ = round(2^l_w·W)``,
   exponents chosen so that ``f(X̃, W̃)`` cannot wrap mod p (:mod:`blindtrain.field.codec`);
2. mask: a fresh one-time pad ``R`` uniform in F_p; the worker gets ``X̃ + R mod p``
   (transcript kind ``masked``) and ``W̃`` (kind ``public``: **the worker sees every weight**);
3. unmask factor ``U = f(R, W̃_t)``: it changes every step because ``W_t`` does.
   ``unmask=enclave`` (default): the enclave computes it, as costly as the op itself
   (ledger category ``unmask_factor``).  ``unmask=mask-worker``: a second worker (role
   ``mask``) that never sees ``X`` nor ``X + R`` computes it from the pad (kind ``pad``)
   and the weights; its transcript is recorded separately (``FILE.mask.npz``);
4. verify: Freivalds (``k`` repetitions, ``s ∈ [−2^19, 2^19]``) on the main worker's result
   and, with a mask worker, on ``U`` too; a failure raises :class:`IntegrityError`;
5. decode ``Y = centred(f(X̃+R, W̃) − U)·2^-(l_x+l_w)``.

All products mod p run on the field engine (:mod:`blindtrain.field.engine`): p = 2^61 − 1 by
default (``--modulus`` / option ``modulus``: any prime below 2^61; a smaller one is faster
and less precise), weights capped at ``weight_bits`` = 24 signed bits (int32 on the wire: four
int8 limbs; 16 bits = int16 = two limbs is twice as fast and about 2^-8 as precise), activations
and gradients take the remaining ≈ 60 − log2(K) − 24 bits.
``field_backend`` (auto, int8, float64) fixes the engine's back-end; ``auto`` measures.

Both-private products (the weight gradient ``Xᵀ·dY``, attention products) cannot
be offloaded to one worker under additive pads: they run in the enclave in float32
(category ``both_private``; counted in the summary).

What leaks: the worker holds the weights in the clear each step, so consecutive
weights reveal the (optimizer-transformed) gradients, and gradients can leak the
training data (gradient inversion).  Only the activations and activation
gradients of each message are hidden, information-theoretically.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..boundary import Request, Sent
from ..field import codec, freivalds
from ..pipeline import Check, Encoded, OffloadOp, Phases, Replies, Scheme, WorkerId
from ._field import FieldOffload
from .base import Protocol, ProtocolInfo, register
from .options import OtpOptions

UNMASK_MODES = OtpOptions.choices("unmask")
MAIN, MASK = WorkerId("main"), WorkerId("mask")


@dataclass
class MaskedContext:
    """What the enclave keeps of one masked op (never sent).

    Attributes:
        encoded: the fixed-point operands ``Ã = round(2^l_a·A)``, ``W̃ = round(2^l_w·W)`` and exponents.
        weights: ``W̃`` as sent (the weight wire dtype).
        masked: ``Ã + R mod p`` as sent to the main worker.
        pad: the one-time pad ``R``, uniform in F_p, ``Ã``'s shape.
        factor: ``U = f(R, W̃) mod p`` when the enclave computed it (``unmask=enclave``); else ``None``
            (the mask worker's answer).
        nonce: the op's session-unique nonce (labels of its Freivalds draw).
    """

    encoded: codec.ScaledEncoded
    weights: torch.Tensor
    masked: torch.Tensor
    pad: torch.Tensor
    factor: torch.Tensor | None
    nonce: int


class MaskedScheme(Scheme[MaskedContext]):
    """otp's scheme for ``Y = f(X, W)`` (``X`` private data, ``W`` a weight the worker may see).

    encode: ``X̃ + R mod p`` to the main worker (kind ``masked``) and ``W̃`` (``public``); with
    ``unmask=mask-worker`` also ``R`` (``pad``) and ``W̃`` to the mask worker — both requests in flight
    together.  verify: Freivalds on ``f(X̃+R, W̃)`` and, from a mask worker, on ``U = f(R, W̃)``.
    decode: ``Y = centred(f(X̃+R, W̃) − U)·2^-(l_x+l_w)`` (``Y``: ``f``'s output shape, e.g. ``(b, m)``)."""

    def __init__(self, protocol: "OneTimePad") -> None:
        self.protocol = protocol
        self.modulus = protocol.p

    def encode(self, op: OffloadOp, phases: Phases) -> Encoded[MaskedContext]:
        otp, runtime = self.protocol, self.protocol.runtime
        p, engine, fn, params = otp.p, otp.engine, op.fn, op.params
        nonce = runtime.next_nonce()
        uniforms = None
        if op.op != "forward":  # stochastic rounding of gradients, from the enclave CSPRNG
            uniforms = torch.from_numpy(runtime.rng.uniform_float(tuple(op.a.shape),
                                                                 label=("sround", op.layer, op.op, op.step, nonce)))
        encoded = codec.encode_scaled(fn, op.a, op.b, params, p, uniforms=uniforms, b_bits=otp.weight_bits)
        otp._record_bits(f"{op.layer}.{op.op}", encoded)
        weights = encoded.qb.to(otp.weight_wire_dtype)
        with phases.use("masking"):
            pad = otp.pads.draw(encoded.qa.shape, layer=op.layer, op=op.op, operand="A", step=op.step, nonce=nonce)
            masked = torch.remainder(encoded.qa + pad, p)  # |qa| ≤ (p−1)/2, pad < p: no int64 overflow
        factor = None
        if otp.unmask == "enclave":
            with phases.use("unmask_factor"):
                factor = engine.bilinear(fn, pad, weights, params)
        wparams = otp._worker_params(fn, otp._worker_backend(fn, pad, weights, params), params)
        tag, wire = op.tag(p), otp.element_dtype
        requests = {}
        if factor is None:
            requests[MASK] = Request("bilinear_mod", {"A": Sent(pad.to(wire), "pad"), "B": Sent(weights, "public")},
                                     tag, wparams)
        requests[MAIN] = Request("bilinear_mod", {"A": Sent(masked.to(wire), "masked"),
                                                  "B": Sent(weights, "public")}, tag, wparams)
        return Encoded(requests, MaskedContext(encoded, weights, masked, pad, factor, nonce))

    def verify(self, op: OffloadOp, replies: Replies, context: MaskedContext, phases: Phases) -> Iterator[Check]:
        otp = self.protocol
        s = freivalds.draw(otp.runtime.rng, op.fn, context.weights.shape, otp.k,
                           label=("freivalds", op.layer, op.op, op.step, context.nonce))
        bs = freivalds.contract_weight(op.fn, context.weights, s, otp.engine)
        yield otp.freivalds_check(op.fn, context.masked, replies.result(MAIN), bs, s, op.params, who="worker")
        if context.factor is None:
            yield otp.freivalds_check(op.fn, context.pad, replies.result(MASK), bs, s, op.params, who="mask worker")

    def decode(self, op: OffloadOp, replies: Replies, context: MaskedContext, phases: Phases) -> torch.Tensor:
        factor = context.factor if context.factor is not None else replies.result(MASK)
        result = replies.result(MAIN)
        return context.encoded.decode(result.to(torch.int64) - factor.to(torch.int64), self.protocol.p)


@register
class OneTimePad(FieldOffload, Protocol):
    info = ProtocolInfo(
        name="otp",
        source="seeds/001_af587737009674ef.txt (Slalom extended to training)",
        trains=True,
        private="activations and activation gradients, per message (one-time pads in F_p); NOT the model",
        integrity="Freivalds over F_p on every offloaded result (k=2, s in [-2^19, 2^19]: ~40 bits per check)",
        leaks="the worker sees every weight in the clear; consecutive weights reveal the gradients, and "
              "gradients can leak the training data; weight gradients (X^T dY) are computed in the enclave",
        summary="Linear/Conv2d forward and input gradient offloaded under fresh one-time pads mod p; unmask "
                "factors f(r, W_t) recomputed every step in the enclave (--unmask enclave) or by a mask worker "
                "that sees only pads (--unmask mask-worker)",
    )
    Options = OtpOptions
    tolerance = 1e-4  # fixed point: 24-bit weights, per-tensor exponents
    transcript_kinds = {"main": frozenset({"masked", "public"}), "mask": frozenset({"pad", "public"})}
    verifies_results = True

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        self.unmask = self.opts.unmask
        self._setup_field()
        self.scheme = MaskedScheme(self)

    # -- the bilinear ops --------------------------------------------------------------------
    def bilinear(self, site, op, fn, a, b, *, roles, params):
        if roles != ("data", "weight") or fn not in freivalds.SUPPORTED:
            return self._both_private(site, fn, a, b, params)
        return self._masked(site, op, fn, a, b, params)

    def _masked(self, site, op, fn, a, b, params) -> torch.Tensor:
        out = self.pipeline.run(self.scheme, OffloadOp(layer=site.name, op=op, fn=fn, a=a, b=b, params=params,
                                                       step=self.runtime.step, site=site))
        self.offloaded_ops += 1
        return out.to(a.dtype)

    # -- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict:
        return {"options": dict(self.settings), "unmask": self.unmask, **self.field_summary(),
                "privacy": self.info.leaks}

    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        from ..costs import StepCost

        used = ops if training else [op for op in ops if op.op == "forward"]
        cost = StepCost(workers=2 if self.unmask == "mask-worker" else 1,
                        trust="the worker sees the weights (and so the gradients); pads hide activations"
                              + ("; the mask worker must not collude with the main worker"
                                 if self.unmask == "mask-worker" else ""))
        for op in used:
            if op.roles == ("data", "weight") and op.fn in freivalds.SUPPORTED:
                a, b, out = op.numel("A"), op.numel("B"), op.numel("out")
                copies = 2 if self.unmask == "mask-worker" else 1
                element_bytes, weight_bytes = self.wire_bytes()
                cost.bytes_to_worker += copies * (a * element_bytes + b * weight_bytes)
                cost.bytes_from_worker += copies * out * element_bytes
                cost.round_trips += copies
                cost.worker_flops += copies * op.flops
                if self.unmask == "enclave":
                    cost.enclave_flops += op.flops  # f(r, W_t): as large as the op
                m = freivalds.channels(op.fn, op.b_shape)
                cost.enclave_flops += copies * op.flops * self.k / max(m, 1)  # Freivalds f(A, Bs)
                cost.enclave_elementwise += 4 * a + 2 * b + (2 + 2 * self.k * copies) * out
            else:
                cost.enclave_flops += op.flops  # both-private: in the enclave
        cost.notes.append(f"unmask={self.unmask}; both-private products (weight gradients) run in the enclave")
        return cost
