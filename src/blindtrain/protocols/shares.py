"""``shares``: additive secret sharing over F_p across two share workers S0, S1 and a dealer D (Goten, Ng et
al., AAAI 2021), with integrity.  **S0, S1 and D must not collude: any two of them together learn the
inputs, labels' gradients and weights.**

Every bilinear op ``Y = f(X, B)`` (Linear / Conv2d forward, input gradient, weight gradient; attention
products) is a Beaver product (:mod:`.shares_beaver`): both operands are secret-shared, fresh for every op
and step; the dealer supplies the triple; S0 and S1 open masked differences to each other through the
enclave (:mod:`blindtrain.boundary.peer`: a relay, so one choke point counts and records it).

Fixed point (p = 2^61 − 1 by default):

* a layer's weight is shared once as ``W̃ = round(2^l_w·W)`` with ``l_w`` giving ``max|W̃| < 2^(weight_bits−1)``
  (``weight_bits`` = 32 by default) and stays on S0 / S1 as shares across steps;
* the data operand of an op against the weight gets exponent ``l_x`` such that a rigorous bound holds:
  ``|f(X̃, W̃)| ≤ max‖window(X̃)‖₂ · ‖W̃‖_F ≤ (p−1)/2``.  The enclave never sees ``W̃`` after sharing, so it
  tracks a bound on ``‖W̃‖_F`` instead: exact at sharing, then ``+ ‖dW̃‖_F`` per SGD step with
  ``‖dW̃‖_F ≤ ‖X̃'‖_F·‖G̃‖_F`` (×√(kh·kw) for Conv2d), O(activations).  No result can wrap mod p;
  decoding takes centred representatives and scales by ``2^-(l_x+l_w)``: the error is the codec's
  (round-to-nearest activations, stochastic rounding of gradients from the enclave CSPRNG).
* **SGD on the shares, exact (no truncation)**: the weight gradient is computed as
  ``dW̃ = f_w(X̃', G̃)`` with ``G̃ = sround(2^l_g·η·dY)`` and ``l_x' + l_g = l_w``: the product already has the
  weight's exponent and the learning rate folded in, so S_i applies ``[W̃]_i ← [W̃]_i − [dW̃]_i`` exactly in
  F_p (zero truncation error, zero failure probability).  The price: the learning rate must be known at
  backward time (it is read from the optimizer's group) and ``l_x' + l_g`` is bounded by ``l_w``
  (≈ 2·16 bits shared by X' and η·dY for the default weight_bits, each unbiased).
* Momentum, weight decay, Adam, any other optimizer: **in the enclave**.  The weight gradient is
  reconstructed (verified), the optimizer updates the plaintext weight in the enclave, and the weight is
  re-shared with fresh shares and its projections recomputed: O(weights) enclave work per step, reported
  (``layers_updated_in_enclave``, ledger category ``masking``).  Momentum / weight decay on the shares
  would need a truncation of shared values, which this version does not do.

Integrity (:mod:`.shares_verify`): every reconstructed result is checked with Freivalds over F_p
(k = 2 repetitions, ``(2^20+1)^-2`` ≈ 2^-40 per check), against tracked weight projections kept current
incrementally for the SGD path (O(activations) per step).  A tampered result share, opened difference
or triple fails the check of the op it feeds; a tampered weight share or weight update fails the next
check that uses the weight (and ``materialize`` / ``state_dict`` checks the reconstructed weight against
the projections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import bilinear as bilinear_fns
from ..boundary import Ref, Request, Tag
from ..boundary.peer import PeerChannel
from ..errors import IntegrityError, UsageError
from ..field import codec, freivalds
from ..field.engine import FieldEngine
from .base import Protocol, ProtocolInfo, register
from .options import SharesOptions
from .shares_beaver import (DEALER, SHARE_ROLES, BeaverOp, HeldOperand, SharedOperand, beaver_product,
                            reconstruct, share_operand)
from .shares_narrow import NarrowEngine
from .shares_grad import SealedGrad, is_sealed
from .shares_codec import encode_against_weight, encode_pair, frobenius, log2_or_zero
from .shares_verify import (WEIGHT_FNS, Projections, check_data, check_weighted, draw_vectors,
                            gradient_projections, project_weight, weight_operand)




@dataclass
class ShareLayer:
    """One weighted layer's state in the enclave: O(activations + projections), never the weight's shares."""

    site: object
    param: torch.nn.Parameter
    handle: str
    resident: bool
    version: int | None = None
    exponent: int = 0
    norm_bound: float = 0.0  # bound on ‖W̃‖_F (integers)
    projections: Projections | None = None
    pending: dict | None = None  # SGD update awaiting optimizer.step(): projections, norm, lr
    shares_made: int = 0

    @property
    def kind(self) -> str:
        return self.site.kind


@dataclass
class Counters:
    offloaded_ops: int = 0
    reshares: int = 0
    resident_updates: int = 0
    min_data_bits: dict = field(default_factory=dict)


def _out_shape(fn, a_shape, b_shape, params) -> tuple:
    a = torch.empty(a_shape, dtype=torch.float64, device="meta")
    b = torch.empty(b_shape, dtype=torch.float64, device="meta")
    return tuple(bilinear_fns.apply(fn, a, b, **params).shape)


@register
class Shares(Protocol):
    info = ProtocolInfo(
        name="shares",
        source="Goten (Ng et al., AAAI 2021), with Freivalds integrity over F_p",
        trains=True,
        private="inputs, labels, activations, gradients and weights: every message is a fresh additive share "
                "(or a masked difference) uniform over F_p; needs S0, S1 and the dealer NOT to collude",
        integrity="Freivalds over F_p on every reconstructed result (k=2, s in [-2^19, 2^19]: ~40 bits per check); "
                  "weight projections tracked incrementally",
        leaks="nothing to any single worker (information-theoretic); any two of S0, S1, dealer together learn "
              "everything; message sizes and timing reveal the architecture and batch size",
        summary="Beaver products on two share workers and a dealer; openings relayed through the enclave; "
                "weights held as shares and updated there for plain SGD (exact); other optimizers in the enclave",
    )
    Options = SharesOptions
    weights_per_call = False
    copy_refusal = ("shares keeps each offloaded weight as two shares on S0 and S1, so a copy would hold no "
                    "weights of its own")
    #: fixed point, exact products mod p.  The bound is set by the exact SGD-on-shares update: its two
    #: operands share the weight's ``weight_bits`` (≈ 16 bits each), and a weight-gradient element sums
    #: ``b·positions`` rounded products: relative error ≈ √(b·positions)·2^-16 (≈ 1.7e-4 on the conformance
    #: suite's conv layer, 144 terms; forward and input gradient stay near 1e-5)
    tolerance = 5e-4
    transcript_kinds = {"s0": frozenset({"share"}), "s1": frozenset({"share"}), "dealer": frozenset({"share"})}
    adversary_roles = ("s0", "s1", "dealer")
    verifies_results = True

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        self.p, self.k, self.weight_bits = self.opts.modulus, self.opts.repetitions, self.opts.weight_bits
        if runtime.transport == "dist":
            raise UsageError("protocol 'shares' runs on transports inproc and process (dist: not yet)")
        backend = self.backend = self.opts.field_backend
        # the enclave's products are all narrow (k = repetitions columns): 21-bit digits on float64 BLAS
        self.engine = NarrowEngine(FieldEngine(self.p, backend=backend))
        self.channel = PeerChannel(runtime)
        self.layers: dict[str, ShareLayer] = {}
        self.optimizer = None
        self.counters = Counters()
        runtime.ledger.integrity_soundness_bits = freivalds.soundness_bits(self.k)

    # -- wrapping ----------------------------------------------------------------------------
    def wrap(self, model, optimizer):
        uses = {}
        for _, param in model.named_parameters(remove_duplicate=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
        model, optimizer = super().wrap(model, optimizer)
        self.optimizer = optimizer
        for site in self.sites:
            if site.kind == "matmul":
                continue
            param = site.module.weight
            # a tied weight (used by another module too, e.g. an embedding) is updated in the enclave: the
            # other module reads the plaintext weight, which shares held on S0 / S1 would leave stale
            tied = uses.get(id(param), 1) > 1
            layer = ShareLayer(site, param, f"shares/{site.name}/w", resident=not tied and self._sgd_on_shares(param))
            self.layers[site.name] = layer
            site.state["shares"] = layer
            site.module.register_state_dict_pre_hook(lambda module, prefix, keep_vars: self.materialize())
        if optimizer is not None:
            optimizer.register_step_pre_hook(self._before_optimizer_step)
            optimizer.register_step_post_hook(self._after_optimizer_step)
        return model, optimizer

    def _group_of(self, param):
        if self.optimizer is None:
            return None
        groups = [g for g in self.optimizer.param_groups if any(p is param for p in g["params"])]
        return groups[0] if len(groups) == 1 else None

    def _sgd_on_shares(self, param) -> bool:
        """Plain SGD (no momentum, weight decay, Nesterov, maximize): the update runs on the shares (``update=auto``;
        its weights then get no ``.grad``: ``update=enclave`` keeps PyTorch's ``.grad`` for clipping and the like)."""
        if self.settings["update"] == "enclave" or type(self.optimizer) is not torch.optim.SGD:
            return False
        group = self._group_of(param)
        return bool(group) and not group.get("momentum") and not group.get("weight_decay") \
            and not group.get("nesterov") and not group.get("maximize")

    # -- weight shares -----------------------------------------------------------------------
    def _tag(self, site_name: str, op: str) -> Tag:
        return Tag(step=self.runtime.step, layer=site_name, op=op, modulus=self.p)

    def _ensure_shared(self, layer: ShareLayer) -> None:
        """(Re-)share the layer's plaintext weight if it changed in the enclave since (O(weights), rare on SGD)."""
        if layer.version == layer.param._version and layer.projections is not None:
            return
        runtime, p = self.runtime, self.p
        nonce = runtime.next_nonce()
        with runtime.ledger.timed("masking"):
            weight = layer.param.detach()
            wmax = float(weight.abs().max()) if weight.numel() else 0.0
            limit = 2 ** (self.weight_bits - 1) - 1
            layer.exponent = math.floor(math.log2(limit / wmax)) if wmax > 0 else self.weight_bits - 1
            q = codec.quantize(weight, layer.exponent).to(torch.int64)
            layer.norm_bound = max(frobenius(q), 1.0)
            shared = share_operand(runtime.rng, q, p, label=(layer.site.name, "weight", runtime.step, nonce))
            fwd, _ = WEIGHT_FNS[layer.kind]
            m = weight.shape[0]
            n = weight.shape[1]
            s_out = draw_vectors(runtime.rng, m, self.k, label=("shares-check", layer.site.name, "out", nonce))
            s_in = draw_vectors(runtime.rng, n, self.k, label=("shares-check", layer.site.name, "in", nonce))
            layer.projections = project_weight(layer.kind, codec.to_field(q, p), s_out, s_in, self.engine)
        tag = self._tag(layer.site.name, "share_weight")
        for party in (0, 1):
            self.channel.call(SHARE_ROLES[party], Request(
                "share_store", {"S": shared.arg(party)}, tag,
                {"handle": layer.handle, "shape": list(q.shape), "modulus": p}, return_result=False))
        layer.version = layer.param._version
        layer.shares_made += 1
        self.counters.reshares += 1

    # -- encoding ----------------------------------------------------------------------------
    def _uniforms(self, t: torch.Tensor, *label) -> torch.Tensor:
        return torch.from_numpy(self.runtime.rng.uniform_float(tuple(t.shape), label=("sround", *label)))

    def _encode_against_weight(self, fn, x, layer: ShareLayer, params, uniforms):
        return encode_against_weight(fn, x, p=self.p, weight_norm=layer.norm_bound,
                                     weight_shape=layer.site.weight_shape, params=params, uniforms=uniforms)

    def _encode_pair(self, fn, a, b, params, **kwargs):
        return encode_pair(fn, a, b, params, p=self.p, **kwargs)

    def _note_bits(self, name: str, q: torch.Tensor) -> None:
        bits = codec.magnitude_bits(q)
        if bits:
            self.counters.min_data_bits[name] = min(bits, self.counters.min_data_bits.get(name, bits))

    # -- products ----------------------------------------------------------------------------
    def _share_data(self, q: torch.Tensor, tag: Tag, nonce: int, operand: str) -> SharedOperand:
        with self.runtime.ledger.timed("masking"):
            return share_operand(self.runtime.rng, q, self.p, label=(tag.layer, tag.op, operand, tag.step, nonce))

    def _product(self, tag: Tag, fn: str, params: dict, qa: torch.Tensor, b, b_shape, nonce: int, *,
                 keep: str | None = None, qb: torch.Tensor | None = None):
        x = self._share_data(qa, tag, nonce, "A")
        if qb is not None:
            b = self._share_data(qb, tag, nonce, "B")
        op = BeaverOp(fn, dict(params), tuple(qa.shape), tuple(b_shape), _out_shape(fn, qa.shape, b_shape, params),
                      backend=self.backend)
        shares = beaver_product(self.channel, self.runtime.rng, tag, op, x, b, nonce=nonce, keep=keep)
        self.counters.offloaded_ops += 1
        if shares is None:
            return None
        with self.runtime.ledger.timed("decode_verify"):
            return reconstruct(shares, self.p)

    def _fail(self, tag: Tag, detail: str) -> None:
        self.runtime.ledger.record_check(passed=False)
        raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step, detail=detail)

    def _weighted(self, site, op: str, a: torch.Tensor, params: dict, *, gradient: bool) -> torch.Tensor:
        """``f(a, W)`` (forward) or ``f(dY, W)`` (input gradient) on the shares, verified and decoded."""
        layer: ShareLayer = site.state["shares"]
        self._ensure_shared(layer)
        runtime = self.runtime
        fn = WEIGHT_FNS[layer.kind][0 if op == "forward" else 1]
        nonce = runtime.next_nonce()
        tag = self._tag(site.name, op)
        with runtime.ledger.timed("encode"):
            uniforms = self._uniforms(a, site.name, op, runtime.step, nonce) if gradient else None
            qa, la = self._encode_against_weight(fn, a, layer, params, uniforms)
            self._note_bits(f"{site.name}.{op}", qa)
        weight_shape = tuple(weight_operand(layer.kind, op, torch.empty(site.weight_shape, device="meta")).shape)
        held = HeldOperand(layer.handle, "t" if layer.kind == "linear" and op == "forward" else "")
        y = self._product(tag, fn, params, qa, held, weight_shape, nonce)
        with runtime.ledger.timed("decode_verify"):
            proj, s = layer.projections.for_op(op)
            ok = check_weighted(fn, qa, y, proj, s, self.engine, params)
            runtime.ledger.record_check(passed=ok)
            if not ok:
                raise IntegrityError(layer=site.name, op=op, step=runtime.step,
                                     detail=f"Freivalds check failed on the reconstructed {fn} mod p (a share "
                                            "worker's result, an opened difference, the dealer's triple or a "
                                            "held weight share is wrong)")
            out = codec.decode(y, la + layer.exponent, self.p)
        return out.to(a.dtype)

    def _both_data(self, site_name: str, op: str, fn: str, a, b, params, *, gradient_b: bool) -> torch.Tensor:
        """``f(a, b)`` with both operands fresh shares; verified with a fresh ``s``; decoded."""
        runtime = self.runtime
        nonce = runtime.next_nonce()
        tag = self._tag(site_name, op)
        with runtime.ledger.timed("encode"):
            uniforms = self._uniforms(b, site_name, op, runtime.step, nonce) if gradient_b else None
            qa, qb, la, lb = self._encode_pair(fn, a, b, params, total=None, b_uniforms=uniforms, fixed_total=False)
        y = self._product(tag, fn, params, qa, None, tuple(qb.shape), nonce, qb=qb)
        with runtime.ledger.timed("decode_verify"):
            s = draw_vectors(runtime.rng, int(y.shape[0] if fn == "conv2d_weight" else y.shape[-1]), self.k,
                             label=("shares-check", site_name, op, runtime.step, nonce))
            ok = check_data(fn, qa, qb, y, s, self.engine, params)
            runtime.ledger.record_check(passed=ok)
            if not ok:
                raise IntegrityError(layer=site_name, op=op, step=runtime.step,
                                     detail=f"Freivalds check failed on the reconstructed {fn} mod p")
            out = codec.decode(y, la + lb, self.p)
        return out.to(a.dtype)

    # -- the layer hooks ----------------------------------------------------------------------
    def forward(self, site, x, weight):
        params = {} if site.kind == "linear" else dict(site.conv_params)
        return self._weighted(site, "forward", x, params, gradient=False)

    def grad_input(self, site, grad_y, weight, input_shape):
        params = {} if site.kind == "linear" else {**site.conv_params, "input_size": tuple(input_shape)}
        return self._weighted(site, "grad_input", grad_y, params, gradient=True)

    def weighted_grads(self, site, x, grad_y, weight, *, needs, input_shape):
        grad_x = self.grad_input(site, grad_y, weight, input_shape) if needs[0] else None
        grad_w = None
        if needs[1]:
            layer: ShareLayer = site.state["shares"]
            if layer.resident:
                self._sgd_on_shares_update(layer, x, grad_y)
                if layer.param.grad is None:
                    layer.param.grad = SealedGrad(layer.param, layer.site.name)
            else:
                grad_w = self.grad_weight(site, x, grad_y, weight.shape)
        return grad_x, grad_w

    def grad_weight(self, site, x, grad_y, weight_shape):
        if site.kind == "linear":
            return self._both_data(site.name, "grad_weight", "matmul_tn", x, grad_y, {}, gradient_b=True).t()
        params = {**site.conv_params, "weight_size": tuple(weight_shape)}
        return self._both_data(site.name, "grad_weight", "conv2d_weight", x, grad_y, params, gradient_b=True)

    def bilinear(self, site, op, fn, a, b, *, roles, params):
        if roles != ("data", "data"):
            raise UsageError(f"shares: no offload for {fn} with operand roles {roles}")
        return self._both_data(site.name, op, fn, a, b, params, gradient_b=op != "forward")

    # -- SGD on the shares ---------------------------------------------------------------------
    def _sgd_on_shares_update(self, layer: ShareLayer, x: torch.Tensor, grad_y: torch.Tensor) -> None:
        """``[dW̃]_i = [f_w(X̃', G̃)]_i`` kept on S_i, with ``G̃ = sround(2^l_g·η·dY)``, ``l_x' + l_g = l_w``."""
        runtime, site = self.runtime, layer.site
        group = self._group_of(layer.param)
        lr = float(group["lr"])
        fn = "matmul_tn" if site.kind == "linear" else "conv2d_weight"
        params = {} if site.kind == "linear" else {**site.conv_params, "weight_size": tuple(site.weight_shape)}
        scaled = grad_y * lr
        if float(x.abs().max()) == 0.0 or float(scaled.abs().max()) == 0.0:
            return  # a zero gradient: no update
        nonce = runtime.next_nonce()
        tag = self._tag(site.name, "grad_weight")
        with runtime.ledger.timed("encode"):
            uniforms = self._uniforms(scaled, site.name, "grad_weight", runtime.step, nonce)
            qx, qg, _, _ = self._encode_pair(fn, x, scaled, params, total=layer.exponent, b_uniforms=uniforms,
                                             fixed_total=True)
        pending = f"{layer.handle}/dW"
        self._product(tag, fn, params, qx, None, tuple(qg.shape), nonce, keep=pending, qb=qg)
        with runtime.ledger.timed("decode_verify"):
            d_out, d_in = gradient_projections(site.kind, qx, qg, layer.projections, self.engine,
                                               dict(site.conv_params), site.weight_shape)
            taps = 1 if site.kind == "linear" else site.weight_shape[2] * site.weight_shape[3]
            growth = frobenius(qx) * frobenius(qg) * math.sqrt(taps)
            if layer.pending is None:
                layer.pending = {"d_out": d_out, "d_in": d_in, "growth": growth, "lr": lr}
            else:
                layer.pending["d_out"] = torch.remainder(layer.pending["d_out"] + d_out, self.p)
                layer.pending["d_in"] = torch.remainder(layer.pending["d_in"] + d_in, self.p)
                layer.pending["growth"] += growth

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """The sealed gradients leave before SGD reads ``.grad`` (their update is applied on the shares)."""
        for layer in self.layers.values():
            if is_sealed(layer.param.grad):
                layer.param.grad = None

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Apply the pending SGD updates on S0 / S1 and advance the projections (O(activations))."""
        updates = []
        for layer in self.layers.values():
            if layer.pending is None:
                continue
            pending, layer.pending = layer.pending, None
            group = self._group_of(layer.param)
            if group is None or float(group["lr"]) != pending["lr"]:
                raise UsageError("shares: the learning rate changed between backward and optimizer.step(); "
                                 "change it after step() (as LR schedulers do)")
            proj = layer.projections
            proj.p_out = torch.remainder(proj.p_out - pending["d_out"], self.p)
            proj.p_in = torch.remainder(proj.p_in - pending["d_in"], self.p)
            layer.norm_bound += pending["growth"]
            updates.append([layer.handle, f"{layer.handle}/dW", "t" if layer.kind == "linear" else ""])
            self.counters.resident_updates += 1
        if updates:
            tag = Tag(step=self.runtime.step, layer="*", op="update", modulus=self.p)
            for role in SHARE_ROLES:
                self.channel.call(role, Request("share_update", {}, tag, {"updates": updates, "modulus": self.p},
                                                return_result=False))

    # -- plaintext weights, inside the enclave -------------------------------------------------
    def materialize(self) -> None:
        """Reconstruct each share-held weight into the enclave model, checked against its projections."""
        for layer in self.layers.values():
            if not layer.resident or layer.projections is None or layer.version != layer.param._version:
                continue
            tag = self._tag(layer.site.name, "fetch_weight")
            shares = [self.channel.call(role, Request("fetch", {"X": Ref(layer.handle)}, tag)).result
                      for role in SHARE_ROLES]
            if any(not torch.is_tensor(s) or tuple(s.shape) != tuple(layer.site.weight_shape) for s in shares):
                self._fail(tag, "a share worker returned a malformed weight share")
            q = reconstruct((shares[0].to(torch.int64), shares[1].to(torch.int64)), self.p)
            fresh = project_weight(layer.kind, q, layer.projections.s_out, layer.projections.s_in, self.engine)
            ok = torch.equal(fresh.p_out, layer.projections.p_out) and torch.equal(fresh.p_in, layer.projections.p_in)
            self.runtime.ledger.record_check(passed=ok)
            if not ok:
                raise IntegrityError(layer=layer.site.name, op="fetch_weight", step=self.runtime.step,
                                     detail="the reconstructed weight does not match its tracked projections "
                                            "(a weight share was altered)")
            with torch.no_grad():
                layer.param.copy_(codec.decode(q, layer.exponent, self.p).to(layer.param.dtype))
            layer.version = layer.param._version

    # -- reporting -----------------------------------------------------------------------------
    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        from .shares_cost import step_cost, weight_numels

        resident = {name: layer.resident for name, layer in self.layers.items()}
        return step_cost(ops, resident=resident, weight_numel=weight_numels(self.layers), training=training)

    def summary(self) -> dict:
        return {
            "options": dict(self.settings), "modulus": self.p, "freivalds_repetitions": self.k,
            "soundness_bits_per_check": freivalds.soundness_bits(self.k),
            "roles": {"share_workers": list(SHARE_ROLES), "dealer": DEALER,
                      "trust": "S0, S1 and the dealer must not collude (any two together break privacy)"},
            "links": self.channel.links.as_dict(),
            "seeds_instead_of_tensors": "S0's shares of inputs, weights and triples and all of the dealer's input "
                                        "are 32-byte seeds; S1 gets full share tensors",
            "peer_channel": "relay through the enclave (boundary/peer.py)",
            "weight_update": {name: ("SGD on the shares (exact, lr folded into the gradient's fixed point)"
                                     if layer.resident else "in the enclave, then re-shared")
                              for name, layer in self.layers.items()},
            "truncation": "none: SGD updates are exact in F_p (no error, no failure probability)",
            "weight_exponents": {name: layer.exponent for name, layer in self.layers.items()},
            "weight_norm_bounds_bits": {name: round(log2_or_zero(layer.norm_bound), 2) for name, layer in self.layers.items()},
            "min_data_bits": dict(self.counters.min_data_bits),
            "enclave_state_bytes": {name: sum(t.numel() * t.element_size() for t in vars(layer.projections).values())
                                    for name, layer in self.layers.items() if layer.projections is not None},
            "enclave_memory_note": "per layer: check vectors and projections, 8·2k·(n+m) bytes (k = repetitions); "
                                   "the enclave model also keeps its (stale, between read-outs) plaintext weight",
            "offloaded_ops": self.counters.offloaded_ops, "weight_sharings": self.counters.reshares,
            "updates_on_shares": self.counters.resident_updates,
            "privacy": self.info.leaks,
        }
