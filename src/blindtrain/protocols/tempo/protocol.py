"""The ``tempo`` protocol: permutation obfuscation of weights and activations (Xu & Fang), DESIGN.md.

Per weighted layer (W: m×n, Linear ``y = x Wᵀ``; Conv2d: channels play n and m) and
key epoch, the enclave draws from its CSPRNG a permutation π_n and signs s ∈ {±1}^n of
the inner dimension, a permutation π_m and power-of-two scales c of the output dimension.
The worker holds ``W′ = (c · W · s)[π_m][:, π_n]`` (an out×in tensor, as nn.Linear / Conv2d
store it).  Per step and layer a fresh batch key (π_b, c_b):

* forward     ``X′ = (c_b X s)[π_b][:, π_n]``; ``X′W′ᵀ = (c_b Y c)[π_b][:, π_m]``; X′ stays on the worker.
* grad_input  ``G₁ = (c′_b dY / c)[π_b][:, π_m]`` (fresh scales c′_b); ``G₁W′ = (c′_b dX s)[π_b][:, π_n]``.
* grad_weight ``G₂ = (dY c / c_b)[π_b][:, π_m]``; ``G₂ᵀX′ = (c dW s)[π_m][:, π_n]`` — the gradient
  already in W′'s key: the worker keeps it, and ``optimizer.step()`` has it apply SGD
  (momentum, dampening, Nesterov, weight decay) to W′ in place.  Nothing weight-sized crosses.
  G₁ and G₂ share π_b, so ``G₂ = G₁ ⊙ ((1/(c_b c′_b))[π_b] ⊗ (c²)[π_m])``: G₁ crosses once, with that
  rank-one factor, and the worker rescales it.

Every check's operand side (``X q`` and its tolerance terms) is computed before the worker is called, from
the plaintext just encoded; its result side (``Y ρ``) is read from the result as it is decoded.  The
encode / decode pass (:mod:`blindtrain.kernels.gather`) takes what it can of both from the same read.

Decoding is exact up to float rounding (permutations, signs and powers of two are exact).
Keys rotate every ``rotate_every`` steps: the enclave fetches W′ (and the momentum buffer),
verifies it, decodes it, re-encodes it under a fresh key and sends it back.

t-integrity (Freivalds over floats): the enclave keeps secret check matrices ρ (m×k) and
σ (n×k) and the projections ``q = Wᵀρ`` and ``v = Wσ`` in plaintext coordinates, kept
current incrementally from the plaintext activations and gradients it has anyway
(``Δq = −lr·xᵀ(dY ρ)`` ...), in O(b(n+m)k).  Every result R is checked as
``|Rρ − X q| ≤ τ`` with τ a float32 error bound: per check one Azuma–Hoeffding bound on all its
roundings under the probabilistic model of rounding errors (see :data:`LAMBDA`: false alarm ≤
2^-40 per check, λ = 9.2), or the worst-case γ_K = K·u/(1−K·u) where smaller, times tracked
upper bounds of ``|W||ρ|`` (or row norms), plus the worker's update-rounding drift (accumulated in
quadrature: √steps, see :meth:`Tempo._advance`).  The used fraction
of τ per check family is reported (:meth:`Tempo.tolerance_report`).  A wrong update of W′ on the worker
(or a tampered held tensor) fails the next check; a fetched W′ is checked too.  Miss probability of an
error e in an entry: ≤ (τ/|e|)^k (ρ uniform in [−1, 1], k vectors).  NaN / Inf in a check's operand
side (the enclave's own values) is divergence (exit 1), in its result side a failed check (exit 3).

Optimizers: ``torch.optim.SGD`` (any momentum / dampening / Nesterov / weight decay) runs on
the worker ("resident" weights).  Any other optimizer (Adam, ...): enclave-side update —
the worker returns the obfuscated weight gradient, the enclave decodes and checks it, the
optimizer updates the plaintext weight, and the layer is re-encrypted each step.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from ...boundary import Call, Tag, bilinear_products
from ...errors import UsageError
from ...kernels.gather import backend as gather_backend
from ..base import Protocol, ProtocolInfo, register
from ..options import TempoOptions
from .attention import Attention
from .bounds import LAMBDA
from .checks import Checks
from .codec import Codec
from .contract import Contract
from .keys import Keys
from .layers import TempoLayer, make_layer
from .projections import Projections
from .report import Report
from .residency import Residency
from .resume import Resume
from .sgd import WorkerSgd


@register

class Tempo(Keys, Codec, Projections, Checks, Residency, WorkerSgd, Attention, Resume, Report, Contract, Protocol):
    info = ProtocolInfo(
        name="tempo",
        source="Tempo (Xu & Fang)",
        trains=True,
        private="nothing, as measured: weights, activations and gradients are only obfuscated (permuted, signed, "
                "power-of-two scaled), and the privacy lab recovers every training label, the training images "
                "and the weights exactly from one worker's transcript (docs/privacy)",
        integrity="t-integrity: Freivalds over floats against a float32 error bound, incremental check "
                  "projections; miss probability <= (tol/|error|)^k per result",
        leaks="labels, inputs and weights (measured by `blindtrain attack`): the keys are exact float operations, so "
              "each value keeps its mantissa and the same floats reappear across messages, linking rows and hidden "
              "units across layers and key epochs; each row's label is the negative entry of the last layer's "
              "output gradient; conv first layers keep the spatial layout; the worker updates (so knows) the "
              "obfuscated weights and receives the output scales (c²) in the clear",
        summary="bilinear ops offloaded on permuted/scaled operands; weights stay encrypted on the worker and "
                "are updated there (SGD); re-encrypted only on key rotation or read-out",
    )
    adopts_weights = True  # F.linear(x, parameter) in forward: offloaded, the weight kept in the enclave
    weights_per_call = False
    copy_refusal = ("tempo keeps each offloaded layer's weights on the worker under the layer's keys, so a copy would hold no weights of its own")
    Options = TempoOptions
    tolerance = 1e-4  # float32 products in another summation order
    transcript_kinds = {"main": frozenset({"obfuscated", "public"})}
    verifies_results = True
    enclave_work = "activations"  # its step runs on one enclave thread (blindtrain.threads)

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        self.layers: dict[str, TempoLayer] = {}
        self.optimizer = None
        self.rotations = 0
        self._keys: dict = {}       # (step, training) -> this step's keystream
        self._pool: dict = {}
        self._forward_training = True  # whether the forward being encoded trains (its keys: see _step_keys)
        self._used: dict[str, list] = {}  # per check family: [max used fraction of the tolerance, checks passed]
        gather_backend()  # builds the fused encode / decode pass now (once per machine), not inside a step
        runtime.ledger.integrity_soundness_bits = self.detection()["soundness_bits_at_that_error"]

    # ------------------------------------------------------------------ wrap ----
    def wrap(self, model, optimizer):
        model, optimizer = super().wrap(model, optimizer)
        mode = self.settings["update"]
        # a weight another module also holds (weight tying: Embedding.weight = Linear.weight) is not resident:
        # the enclave keeps it, the other module reads it there, and both gradients sum in its .grad
        uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        resident_ok = optimizer is None or (type(optimizer) is torch.optim.SGD
                                            and not any(g.get("maximize") for g in optimizer.param_groups))
        if mode == "worker" and not resident_ok:
            raise UsageError("tempo: worker-side updates support torch.optim.SGD only; use update=enclave or auto")
        for site in self.sites:
            if site.kind == "matmul":
                continue
            layer = make_layer(site, site.module.weight, f"tempo/{site.name}")
            layer.resident = resident_ok and mode != "enclave" and uses[id(layer.param)] == 1
            site.state["tempo"] = layer
            self.layers[site.name] = layer
        self.optimizer = optimizer
        if optimizer is not None:
            optimizer.register_step_post_hook(self._after_optimizer_step)
        if self.settings["fuse_activations"]:
            from .fuse import install_fused

            self.fused = install_fused(model, self)
        self._install_contract(model, optimizer)
        return model, optimizer

    def adopt(self, site, weight):
        """A weight the model's ``forward`` passes to ``F.linear`` itself (``nn.MultiheadAttention``'s
        projections): its products are offloaded like a Linear layer's, but the weight stays in the enclave
        (updated there by the optimizer, encrypted again after each change), since the module that owns it
        may read it directly (``in_proj_weight.split`` for cross-attention)."""
        layer = make_layer(site, weight, f"tempo/{site.name}")
        layer.resident = False
        site.state["tempo"] = layer
        self.layers[site.name] = layer

    def _call_each(self, requests):
        """``[(worker index, request), ...]`` all sent before any answer is awaited: the blocks' workers
        compute at the same time.  The answers, in order."""
        return self.runtime.call_many([Call(request, index=k) for k, request in requests])

    def _blocks(self, m):
        n = min(self.settings["workers"], m)
        edges = [round(i * m / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]

    # ---------------------------------------------------------- layer hooks -----
    def forward(self, site, x, weight):
        layer = site.state["tempo"]
        rt = self.runtime
        training = site.module.training  # (autograd.Function.forward runs with grad mode off)
        self._forward_training = training
        self._ensure(layer, weight, training)
        b = layer.last_batch = x.shape[0]
        xf = x.detach().float()
        with rt.ledger.timed("encode"):
            pb, cb = self._batch_key(b)
        if rt.ground_truth is not None:  # scoring only: frame row r is true batch row pb[r]
            rt.ground_truth.row_order(rt.step, site.name, pb)
        xe, expected = self._encode_forward(layer, xf, pb, cb)
        layer.batch = (pb, cb) if training else None
        call = layer.open_call(layer.batch, layer.saved) if training else None
        requests = []
        for k, (lo, hi) in enumerate(layer.blocks):
            req = layer.forward_request(xe, Tag(rt.step, site.name, "forward"))
            if training:
                req.keep = {"A": call.handle}
            requests.append((k, req))
        parts = [reply.result for reply in self._call_each(requests)]
        with rt.ledger.timed("decode_verify"):
            ye = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            y, lhs, y_norm = self._decode_result(layer, ye, (pb, cb), "rho")
            self._check(layer, "forward", expected, lhs, y_norm)
        if call is not None:  # for this forward's backward (glue._call_state)
            site.state["call"] = call
        return y.to(x.dtype)

    def fused_forward(self, site, x, weight, bias, spec):
        """A fused layer's forward: returns ``(z, argmax or None)``, ``z = pool(act(X Wᵀ + b))``.

        Soundness first: the worker computes only the product, which is Freivalds-checked like every forward
        result (:meth:`forward`); bias, activation and max-pool run in the enclave on the verified result.  A
        ReLU or a max-pool applied by the worker cannot be checked against the operands (neither is
        invertible: the check ``Y ρ = X q`` needs all of ``Y``), and checking them against a returned
        pre-activation costs the enclave what applying them does — so they are not fused on the worker
        (``summary()["fused_integrity"]``).  The backward (mask from the output's sign, scatter through the
        argmax positions) is the fused module's own (:mod:`blindtrain.protocols.tempo.fuse`)."""
        y = self.forward(site, x, weight)
        with self.runtime.ledger.timed("decode_verify"):
            if bias is not None:
                y = y + (bias.detach().to(y.dtype).view(1, -1, 1, 1) if y.dim() == 4 else bias.detach().to(y.dtype))
            y = F.leaky_relu(y, spec["slope"]) if spec["act"] == "leaky_relu" else F.relu(y)
            idx = None
            if spec["pool"]:
                spec["pre_pool_shape"] = tuple(y.shape)
                y, idx = F.max_pool2d(y, spec["pool"], return_indices=True)
        return y, idx

    def _finish_grad_input(self, layer, parts, batch_key, expected, dtype):
        """Sum the workers' partial products, decode ``dX`` and check it against ``expected``."""
        with self.runtime.ledger.timed("decode_verify"):
            re = parts[0]
            for p in parts[1:]:
                re = re + p
            dx, lhs, dx_norm = self._decode_result(layer, re, batch_key, "sigma")
            self._check(layer, "grad_input", expected, lhs, dx_norm)
        return dx.to(dtype)

    def grad_input(self, site, grad_y, weight, input_shape):
        layer = site.state["tempo"]
        layer.resume_call(site.state.get("call"))
        g1, batch_key, expected = self._encode_grad_input(layer, grad_y.float(), input_shape)
        parts = [reply.result for reply in self._call_each(
            [(k, self._request(layer, self._grad_input_product(layer, g1, lo, hi, input_shape)))
             for k, (lo, hi) in enumerate(layer.blocks)])]
        return self._finish_grad_input(layer, parts, batch_key, expected, grad_y.dtype)

    def weighted_grads(self, site, x, grad_y, weight, *, needs, input_shape):
        """Both gradients in one message per worker when the weights are worker-held: the input
        gradient's product comes back, the weight gradient's stays on the worker."""
        layer = site.state["tempo"]
        if not (needs[0] and needs[1] and layer.resident):
            return super().weighted_grads(site, x, grad_y, weight, needs=needs, input_shape=input_shape)
        layer.resume_call(site.state.get("call"))
        g1, batch_key, expected = self._encode_grad_input(layer, grad_y.float(), input_shape)
        shared = layer.batch is not None and batch_key[0] is layer.batch[0]
        factors = self._g2_factors(layer, batch_key[1]) if shared else None
        g2 = None if shared else self._encode_grad_weight(layer, grad_y)
        keep = self._hold_grad_projections(layer, x, grad_y)
        tag = Tag(self.runtime.step, site.name, "backward")
        requests = []
        for k, (lo, hi) in enumerate(layer.blocks):
            grad_input = self._grad_input_product(layer, g1, lo, hi, input_shape)
            g = grad_input["A"] if shared else self._block(layer, g2, lo, hi)
            grad_weight = self._grad_weight_product(layer, g, lo, hi, keep=keep, factors=factors)
            requests.append((k, bilinear_products(tag, [grad_input, grad_weight])))
        parts = [reply.result for reply in self._call_each(requests)]
        self._accumulate_on_workers(layer, keep)
        self._guard_grad(layer)
        return self._finish_grad_input(layer, parts, batch_key, expected, grad_y.dtype), None

    def grad_weight(self, site, x, grad_y, weight_shape):
        layer = site.state["tempo"]
        layer.resume_call(site.state.get("call"))
        rt = self.runtime
        key = layer.key
        g2 = self._encode_grad_weight(layer, grad_y)
        if layer.resident:
            keep = self._hold_grad_projections(layer, x, grad_y)
            self._call_each([(k, self._request(layer, self._grad_weight_product(
                layer, self._block(layer, g2, lo, hi), lo, hi, keep=keep))) for k, (lo, hi) in enumerate(layer.blocks)])
            self._accumulate_on_workers(layer, keep)
            self._guard_grad(layer)
            return None
        # enclave-side update: the obfuscated gradient comes back, is decoded and checked
        parts = [reply.result for reply in self._call_each(
            [(k, self._request(layer, self._grad_weight_product(layer, self._block(layer, g2, lo, hi), lo, hi,
                                                                keep=False)))
             for k, (lo, hi) in enumerate(layer.blocks)])]
        with rt.ledger.timed("decode_verify"):
            dw = self._dec(torch.cat(parts), key.pm, key.pn, key.c, key.s)
            proj = self._grad_projections(layer, x.detach().float(), grad_y.float())
            t = layer.t
            got = self._proj_q(layer, dw.double(), t["rho"].double())
            # the gradient's rounding (worker product and tracker, σ units: λ·qe, see _grad_projections) + this
            # projection's own double rounding (≤ 2^-50·m·|dW|ᵀ|ρ|)
            tol = LAMBDA * proj["qe"] + proj["qa"] * (2.0 ** -49 * layer.m * layer.ksz) + 1e-30
            self._verdict(site.name, "grad_weight", (got - proj["q"]).abs(), tol, operands=(proj["q"], tol),
                          kind="grad_weight", detail="weight gradient fails the Freivalds check")
        return dw.to(x.dtype)
