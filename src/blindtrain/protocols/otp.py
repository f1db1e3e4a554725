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

import torch

from ..boundary import Request, Sent, Tag
from ..errors import UsageError
from ..field import codec, freivalds
from ._field import FieldOffload
from .base import Protocol, ProtocolInfo, register

UNMASK_MODES = ("enclave", "mask-worker")


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
    options = {"unmask": "enclave", "modulus": codec.DEFAULT_MODULUS, "repetitions": 2, "weight_bits": 24,
               "field_backend": "auto"}

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        if self.settings["unmask"] not in UNMASK_MODES:
            raise UsageError(f"--unmask must be one of {', '.join(UNMASK_MODES)}, got {self.settings['unmask']!r}")
        self.unmask = self.settings["unmask"]
        self._setup_field()

    # -- the bilinear ops --------------------------------------------------------------------
    def bilinear(self, site, op, fn, a, b, *, roles, params):
        if roles != ("data", "weight") or fn not in freivalds.SUPPORTED:
            return self._both_private(site, fn, a, b, params)
        return self._masked(site, op, fn, a, b, params)

    def _masked(self, site, op, fn, a, b, params) -> torch.Tensor:
        runtime, ledger, p, engine = self.runtime, self.runtime.ledger, self.p, self.engine
        step, nonce = runtime.step, runtime.next_nonce()
        gradient = op != "forward"
        with ledger.timed("encode"):
            uniforms = None
            if gradient:  # stochastic rounding of gradients, from the enclave CSPRNG
                uniforms = torch.from_numpy(runtime.rng.uniform_float(tuple(a.shape),
                                                                     label=("sround", site.name, op, step, nonce)))
            encoded = codec.encode_scaled(fn, a, b, params, p, uniforms=uniforms, b_bits=self.weight_bits)
            self._record_bits(f"{site.name}.{op}", encoded)
            weights = encoded.qb.to(self.weight_wire_dtype)
        with ledger.timed("masking"):
            pad = self.pads.draw(encoded.qa.shape, layer=site.name, op=op, operand="A", step=step, nonce=nonce)
            masked = torch.remainder(encoded.qa + pad, p)  # |qa| ≤ (p−1)/2, pad < p: no int64 overflow
        tag = Tag(step=step, layer=site.name, op=op, modulus=p)
        factor = None
        if self.unmask == "enclave":
            with ledger.timed("unmask_factor"):
                factor = engine.bilinear(fn, pad, weights, params)
        with ledger.timed("encode"):
            wparams = self._worker_params(fn, self._worker_backend(fn, pad, weights, params), params)
        wire = self.element_dtype
        factor_reply = None
        if factor is None:
            factor_reply = runtime.call(Request("bilinear_mod", {"A": Sent(pad.to(wire), "pad"),
                                                                 "B": Sent(weights, "public")}, tag, wparams),
                                        role="mask")
        reply = runtime.call(Request("bilinear_mod", {"A": Sent(masked.to(wire), "masked"),
                                                      "B": Sent(weights, "public")}, tag, wparams))
        with ledger.timed("decode_verify"):
            s = freivalds.draw(runtime.rng, fn, weights.shape, self.k, label=("freivalds", site.name, op, step, nonce))
            bs = freivalds.contract_weight(fn, weights, s, engine)
            result = reply.result
            self._verify(site, op, fn, masked, result, bs, s, params, who="worker")
            if factor_reply is not None:
                factor = factor_reply.result
                self._verify(site, op, fn, pad, factor, bs, s, params, who="mask worker")
            out = encoded.decode(result.to(torch.int64) - factor.to(torch.int64), p)
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
