"""``slalom``: private and verified inference (Tramèr & Boneh, ICLR 2019).

The model is quantized once (weights ``W̃ = round(2^l_w·W)`` with ``weight_bits``
bits, a fixed per-layer exponent) and handed to the worker, which keeps it
(Slalom's model is public to the untrusted host; only the inputs are private).

Offline phase (per layer, the first time a batch shape reaches it, and again
whenever its pool runs dry): for the next ``precompute`` batches the enclave draws
pads ``R_i`` from a ChaCha20 stream keyed in the enclave and computes the unmask
factors ``U_i = f(R_i, W̃) mod p``; each ``U_i`` is sealed with AES-256-GCM (key in
enclave memory only; associated data = layer, shape, index) and stored *outside*
the enclave, as files in an untrusted directory (``store_dir``; a temporary one by
default).  The pads are not stored: the enclave regenerates ``R_i`` from the same
keyed stream online.

Online, per batch and layer: re-quantize the input ``X̃ = round(2^l_x·X)`` (the
exponent chosen per batch so that nothing wraps mod p), send ``X̃ + R_i`` (kind
``masked``), receive ``Y' = f(X̃ + R_i, W̃) mod p``, verify it with Freivalds using the
precomputed ``W̃·s`` (Slalom's cheaper check: the enclave never touches ``W̃`` online),
unseal and consume ``U_i`` exactly once (a missing, modified, swapped or replayed
factor is an integrity violation), decode ``Y = centred(Y' − U_i)·2^-(l_x+l_w)``, and run
the bias and the nonlinearity in the enclave.  Batches smaller than the pool's
shape are zero-padded to it.  ``runtime.step`` counts inference batches.

Training is impossible: the unmask factors need fixed weights.

Products mod p run on the field engine (:mod:`blindtrain.field.engine`; p = 2^61 − 1 by default,
``modulus`` selects another prime below 2^61); the weights are ``weight_bits`` = 16 signed bits
(int16, two int8 limbs), the inputs take the remaining ≈ 60 − log2(K) − 16 bits; unmask factors are
sealed as int64.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..boundary import Ref, Request, Sent, Tag
from ..crypto import Csprng
from ..errors import UsageError
from ..field import codec, freivalds
from ..field.store import FactorUnavailable, SealedFactorStore
from ..pipeline import Check, Encoded, OffloadOp, Phases, Rejected, Replies, Scheme, WorkerId
from .base import Protocol, ProtocolInfo, register
from .options import SlalomOptions
from ._field import FieldOffload

MAIN = WorkerId("main")


@dataclass
class PrecomputedContext:
    """What the enclave keeps of one online slalom op.

    Attributes:
        batch: the true batch size ``b`` (the operand is zero-padded to the pool's batch ``b_pool ≥ b``).
        masked: ``X̃ + R_i mod p`` as sent, ``(b_pool, ...)``.
        exponent: ``l_x + l_w``, the decoded result's fixed-point exponent.
        index: ``i``, the pool entry whose pad ``R_i`` masked ``X̃`` and whose sealed ``U_i`` unmasks it.
        out_shape: ``U_i``'s shape (``f``'s output on the pool's batch).
    """

    batch: int
    masked: torch.Tensor
    exponent: int
    index: int
    out_shape: tuple


class PrecomputedScheme(Scheme[PrecomputedContext]):
    """slalom's online scheme for ``Y = f(X, W̃)`` with ``W̃`` held by the worker (handle) and ``U_i =
    f(R_i, W̃)`` precomputed and sealed outside the enclave.

    encode: ``X̃ + R_i mod p`` (kind ``masked``), ``R_i`` regenerated from the keyed stream.  verify:
    Freivalds with the precomputed ``W̃·s``.  decode: unseal ``U_i`` (once; a missing, modified or replayed
    one is :class:`Rejected`), ``Y = centred(Y' − U_i)·2^-(l_x+l_w)``, the first ``b`` rows."""

    def __init__(self, protocol: "Slalom") -> None:
        self.protocol = protocol
        self.modulus = protocol.p

    def encode(self, op: OffloadOp, phases: Phases) -> Encoded[PrecomputedContext]:
        slalom, site, p, a = self.protocol, op.site, self.protocol.p, op.a
        st = site.state
        shape, batch = st["pool_shape"], a.shape[0]
        if batch < shape[0]:
            a = torch.cat([a, a.new_zeros((shape[0] - batch, *a.shape[1:]))])
        encoded = codec.encode_pair(op.fn, a, st["qb"], op.params, p, b_exponent=st["lb"])
        slalom._record_bits(op.layer, encoded)
        index, out_shape = st["queue"].pop(0)
        with phases.use("masking"):
            pad_np = slalom._online_pads.uniform_mod(shape, p, label=("slalom-pad", op.layer, index))
            slalom.pads.record(pad_np)
            pad = torch.from_numpy(pad_np)
            masked = torch.remainder(encoded.qa + pad, p)
        wparams = slalom._worker_params(op.fn, slalom._worker_backend(op.fn, pad, st["qb"], op.params), op.params)
        request = Request("bilinear_mod", {"A": Sent(masked.to(slalom.element_dtype), "masked"),
                                           "B": Ref(st["handle"])}, op.tag(p), wparams)
        return Encoded({MAIN: request}, PrecomputedContext(batch, masked, encoded.la + encoded.lb, index, out_shape))

    def verify(self, op: OffloadOp, replies: Replies, context: PrecomputedContext,
               phases: Phases) -> Iterator[Check]:
        st = op.site.state
        yield self.protocol.freivalds_check(op.fn, context.masked, replies.result(MAIN), st["bs"], st["s"],
                                            op.params, who="worker")

    def decode(self, op: OffloadOp, replies: Replies, context: PrecomputedContext, phases: Phases) -> torch.Tensor:
        with phases.use("unmask_factor"):
            try:
                factor = self.protocol.store.take(context.index, op.layer, context.out_shape)
            except FactorUnavailable as exc:
                raise Rejected(str(exc)) from None
        result = replies.result(MAIN)
        return codec.decode(result.to(torch.int64) - factor, context.exponent, self.protocol.p)[:context.batch]


@register
class Slalom(FieldOffload, Protocol):
    info = ProtocolInfo(
        name="slalom",
        source="Tramèr & Boneh, ICLR 2019",
        trains=False,
        private="inputs and activations (one-time pads in F_p, information-theoretic); NOT the model",
        integrity="Freivalds over F_p with precomputed W·s on every offloaded result (k=2: ~40 bits per check)",
        leaks="the worker holds the quantized model in the clear; batch shapes and timing",
        summary="Slalom is an inference protocol: its unmask factors are precomputed for fixed weights, "
                "so it cannot train",
    )
    weights_per_call = False
    copy_refusal = ("slalom encodes each layer's weights once, at prepare(), so a copy with other weights would be computed with the original's")
    Options = SlalomOptions
    tolerance = 1e-3  # fixed point: 16-bit weights
    transcript_kinds = {"main": frozenset({"masked", "public"})}
    verifies_results = True

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        self._setup_field()
        self.scheme = PrecomputedScheme(self)
        self.precompute = self.opts.precompute
        rng = runtime.rng
        pad_key = rng.random_bytes(32, label=("slalom", "pad-key", runtime.next_nonce()))
        self._offline_pads = Csprng(pad_key)  # offline: pads to compute U_i
        self._online_pads = Csprng(pad_key)   # online: the same pads regenerated, each label once
        self.store = SealedFactorStore(rng.random_bytes(32, label=("slalom", "seal-key", runtime.next_nonce())),
                                       self.settings["store_dir"])
        self._factor_index = 0
        self.batches = 0
        self.offline_seconds = 0.0
        self.weight_exponents: dict[str, int] = {}
        self.weight_upload_bytes = 0

    # -- set-up: quantize the model, hand it to the worker, precompute W̃·s ----------------------
    def wrap(self, model, optimizer):
        if optimizer is not None:
            raise UsageError("slalom is an inference protocol (Tramèr & Boneh): it cannot train; train with "
                             "otp or tempo and run `blindtrain predict --protocol slalom --checkpoint FILE`")
        model, _ = super().wrap(model, None)
        runtime = self.runtime
        for site in self.sites:
            if site.kind not in ("linear", "conv2d"):
                continue
            weight = site.module.weight.detach()
            layout = weight.t() if site.kind == "linear" else weight
            fn = "matmul" if site.kind == "linear" else "conv2d"
            lb = codec.weight_exponent(weight, self.weight_bits)
            qb = codec.quantize(layout, lb).to(self.weight_wire_dtype).contiguous()
            s = freivalds.draw(runtime.rng, fn, qb.shape, self.k, label=("freivalds", site.name, "slalom"))
            handle = f"slalom/{site.name}/weight"
            self.weight_upload_bytes += qb.numel() * qb.element_size()
            runtime.call(Request("store", {"B": Sent(qb, "public")},
                                 Tag(step=runtime.step, layer=site.name, op="forward", modulus=self.p),
                                 keep={"B": handle}))
            site.state.update(fn=fn, lb=lb, qb=qb, s=s, bs=freivalds.contract_weight(fn, qb, s, self.engine),
                              handle=handle, version=site.module.weight._version, queue=[], pool_shape=None)
            self.weight_exponents[site.name] = lb
        model.register_forward_pre_hook(self._next_batch)
        return model, None

    def _next_batch(self, module, args) -> None:
        self.runtime.step = self.batches  # inference batch number (tags, adversary triggers)
        self.batches += 1

    # -- offline phase ----------------------------------------------------------------------------
    def _refill(self, site, shape) -> None:
        st, start = site.state, time.perf_counter()
        with self.runtime.ledger.timed("unmask_factor"):
            for _ in range(self.precompute):
                index = self._factor_index
                self._factor_index += 1
                pad = torch.from_numpy(self._offline_pads.uniform_mod(shape, self.p,
                                                                      label=("slalom-pad", site.name, index)))
                factor = self.engine.bilinear(st["fn"], pad, st["qb"], site.conv_params)
                self.store.put(index, site.name, factor)
                st["queue"].append((index, tuple(factor.shape)))
        self.offline_seconds += time.perf_counter() - start

    # -- online phase -----------------------------------------------------------------------------
    def bilinear(self, site, op, fn, a, b, *, roles, params):
        if roles != ("data", "weight") or "qb" not in site.state:
            return self._both_private(site, fn, a, b, params)
        if op != "forward":
            raise UsageError("slalom is an inference protocol: it has no backward pass")
        st, runtime = site.state, self.runtime
        if site.module.weight._version != st["version"]:
            raise UsageError(f"the weights of layer {site.name!r} changed after slalom quantized them")
        batch = a.shape[0]
        shape = st["pool_shape"]
        if shape is None or batch > shape[0] or tuple(a.shape[1:]) != tuple(shape[1:]):
            shape = st["pool_shape"] = tuple(a.shape)
            st["queue"].clear()
        if not st["queue"]:
            self._refill(site, shape)
        out = self.pipeline.run(self.scheme, OffloadOp(layer=site.name, op=op, fn=fn, a=a, b=st["qb"], params=params,
                                                       step=runtime.step, site=site))
        self.offloaded_ops += 1
        return out.to(torch.float32)

    # -- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict:
        return {"options": dict(self.settings),
                **self.field_summary(), "weight_bits": self.weight_bits, "weight_exponents": self.weight_exponents,
                "inference_batches": self.batches,
                "weight_upload_bytes": self.weight_upload_bytes, "precompute_per_refill": self.precompute,
                "unmask_factors_sealed": self.store.sealed, "unmask_factors_consumed": self.store.taken,
                "sealed_bytes": self.store.bytes_written, "offline_seconds": self.offline_seconds,
                "factor_store": f"AES-256-GCM blobs in {self.store.directory} (outside the enclave; key in "
                                f"enclave memory only; each factor consumed once)"}

    def cost_model(self, ops, *, batch, input_numel, classes, training=False):
        from ..costs import StepCost

        cost = StepCost(workers=1, trust="the worker holds the quantized model; inputs hidden by one-time pads")
        for op in ops:
            if op.op != "forward":
                continue
            if op.roles == ("data", "weight") and op.fn in freivalds.SUPPORTED:
                a, out = op.numel("A"), op.numel("out")
                element_bytes, _ = self.wire_bytes()
                cost.bytes_to_worker += a * element_bytes
                cost.bytes_from_worker += out * element_bytes
                cost.round_trips += 1
                cost.worker_flops += op.flops
                cost.enclave_flops += op.flops * self.k / max(freivalds.channels(op.fn, op.b_shape), 1)
                cost.enclave_elementwise += 4 * a + (3 + 2 * self.k) * out
            else:
                cost.enclave_flops += op.flops
        cost.notes += ["inference batch; the quantized weights cross once, at set-up (summary: weight_upload_bytes)",
                       "offline phase (not per batch): one f(r, W) per layer and future batch, sealed outside"]
        return cost

    def close(self) -> None:
        self.store.close()
