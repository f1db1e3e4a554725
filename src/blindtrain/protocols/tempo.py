"""``tempo``: permutation obfuscation of weights and activations (Xu & Fang), DESIGN.md.

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
encode / decode pass (:mod:`blindtrain.tempo.gather`) takes what it can of both from the same read.

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

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..boundary import Call, Ref, Request, Sent, Tag, bilinear_products
from ..errors import IntegrityError, TrainingDiverged, UsageError
from ..glue import all_finite
from ..tempo import thin
from ..kernels.weight_epoch import weight_epoch
from ..threads import parallel_if
from ..tempo.gather import backend as gather_backend
from ..tempo.gather import gather, thin_product
from .base import Protocol, ProtocolInfo, register
from .options import TempoOptions

U32 = 2.0 ** -24  # float32 unit roundoff


#: The stated false-alarm probability of one check (one result compared with its operands): 2^-40.
FALSE_ALARM_PER_CHECK = 2.0 ** -40
#: The most numbers one check compares (rows · pixels · k check vectors; resnet18 on CIFAR at batch 512
#: compares 2·512·32·32 = 2^20 in its first layer).  A larger check's false-alarm probability is
#: ``N·2·exp(−λ²/2)``, i.e. ``2^-40 · N / 2^20``.
MAX_COMPARED = 2 ** 20

#: λ of the probabilistic rounding-error model (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019): rounding
#: errors ``δ`` are independent and mean zero, ``|δ| ≤ u``.  The error of a computed sum of products is then
#: a sum of martingale differences ``δ_t · c_t`` (``c_t``: the computed partial result the rounding ``t``
#: applies to, known before ``δ_t`` is drawn), and by Azuma–Hoeffding it exceeds ``λ · u · √(Σ_t c_t²)``
#: with probability at most ``2·exp(−λ²/2)``.  A length-K inner product ``Σ_k a_k`` (``a_k = x_k w_k``) has
#: at most K product roundings (``c = |a_k|``, ``Σ a_k² ≤ S²``, ``S = Σ_k |a_k|``) and K−1 addition roundings
#: (each on a partial sum of a subset: ``c ≤ S`` in any summation order: blocked, pairwise, split-K), or K
#: fused multiply-adds (``c ≤ S``): ``Σ_t c_t² ≤ K·S²`` in every case, so it errs by at most
#: ``λ·√K·u·S`` (Higham & Mary's γ̃_K(λ) = λ√K·u to first order; ``(1 + K·u)`` covers the partial sums'
#: own rounding).  A check's comparison adds up several such sums (the worker's product, the check's
#: float32 products): their roundings are one martingale, so ONE bound covers all of them,
#: ``λ·u·√(Σ_sums K_s·S_s²)`` (:func:`_rounding_bound`), not the sum of one bound per product.
#:
#: λ follows from the stated probability, not from observed residuals: one check compares at most
#: :data:`MAX_COMPARED` numbers, each fails with probability ``≤ 2·exp(−λ²/2)``, so a check raises a false
#: alarm with probability ``≤ MAX_COMPARED · 2·exp(−λ²/2) = FALSE_ALARM_PER_CHECK`` for
#: ``λ = √(2·ln(2·MAX_COMPARED / FALSE_ALARM_PER_CHECK))`` = 9.20.  A 20,000-step resnet18 run makes about
#: 10^6 ≈ 2^20 checks: a false alarm with probability ≤ 2^-20 under the model.  This is a model, not a
#: theorem, for round-to-nearest (its errors are deterministic functions of the data); the soak
#: (``scripts/tolerance_soak.py``) measures it.
LAMBDA = math.sqrt(2 * math.log(2 * MAX_COMPARED / FALSE_ALARM_PER_CHECK))

#: What ``--fuse-activations`` verifies (the summary's ``fused_integrity``).
FUSED_INTEGRITY = (
    "the forward product of a fused layer is Freivalds-checked like every forward result (miss probability <= "
    "(tol/|error|)^k per row for any change of the result: zeros, scaling, tampering, noise, replay); bias, "
    "ReLU / LeakyReLU and max-pool run in the enclave on the verified product, because a worker-applied ReLU or "
    "max-pool is not invertible and cannot be checked against the operands more cheaply than applying it")

#: A check passes when ``|result side − operand side| ≤ CHECK_MARGIN · tolerance``.
CHECK_MARGIN = 1.0


def _gamma(k: int) -> float:
    """Rounding-error factor of a length-``k`` float32 inner product relative to ``Σ|x_k||w_k|``: the smaller
    of the worst-case γ_k = k·u/(1−k·u) and the probabilistic λ·√k·u·(1 + k·u) (see :data:`LAMBDA`)."""
    worst = k * U32 / (1 - k * U32)
    return min(worst, _azuma(k))


def _dot64(k: int) -> float:
    """Relative error factor of a check's own length-``k`` product of float32 numbers taken by the encode /
    decode pass (:func:`~blindtrain.tempo.gather.gather` on a matrix): exact products accumulated in double
    (``k·2⁻⁵³``) and rounded to float32 once (``u``), plus ``u`` for a vector rounded to float32 before."""
    return 2 * U32 + k * 2.0 ** -52


def _azuma(k: int) -> float:
    """The probabilistic factor λ·√k·u·(1 + k·u) alone (see :data:`LAMBDA`): ``Σ_t c_t² ≤ k·S²`` for the at
    most k roundings of products and k−1 of partial sums (or k FMAs) of a length-k sum; also for sums of
    *independent* inner products weighted by check vectors, where one Azuma bound covers the roundings of
    all of them together."""
    return LAMBDA * math.sqrt(k) * U32 * (1 + k * U32)


def _rounding_bound(*sums):
    """One bound on the rounding errors of several float32 sums that add up in one compared number:
    ``sums`` are ``(K, S)`` pairs (length K, ``S`` an upper bound of ``Σ|terms|`` of every rounding in it,
    a float or a tensor).  All their roundings are one martingale (see :data:`LAMBDA`), so the bound is
    ``λ·u·(1 + K_max·u)·√(Σ K·S²)``, or the worst case ``Σ γ_K·S`` where that is smaller (short sums)."""
    kmax = max(k for k, _ in sums)
    worst = sum(k * U32 / (1 - k * U32) * b for k, b in sums)
    prob = LAMBDA * U32 * (1 + kmax * U32) * sum(k * b * b for k, b in sums) ** 0.5
    if isinstance(worst, torch.Tensor) or isinstance(prob, torch.Tensor):
        return torch.minimum(torch.as_tensor(worst), torch.as_tensor(prob))
    return min(worst, prob)


def _thin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a thin ``b`` (a few check vectors as columns): see :func:`~blindtrain.tempo.gather.thin_product`."""
    return thin_product(a, b.t().contiguous())


def _ident(t: torch.Tensor) -> tuple:
    """What identifies a tensor's contents across the hooks of one step: same storage, layout, shape and
    in-place version (a tensor modified in place since the products were saved does not match)."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t._version


def _l1(t: torch.Tensor) -> torch.Tensor:
    """Σ over channels of |t| (N×1×H×W); a plain reduction, much faster than linalg.vector_norm on dim 1."""
    return t.abs().sum(1, keepdim=True)


def _linf(t: torch.Tensor) -> torch.Tensor:
    """max over channels of |t| (N×1×H×W)."""
    return torch.maximum(t.amax(1, keepdim=True), -t.amin(1, keepdim=True))


def _conv_kw(params: dict) -> dict:
    return {k: params[k] for k in ("stride", "padding", "dilation") if k in params}


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


class _Layer:
    """Per-layer tempo state (kept in ``site.state['tempo']``)."""

    def __init__(self, site, param, key_prefix):
        self.site = site
        self.param = param
        self.h = key_prefix
        self.conv = site.kind == "conv2d"
        shape = tuple(site.weight_shape)
        self.m, self.n = shape[0], shape[1]
        self.kernel = shape[2:]
        self.ksz = int(np.prod(self.kernel)) if self.kernel else 1
        self.epoch = -1
        self.epoch_start = 0
        self.key = None
        self.blocks = []
        self.resident = True
        self.encrypted_version = None
        self.has_buf = False
        self.pending = None       # projections of the weight gradient awaiting optimizer.step()
        self.batch = None         # forward batch key of this step (pb, cb)
        self.t = {}               # tracker tensors
        self.last_batch = 0
        self.saved = self.saved_g = None
        self.restore = False      # resumed from a checkpoint: W′ must be sent again under the restored key


@register
class Tempo(Protocol):
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
    weights_per_call = False
    copy_refusal = ("tempo keeps each offloaded layer's weights on the worker under the layer's keys, so a copy would hold no weights of its own")
    Options = TempoOptions
    tolerance = 1e-4  # float32 products in another summation order
    transcript_kinds = {"main": frozenset({"obfuscated", "public"})}
    verifies_results = True
    enclave_work = "activations"  # its step runs on one enclave thread (blindtrain.threads)

    def __init__(self, runtime, **options):
        super().__init__(runtime, **options)
        self.layers: dict[str, _Layer] = {}
        self.optimizer = None
        self.rotations = 0
        self._keys: dict = {}       # (step, training) -> this step's keystream
        self._pool: dict = {}
        self._forward_training = True  # whether the forward being encoded trains (its keys: see _step_keys)
        self._used: dict[str, list] = {}  # per check family: [max used fraction of the tolerance, checks passed]
        gather_backend()  # builds the fused encode / decode pass now (once per machine), not inside a step
        runtime.ledger.integrity_soundness_bits = self.detection()["soundness_bits_at_that_error"]

    # ------------------------------------------------------------------ keys ----
    def _stream(self, *label):
        """A fresh keystream of the enclave CSPRNG for several draws; every label is used once (the CSPRNG
        refuses a repeat).  Labels name what they key — ``("weight-key", layer, epoch)``, ``("check-vectors",
        layer)``, ``("step-keys", step)`` — and not a draw counter, so that a run resumed from a checkpoint
        (which restores the CSPRNG and the epochs) draws exactly the keys the uninterrupted run draws, whatever
        else (an evaluation) happened in between: resuming is bit-exact (:meth:`state_dict`)."""
        return self.runtime.rng.stream("tempo", *label)

    def _step_keys(self, training: bool = True):
        """This step's keystream: every batch key (and attention key) of the step is drawn from it in
        sequence, so a step opens one cipher context, not two per layer and op.  Training draws from
        ``("step-keys", step)``; evaluation forwards from a stream of their own (labelled with a fresh
        nonce), so an evaluation never shifts the keys training gets."""
        slot = (self.runtime.step, training)
        if slot not in self._keys:
            for stale in [k for k in self._keys if k[0] != slot[0]]:
                del self._keys[stale]
            self._keys[slot] = self._stream("step-keys", slot[0]) if training else \
                self._stream("eval-keys", slot[0], self.runtime.next_nonce())
        return self._keys[slot]

    @staticmethod
    def _perm(n, keys):
        """A uniform permutation of ``range(n)`` drawn from ``keys``."""
        return torch.from_numpy(keys.permutation(n))

    def _pow2(self, n, keys):
        """``n`` power-of-two scales ``2^e``, ``e`` uniform in ``[-scale_range, scale_range]``."""
        e = self.settings["scale_range"]
        if e == 0:
            return torch.ones(n)
        return torch.from_numpy(np.ldexp(1.0, keys.integers(-e, e, (n,))).astype(np.float32))

    @staticmethod
    def _signs(n, keys):
        return torch.from_numpy(keys.signs(n))

    @staticmethod
    def _uniform(shape, keys):
        """Check vectors uniform in [-1, 1)."""
        return torch.from_numpy(keys.uniform_float(shape) * 2.0 - 1.0).float()

    def _fresh(self, kind, b, *, training: bool = True):
        """This step's next unused batch permutation (``kind = "perm"``) or power-of-two batch scales
        (``"scales"``) of size ``b``.  A step's keys are drawn in batches — one keystream read and one
        vectorized sort for all its layers — and handed out one per call, each once; what a step leaves
        unused is dropped."""
        pool = self._pool
        if pool.get("step") != self.runtime.step:
            pool.clear()
            pool["step"] = self.runtime.step
        queue = pool.setdefault((kind, b, training), [])
        if not queue:
            keys, count = self._step_keys(training), max(len(self.layers), 1)
            if kind == "perm":
                queue.extend(torch.from_numpy(keys.permutations(count, b)).unbind(0))
            else:
                queue.extend(self._pow2(count * b, keys).view(count, b).unbind(0))
        return queue.pop()

    def _batch_key(self, b):
        """A fresh batch key ``(π_b, c_b)`` for the forward being encoded (training or evaluation keys)."""
        training = self._forward_training
        return self._fresh("perm", b, training=training), self._fresh("scales", b, training=training)

    # --------------------------------------------------------------- encoding ----
    @staticmethod
    def _derived(key, name, make):
        """``make(key)``, cached on the key tensor: weight keys serve every step of their epoch.  Key tensors
        are never modified in place."""
        value = getattr(key, "_tempo_" + name, None)
        if value is None:
            value = make(key)
            setattr(key, "_tempo_" + name, value)
        return value

    @classmethod
    def _inverse(cls, p):
        """The inverse permutation of ``p`` (a scatter, not a sort)."""
        def invert(p):
            inv = torch.empty_like(p)
            inv[p] = torch.arange(p.numel(), dtype=p.dtype)
            return inv
        return cls._derived(p, "inverse", invert)

    @classmethod
    def _reciprocal(cls, scales):
        """``1 / scales`` (exact: powers of two and signs)."""
        return cls._derived(scales, "reciprocal", torch.reciprocal)

    @classmethod
    def _enc(cls, x, p0, p1, s0, s1):
        """``(s0 ⊗ s1 · x)[p0][:, p1]`` for a 2-D or 4-D tensor (s0, s1 in *original* order), one pass
        (:func:`~blindtrain.tempo.gather.gather`)."""
        return gather(x, p0, p1, s0[p0], s1[p1]).out

    @classmethod
    def _dec(cls, y, p0, p1, s0, s1):
        """Inverse of :meth:`_enc` given the same keys (x = dec(enc(x))), exact: the scales are powers of two
        and signs, so ``(1/s0) ⊗ (1/s1)`` equals ``1 / (s0 ⊗ s1)`` exactly."""
        return gather(y, cls._inverse(p0), cls._inverse(p1), cls._reciprocal(s0), cls._reciprocal(s1)).out

    # ------------------------------------------------------------------ wrap ----
    def wrap(self, model, optimizer):
        model, optimizer = super().wrap(model, optimizer)
        mode = self.settings["update"]
        resident_ok = optimizer is None or (type(optimizer) is torch.optim.SGD
                                            and not any(g.get("maximize") for g in optimizer.param_groups))
        if mode == "worker" and not resident_ok:
            raise UsageError("tempo: worker-side updates support torch.optim.SGD only; use update=enclave or auto")
        for site in self.sites:
            if site.kind == "matmul":
                continue
            layer = _Layer(site, site.module.weight, f"tempo/{site.name}")
            layer.resident = resident_ok and mode != "enclave"
            site.state["tempo"] = layer
            self.layers[site.name] = layer
        self.optimizer = optimizer
        if optimizer is not None:
            optimizer.register_step_post_hook(self._after_optimizer_step)
        if self.settings["fuse_activations"]:
            from ..tempo.fuse import install_fused

            self.fused = install_fused(model, self)
        return model, optimizer

    def _group_of(self, param):
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        return None

    # ------------------------------------------------------- weight epochs ------
    def _call_each(self, requests):
        """``[(worker index, request), ...]`` all sent before any answer is awaited: the blocks' workers
        compute at the same time.  The answers, in order."""
        return self.runtime.call_many([Call(request, index=k) for k, request in requests])

    def _blocks(self, m):
        n = min(self.settings["workers"], m)
        edges = [round(i * m / n) for i in range(n + 1)]
        return [(edges[i], edges[i + 1]) for i in range(n)]

    def _ensure(self, layer: _Layer, weight, training: bool):
        """Encrypt the layer's weights if needed (first use, rotation, or a changed enclave copy)."""
        param = layer.param
        if layer.restore:  # resumed (load_state_dict): the workers hold nothing; W′ under the restored key
            layer.restore = False
            self._send(layer, param.detach(), self._plain_buffer(layer))
        if layer.key is None or (param.numel() > 0 and param._version != layer.encrypted_version):
            self._encrypt(layer, param.detach(), self._plain_buffer(layer), fetch_old=False)
        elif training and layer.resident and self.runtime.step - layer.epoch_start >= self.settings["rotate_every"]:
            w, buf = self._fetch(layer)
            self._encrypt(layer, w, buf, fetch_old=True)
        elif layer.resident and param.numel() > 0:
            self._release(layer)  # a read-out (checkpoint) left a copy in the enclave: drop it

    def _release(self, layer):
        """The enclave no longer needs the plaintext weights: they live (encrypted) on the worker."""
        layer.param.data = torch.empty(0, dtype=layer.param.dtype)
        state = self.optimizer.state.get(layer.param) if self.optimizer is not None else None
        if state:
            state.pop("momentum_buffer", None)
        layer.encrypted_version = layer.param._version

    def _plain_buffer(self, layer):
        if self.optimizer is None or not layer.resident:
            return None
        state = self.optimizer.state.get(layer.param, {})
        buf = state.get("momentum_buffer")
        return None if buf is None or buf.numel() == 0 else buf.detach()

    def _encrypt(self, layer: _Layer, w, buf, *, fetch_old: bool):
        """New key epoch for ``layer``: draw keys, send W′ (and the momentum buffer) to the workers.  A large
        pass: on the configured threads even inside a serial step (:func:`blindtrain.threads.parallel_if`)."""
        rt = self.runtime
        with parallel_if(w.numel()):
            with rt.ledger.timed("encode"):
                layer.epoch += 1
                layer.epoch_start = rt.step
                keys = self._stream("weight-key", layer.site.name, layer.epoch)
                layer.key = {"pn": self._perm(layer.n, keys), "pm": self._perm(layer.m, keys),
                             "s": self._signs(layer.n, keys), "c": self._pow2(layer.m, keys)}
                layer.blocks = self._blocks(layer.m)
                encrypted = self._reset_tracker(layer, w.float(), buf) if layer.conv else \
                    self._epoch_in_one_read(layer, w, buf)
            self._send(layer, w, buf, encrypted=encrypted)
        if fetch_old:
            self.rotations += 1

    def _epoch_in_one_read(self, layer: _Layer, w, buf):
        """A linear layer's new key epoch from one read of W (and of the momentum buffer): what
        :meth:`_reset_tracker` computes, and W′ (:mod:`blindtrain.kernels.weight_epoch`, bit-identical to
        :meth:`_enc`).  Returns ``(W′, buffer′ or None)``."""
        t, key, k = layer.t, layer.key, self.settings["check_vectors"]
        if "rho" not in t:
            keys = self._stream("check-vectors", layer.site.name)  # once per layer and run (restored on resume)
            t["rho"], t["sigma"] = self._uniform((layer.m, k), keys), self._uniform((layer.n, k), keys)
            t["arho"], t["asigma"] = t["rho"].abs(), t["sigma"].abs()
        drift = 2.0 ** -50 * max(layer.m, layer.n * layer.ksz)
        encrypted = []
        for which, x in (("w", w), ("b", buf)):
            if x is None:
                for name in ("qb", "qba", "qbe", "vb", "vba", "vbe"):
                    t.pop(name, None)
                encrypted.append(None)
                continue
            e = weight_epoch(x.float().reshape(layer.m, layer.n), key["pm"], key["pn"], key["c"][key["pm"]],
                             key["s"][key["pn"]], t["rho"], t["sigma"])
            t["q" + which], t["q" + which + "a"], t["q" + which + "e"] = e.q, e.q_abs, e.q_abs * drift
            t["v" + which], t["v" + which + "a"], t["v" + which + "e"] = e.v, e.v_abs, e.v_abs * drift
            t["N" + which], t["M" + which] = e.row_norm, e.col_norm
            encrypted.append(e.encrypted)
        self._refresh_check_mats(layer)
        return tuple(encrypted)

    def _send(self, layer: _Layer, w, buf, *, encrypted=None):
        """``W′`` (and the momentum buffer) under the layer's current key to its workers; the enclave then
        drops its plaintext copy (worker-held weights).  ``encrypted``: ``(W′, buffer′)`` if already made."""
        rt = self.runtime
        key = layer.key
        with rt.ledger.timed("encode"):
            if encrypted is not None:
                enc_w, enc_b = encrypted
            else:
                enc_w = self._enc(w.float(), key["pm"], key["pn"], key["c"], key["s"])
                enc_b = None if buf is None else self._enc(buf.float(), key["pm"], key["pn"], key["c"], key["s"])
        stores, frees = [], []
        for k, (lo, hi) in enumerate(layer.blocks):
            args = {"W": Sent(enc_w[lo:hi].contiguous(), "obfuscated")}
            keep = {"W": f"{layer.h}/w"}
            if enc_b is not None:
                args["M"] = Sent(enc_b[lo:hi].contiguous(), "obfuscated")
                keep["M"] = f"{layer.h}/buf"
            stores.append((k, Request("store", args, Tag(rt.step, layer.site.name, "encrypt"), keep=keep,
                                      return_result=False)))
            if enc_b is None:
                frees.append((k, Request("free", {}, Tag(rt.step, layer.site.name, "encrypt"),
                                         params={"handles": [f"{layer.h}/buf"]}, return_result=False)))
        self._call_each(stores + frees)
        layer.has_buf = enc_b is not None
        rt.ledger.weight_encryptions += 1
        layer.encrypted_version = layer.param._version
        if layer.resident and layer.param.numel() > 0:
            self._release(layer)
        del enc_w, enc_b

    def _fetch(self, layer: _Layer):
        """Fetch W′ (and buffer) from the workers, decode, and check them against the projections."""
        rt = self.runtime
        handles = [f"{layer.h}/w"] + ([f"{layer.h}/buf"] if layer.has_buf else [])
        replies = self._call_each([(k, Request("fetch", {"X": Ref(handle)}, Tag(rt.step, layer.site.name, "fetch")))
                                   for handle in handles for k in range(len(layer.blocks))])
        parts = [reply.result for reply in replies]
        parts_w, parts_b = parts[:len(layer.blocks)], parts[len(layer.blocks):]
        key = layer.key
        with rt.ledger.timed("decode_verify"):
            w = self._dec(torch.cat(parts_w), key["pm"], key["pn"], key["c"], key["s"])
            buf = self._dec(torch.cat(parts_b), key["pm"], key["pn"], key["c"], key["s"]) if layer.has_buf else None
            self._verify_held(layer, w, "w", "fetch")
            if buf is not None:
                self._verify_held(layer, buf, "b", "fetch")
        return w, buf

    def materialize(self) -> None:
        """Bring the current plaintext weights (and momentum buffers) back into the enclave model."""
        for layer in self.layers.values():
            if layer.key is None or not layer.resident or layer.param.numel() > 0:
                continue  # never encrypted, enclave-updated, or already in the enclave
            w, buf = self._fetch(layer)
            with torch.no_grad():
                layer.param.data = w.reshape(layer.site.weight_shape).to(layer.param.dtype)
            if buf is not None and self.optimizer is not None:
                self.optimizer.state[layer.param]["momentum_buffer"] = buf.reshape(layer.site.weight_shape)
            layer.encrypted_version = layer.param._version

    # ------------------------------------------------------------ tracker -------
    def _proj_q(self, layer, w, rho):
        """``Wᵀρ`` (linear: n×k) / ``Σ_m ρ[m,j] W[m]`` (conv: k×n×kh×kw)."""
        if layer.conv:
            return torch.einsum("mnhw,mk->knhw", w, rho)
        return w.t() @ rho

    def _proj_v(self, layer, w, sigma):
        if layer.conv:
            return torch.einsum("mnhw,nk->mkhw", w, sigma)
        return w @ sigma

    def _reset_tracker(self, layer, w, buf):
        k = self.settings["check_vectors"]
        name = layer.site.name
        t = layer.t
        if "rho" not in t:
            keys = self._stream("check-vectors", name)  # once per layer and run (restored on resume)
            t["rho"], t["sigma"] = self._uniform((layer.m, k), keys), self._uniform((layer.n, k), keys)
            t["arho"], t["asigma"] = t["rho"].abs(), t["sigma"].abs()
        w = w.float()
        aw = w.abs()
        for d, proj in (("q", self._proj_q), ("v", self._proj_v)):
            vec = t["rho"] if d == "q" else t["sigma"]
            avec = t["arho"] if d == "q" else t["asigma"]
            t[d + "w"] = proj(layer, w.double(), vec.double())
            t[d + "wa"] = self._reduce(layer, d, proj(layer, aw, avec).double())
            # the projections are computed in float64 from the exact float32 weights
            t[d + "we"] = t[d + "wa"] * (2.0 ** -50 * max(layer.m, layer.n * layer.ksz))
            if buf is not None:
                bf = buf.float()
                t[d + "b"] = proj(layer, bf.double(), vec.double())
                t[d + "ba"] = self._reduce(layer, d, proj(layer, bf.abs(), avec).double())
                t[d + "be"] = t[d + "ba"] * (2.0 ** -50 * max(layer.m, layer.n * layer.ksz))
            else:
                for s in ("b", "ba", "be"):
                    t.pop(d + s, None)
        if not layer.conv:
            # row / column norms of W (and of the momentum buffer): the linear checks' tolerances
            wd64 = w.double()
            t["Nw"], t["Mw"] = wd64.norm(dim=1), wd64.norm(dim=0)
            if buf is not None:
                t["Nb"], t["Mb"] = buf.double().norm(dim=1), buf.double().norm(dim=0)
        self._refresh_check_mats(layer)

    @staticmethod
    def _reduce(layer, d, bound):
        """Conv layers keep the abs bounds as their max over the wide channel (n for q, m for v): the
        checks' tolerances then need only channel-norm maps of the activations (one pass each)."""
        if not layer.conv:
            return bound
        return bound.amax(dim=1, keepdim=True) if d == "q" else bound.amax(dim=0, keepdim=True)

    def _refresh_check_mats(self, layer):
        """float32 copies of the projections and the error bounds used by the checks this step."""
        t = layer.t
        t["q32"], t["v32"] = t["qw"].float(), t["vw"].float()
        if "rho_t" not in t:  # the check vectors as rows (k×m, k×n): the decoding pass contracts results with them
            t["rho_t"], t["sigma_t"] = t["rho"].t().contiguous(), t["sigma"].t().contiguous()
        if layer.conv:
            # |Yρ - X q|: the worker's product and the check's X q (float32, K terms each, both on partial sums
            # ≤ |X||W|ᵀ|ρ| after weighting by ρ: Σ_m ρ_m² K S_m² ≤ K (Σ_m |ρ_m| S_m)²) and Y ρ (m terms, on
            # |Y||ρ| ≤ |X||W|ᵀ|ρ|): one Azuma bound on all their roundings (_rounding_bound), + 2u for q's
            # rounding to float32 + drift
            K, Kv = layer.n * layer.ksz, layer.m * layer.ksz
            qf = _rounding_bound((K, 1.0), (K, 1.0), (layer.m, 1.0))
            vf = _rounding_bound((Kv, 1.0), (Kv, 1.0), (layer.n, 1.0))
            t["qtol"] = (t["qwa"] * (qf + 2 * U32) + LAMBDA * t["qwe"]).float()
            t["vtol"] = (t["vwa"] * (vf + 2 * U32) + LAMBDA * t["vwe"]).float()
        else:
            # the checks' vectors (k×cols, rows of one matrix), several per read of an activation (see
            # _encode_forward, _encode_grad_input)
            t["q_t"] = t["q32"].t().contiguous()
            t["q_sigma_asigma_t"] = torch.cat([t["q_t"], t["sigma_t"], t["asigma"].t()])
            t["v_rho_t"] = torch.cat([t["v32"].t(), t["rho_t"]])
            # Linear: per-row tolerances (all O(k) per row given the rows' norms):
            #   Σ_j ρ_j err_ij: all roundings of row i's products together, each on a partial sum of
            #   Σ_k |x_ik||W_jk| ≤ ‖x_i‖‖W_j‖, Σ_t c_t² ≤ n·that² per product (Azuma, see LAMBDA):
            #   λ √n u ‖x_i‖ (Σ_j ρ_j² ‖W_j‖²)^½ ; the check's own products (double accumulation in the
            #   encode / decode pass, see _dot64; with q's rounding to float32): ‖x_i‖‖q‖ + ‖y_i‖‖ρ‖ times a few u ;
            #   drift λ ‖x_i‖‖e‖ (e in σ units, see _advance).
            if "rho2t" not in t:  # ρ and σ are drawn once per layer: their squares and norms are constants
                t["rho2t"] = (t["rho"].double() ** 2).t()
                t["sigma2t"] = (t["sigma"].double() ** 2).t()
                t["ftol_y"] = (_dot64(layer.m) * t["rho"].double().norm(dim=0)).float()
                t["btol_x"] = (_dot64(layer.n) * t["sigma"].double().norm(dim=0)).float()
            rq = (t["rho2t"] @ t["Nw"] ** 2).sqrt()
            rv = (t["sigma2t"] @ t["Mw"] ** 2).sqrt()
            t["ftol_x"] = (_azuma(layer.n) * rq + _dot64(layer.n) * t["qw"].norm(dim=0)
                           + LAMBDA * t["qwe"].norm(dim=0)).float()
            t["btol_g"] = (_azuma(layer.m) * rv + _dot64(layer.m) * t["vw"].norm(dim=0)
                           + LAMBDA * t["vwe"].norm(dim=0)).float()

    def _verify_held(self, layer, w, which, op):
        t = layer.t
        w = w.reshape(layer.site.weight_shape).float()
        for d, proj, vec in (("q", self._proj_q, t["rho"]), ("v", self._proj_v, t["sigma"])):
            got = proj(layer, w.double(), vec.double())
            want, bound = t[d + which], t[d + which + "a"]
            # the tracked drift (σ units: λ·e, see _advance) + this projection's own double rounding
            # (and the tracker's at its reset: both ≤ 2^-50·K·bound, K the longest sum)
            tol = LAMBDA * t[d + which + "e"] + bound * (2.0 ** -49 * max(layer.m, layer.n * layer.ksz)) + 1e-30
            self._verdict(layer.site.name, op, (got - want).abs(), tol, operands=(want, tol), kind="held",
                          detail=f"worker-held {'weights' if which == 'w' else 'momentum'} do not match "
                                 f"the tracked check projections")

    def _fail_if(self, ok, layer_name, op, detail):
        self.runtime.ledger.record_check(passed=ok)
        if not ok:
            raise IntegrityError(layer=layer_name, op=op, step=self.runtime.step, detail=detail)

    def _verdict(self, layer_name, op, residual, tol, *, operands, kind, detail):
        """Judge one check: ``residual = |result side − operand side| ≤ tol`` elementwise.

        ``operands``: the check's operand side (what the enclave computed from its own plaintext and tracked
        projections, before or without the worker's result).  If any of it is NaN / Inf, the enclave's own
        values diverged (an honest worker cannot cause that: its results only reach the operand side after
        passing their own checks): :class:`TrainingDiverged` (exit 1), not an integrity violation.  A
        non-finite result with a finite operand side fails the check (NaN compares false; an Inf makes the
        residual or the tolerance's result term infinite): exit 3.
        ``kind`` names the check family for the used-fraction statistics (:meth:`tolerance_report`)."""
        for tensor in operands:
            if not all_finite(tensor):
                raise TrainingDiverged(step=self.runtime.step,
                                       detail=f"non-finite values on the trusted side in layer {layer_name!r}, "
                                              f"op {op!r} (the operands of its check)")
        # one reduction decides: the largest residual / tolerance.  A NaN anywhere makes it NaN (fails); a
        # tolerance with result-side terms (the result's norms) is finite only if the result is, so an Inf in a
        # result, which could pass against an Inf tolerance, is caught by the tolerance's own finiteness
        # (a zero tolerance with a zero residual, e.g. an all-zero row, is 0, not 0/0: tol clamped to the tiniest float)
        used = float((residual / tol.clamp_min(torch.finfo(tol.dtype).tiny)).max()) if residual.numel() else 0.0
        ok = used <= 1.0 and all_finite(tol)
        if not ok:
            ratio = float(torch.nan_to_num(residual / tol, nan=float("inf")).max()) if residual.numel() else 0.0
            detail = f"{detail} (residual up to {ratio:.3g}x the tolerance)"
        elif residual.numel():
            stats = self._used.setdefault(kind, [0.0, 0])
            stats[0], stats[1] = max(stats[0], used), stats[1] + 1
        self._fail_if(ok, layer_name, op, detail)

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
        requests = []
        for k, (lo, hi) in enumerate(layer.blocks):
            if layer.conv:
                req = Request("bilinear", {"A": Sent(xe, "obfuscated"), "B": Ref(f"{layer.h}/w")},
                              Tag(rt.step, site.name, "forward"), params={"fn": "conv2d", **site.conv_params})
            else:
                req = Request("matmul_nt", {"A": Sent(xe, "obfuscated"), "B": Ref(f"{layer.h}/w")},
                              Tag(rt.step, site.name, "forward"))
            if training:
                req.keep = {"A": f"{layer.h}/x"}
            requests.append((k, req))
        parts = [reply.result for reply in self._call_each(requests)]
        with rt.ledger.timed("decode_verify"):
            ye = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            y, lhs, y_norm = self._decode_result(layer, ye, (pb, cb), "rho")
            self._check(layer, "forward", expected, lhs, y_norm)
        return y.to(x.dtype)

    def fused_forward(self, site, x, weight, bias, spec):
        """A fused layer's forward: returns ``(z, argmax or None)``, ``z = pool(act(X Wᵀ + b))``.

        Soundness first: the worker computes only the product, which is Freivalds-checked like every forward
        result (:meth:`forward`); bias, activation and max-pool run in the enclave on the verified result.  A
        ReLU or a max-pool applied by the worker cannot be checked against the operands (neither is
        invertible: the check ``Y ρ = X q`` needs all of ``Y``), and checking them against a returned
        pre-activation costs the enclave what applying them does — so they are not fused on the worker
        (``summary()["fused_integrity"]``).  The backward (mask from the output's sign, scatter through the
        argmax positions) is the fused module's own (:mod:`blindtrain.tempo.fuse`)."""
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

    # Every check is split in two: its operand side (``X q`` and the tolerance's activation terms) is computed
    # before the worker is called, from the plaintext the enclave has just encoded (still in its caches), and
    # its result side (``Y ρ``) from the result as it is decoded.  The encode and decode passes (gather: one
    # read per row) also take the contractions and norms the checks need; a conv layer's ``X q`` (3×3 taps) is
    # a thin product of its own (tempo.thin).
    @staticmethod
    def _epoch_const(key, name, make):
        """``make()``, a constant of the key epoch, kept in the layer's key."""
        if name not in key:
            key[name] = make()
        return key[name]

    def _encode_forward(self, layer, x, pb, cb):
        """``X′ = (c_b X s)[π_b][:, π_n]`` and the forward check's operand side: ``X q`` and the tolerance's
        ``X`` terms (in training also what the weight-gradient projections need from this read of ``X``:
        ``X σ``, the rows' norms, and ``X |σ|`` when X ≥ 0, as after a ReLU)."""
        key, t = layer.key, layer.t
        ledger = self.runtime.ledger
        training = layer.site.module.training
        scales = self._epoch_const(key, "s_pn", lambda: key["s"][key["pn"]])
        if layer.conv:
            with ledger.timed("encode"):
                g = gather(x, pb, key["pn"], cb[pb], scales, src_min=True)
            with ledger.timed("decode_verify"):
                return g.out, self._expect_conv_forward(layer, x, nonneg=g.src_min >= 0)
        k = t["q_t"].shape[0]
        with ledger.timed("encode"):
            g = gather(x, pb, key["pn"], cb[pb], scales, src_vecs=t["q_sigma_asigma_t"] if training else t["q_t"],
                       src_norm=True, src_min=training)
            if training:
                layer.saved = {"of": _ident(x), "xs": g.src_dot[:, k:2 * k], "xn": g.src_norm,
                               "xas": g.src_dot[:, 2 * k:] if g.src_min >= 0 else None}
            return g.out, {"rhs": g.src_dot[:, :k], "tol": g.src_norm * t["ftol_x"]}

    def _expect_conv_forward(self, layer, x, *, nonneg):
        """The operand side of a conv layer's forward check (see :meth:`_encode_forward`); ``nonneg``: X ≥ 0."""
        t = layer.t
        training = layer.site.module.training
        cp = layer.site.conv_params
        k = t["sigma"].shape[1]
        ones = torch.ones(1, layer.n)
        rhs, extra = thin.conv(x, t["q32"], cp, extra=torch.cat([t["sigma"].t(), ones]))
        xs, csum = extra[:, :k], extra[:, k:]
        # |X| ⋆ T ≤ (Σ_n |X_n|) ⋆ max_n T ; after a ReLU X ≥ 0 and Σ_n |X_n| comes with the GEMM
        l1x = csum if nonneg else _l1(x)
        tol = thin.conv(l1x, t["qtol"], cp)
        if training:  # what the weight-gradient projections need, from this read of X (X ≥ 0: no max map)
            layer.saved = {"of": _ident(x), "xs": xs, "l1x": l1x, "linfx": None if nonneg else _linf(x)}
        return {"rhs": rhs, "tol": tol}

    def _decode_result(self, layer, encoded, batch_key, vectors):
        """Decode a result the worker returned, ``R′ = (c_b R c)[π_b][:, π]`` (``vectors = "rho"``: Y, on the
        outputs (π_m, c); ``"sigma"``: dX, on the inputs (π_n, s)), and take its check's result side.

        Returns ``(R, R V, ‖r_b‖)`` from one pass (``R V`` per row, or per pixel of a conv result; the rows'
        norms, for a linear layer's tolerance, else None)."""
        pb, cb = batch_key
        key = layer.key
        perm, scales = (key["pm"], key["c"]) if vectors == "rho" else (key["pn"], key["s"])
        g = gather(encoded, self._inverse(pb), self._inverse(perm), self._reciprocal(cb), self._reciprocal(scales),
                   out_vecs=layer.t[vectors + "_t"], out_norm=not layer.conv)
        return g.out, g.out_dot, g.out_norm

    #: per checked op: the tracker entry of the tolerance's result term (linear layers) and what failed
    _CHECKED = {"forward": ("ftol_y", "forward result"), "grad_input": ("btol_x", "input gradient")}

    def _check(self, layer, op, expected, lhs, result_norm):
        """The result side of a check: ``|lhs − rhs| ≤ CHECK_MARGIN·tol`` row by row, with ``lhs = R V`` (``Y ρ`` or
        ``dX σ``) and ``rhs``, ``tol`` from the operand side; linear layers add the tolerance's result term
        ``‖r_i‖ · γ‖V‖`` (``result_norm``: the rows' norms)."""
        result_tol, what = self._CHECKED[op]
        tol = expected["tol"]
        if not layer.conv:
            tol = tol + result_norm * layer.t[result_tol]
        self._verdict(layer.site.name, op, (lhs - expected["rhs"]).abs(), CHECK_MARGIN * tol + 1e-30,
                      operands=(expected["rhs"], expected["tol"]), kind=op, detail=f"{what} fails the Freivalds check")

    # The backward of a weighted layer (DESIGN.md): G₁ (the forward's batch permutation, fresh batch scales)
    # gives the input gradient, G₂ (the forward's batch key) the weight gradient.  G₂ is G₁ rescaled by a
    # rank-one factor of powers of two; with worker-held weights both products go in one message per worker,
    # G₁ crosses once and the worker rescales it (see _g2_factors).
    def _encode_grad_input(self, layer, gy, input_shape):
        """``G₁ = (c′_b dY / c)[π_b][:, π_m]``: the forward's batch permutation π_b (a fresh one if this
        layer ran no training forward of this batch size) and fresh scales c′_b; and the input-gradient
        check's operand side: ``dY v`` and the tolerance's ``dY`` terms (and ``dY ρ`` and the norms the
        weight-gradient projections need, from this read of ``dY``).  Returns G₁, its batch key
        ``(π_b, c′_b)`` and the operand side."""
        b = gy.shape[0]
        key, t = layer.key, layer.t
        ledger = self.runtime.ledger
        with ledger.timed("encode"):
            forward = layer.batch
            pb = forward[0] if forward is not None and forward[0].numel() == b else self._fresh("perm", b)
            cb = self._fresh("scales", b)
            scales = self._epoch_const(key, "rc_pm", lambda: self._reciprocal(key["c"])[key["pm"]])
            if not layer.conv:
                k = t["v32"].shape[1]
                g = gather(gy, pb, key["pm"], cb[pb], scales, src_vecs=t["v_rho_t"], src_norm=True)
                layer.saved_g = {"of": _ident(gy), "gr": g.src_dot[:, k:], "gn": g.src_norm}
                return g.out, (pb, cb), {"rhs": g.src_dot[:, :k], "tol": g.src_norm * t["btol_g"]}
            g = gather(gy, pb, key["pm"], cb[pb], scales, src_abs=True)  # Σ_m |dY| and max_m |dY| maps
        with ledger.timed("decode_verify"):
            return g.out, (pb, cb), self._expect_conv_grad_input(layer, gy, input_shape, l1g=g.src_l1,
                                                                 linfg=g.src_linf)

    def _encode_grad_weight(self, layer, grad_y):
        """``G₂ = (dY c / c_b)[π_b][:, π_m]`` under the forward's batch key ``(π_b, c_b)``, by its own gather."""
        pb, cb = layer.batch
        with self.runtime.ledger.timed("encode"):
            return self._enc(grad_y.float(), pb, layer.key["pm"], 1.0 / cb, layer.key["c"])

    def _g2_factors(self, layer, g1_scales):
        """The rank-one factor of ``G₂ = G₁ ⊙ (rows ⊗ cols)`` when G₁ (batch key ``(π_b, c′_b)``) shares
        the forward's batch permutation: ``rows = (1/(c_b c′_b))[π_b]``, ``cols = (c²)[π_m]`` (powers of two,
        exact).  They cross in the clear: the worker that holds G₁ and G₂ learns the quotient G₂/G₁ = rows ⊗
        cols anyway; what the factors add is how a common factor splits between them, and their entries
        for rows or columns of G₁ that are entirely zero."""
        pb, cb = layer.batch
        key = layer.key
        return (1.0 / (cb * g1_scales))[pb], self._epoch_const(key, "c2_pm", lambda: (key["c"] ** 2)[key["pm"]])

    @staticmethod
    def _block(layer, g, lo, hi):
        """The operand worker block ``[lo, hi)`` of the output channels gets: ``g[:, lo:hi]``, as sent."""
        return Sent(g if len(layer.blocks) == 1 else g[:, lo:hi].contiguous(), "obfuscated")

    def _grad_input_product(self, layer, g1, lo, hi, input_shape):
        """Worker block ``[lo, hi)`` of the output channels: ``G₁[:, lo:hi] W′[lo:hi]`` (a partial sum)."""
        product = {"op": "grad_input", "A": self._block(layer, g1, lo, hi), "B": Ref(f"{layer.h}/w")}
        if layer.conv:
            return {**product, "fn": "conv2d_input",
                    "params": {**layer.site.conv_params, "input_size": tuple(input_shape)}}
        return {**product, "fn": "matmul", "params": {}}

    def _grad_weight_product(self, layer, g, lo, hi, *, keep, factors=None):
        """Worker block ``[lo, hi)``: ``G₂[:, lo:hi]ᵀ X′`` — already in the weight's key; ``keep``: it stays
        on the worker for the SGD step.  ``g``: the block's G₂ operand (see :meth:`_block`), or with
        ``factors = (rows, cols)`` its G₁ operand, which the worker rescales to G₂ (see :meth:`_g2_factors`)."""
        product = {"op": "grad_weight", "keep": f"{layer.h}/g" if keep else None}
        if factors is not None:
            rows, cols = factors
            product["scale"] = {"operand": "B" if layer.conv else "A", "rows": Sent(rows, "public"),
                                "cols": Sent(cols[lo:hi].contiguous(), "public")}
        if layer.conv:
            return {**product, "fn": "conv2d_weight", "A": Ref(f"{layer.h}/x"), "B": g,
                    "params": {**layer.site.conv_params, "weight_size": (hi - lo, layer.n, *layer.kernel)}}
        return {**product, "fn": "matmul_tn", "A": g, "B": Ref(f"{layer.h}/x"), "params": {}}

    def _request(self, layer, product):
        """One product as a plain ``bilinear`` request."""
        extra = {"keep_result": product["keep"], "return_result": False} if product.get("keep") else {}
        return Request("bilinear", {"A": product["A"], "B": product["B"]},
                       Tag(self.runtime.step, layer.site.name, product["op"]),
                       params={"fn": product["fn"], **product["params"]}, **extra)

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
        g1, batch_key, expected = self._encode_grad_input(layer, grad_y.float(), input_shape)
        shared = layer.batch is not None and batch_key[0] is layer.batch[0]
        factors = self._g2_factors(layer, batch_key[1]) if shared else None
        g2 = None if shared else self._encode_grad_weight(layer, grad_y)
        self._hold_grad_projections(layer, x, grad_y)
        tag = Tag(self.runtime.step, site.name, "backward")
        requests = []
        for k, (lo, hi) in enumerate(layer.blocks):
            grad_input = self._grad_input_product(layer, g1, lo, hi, input_shape)
            g = grad_input["A"] if shared else self._block(layer, g2, lo, hi)
            grad_weight = self._grad_weight_product(layer, g, lo, hi, keep=True, factors=factors)
            requests.append((k, bilinear_products(tag, [grad_input, grad_weight])))
        parts = [reply.result for reply in self._call_each(requests)]
        return self._finish_grad_input(layer, parts, batch_key, expected, grad_y.dtype), None

    def _hold_grad_projections(self, layer, x, grad_y):
        """The worker keeps the weight gradient; the enclave keeps its projections for ``optimizer.step()``."""
        with self.runtime.ledger.timed("decode_verify"):
            layer.pending = self._grad_projections(layer, x.detach().float(), grad_y.float())

    def _expect_conv_grad_input(self, layer, gy, input_shape, *, l1g, linfg):
        """The operand side of a conv layer's input-gradient check (see :meth:`_encode_grad_input`), given the
        channel maps ``Σ_m |dY|`` and ``max_m |dY|``."""
        t = layer.t
        cp = layer.site.conv_params
        size = (input_shape[0], t["sigma"].shape[1], *input_shape[2:])
        rhs, gr = thin.conv_input(gy, t["v32"], size, cp, extra=t["rho"].t())
        # Σ_m |dY| for the tolerance here, max_m |dY| for the weight-gradient bounds
        layer.saved_g = {"of": _ident(gy), "gr": gr, "l1g": l1g, "linfg": linfg}
        return {"rhs": rhs, "tol": thin.conv_input(l1g, t["vtol"], size, cp)}

    def _grad_projections(self, layer, x, gy):
        """Projections of the weight gradient dW on ρ and σ (and their abs bounds), from plaintext x, dY."""
        t = layer.t
        if layer.conv:
            cp, kernel = layer.site.conv_params, layer.kernel
            fx = getattr(layer, "saved", None) or {}
            fg = getattr(layer, "saved_g", None) or {}
            layer.saved = layer.saved_g = None
            if fx.get("xs") is None or fx.get("of") != _ident(x):
                fx = {"xs": thin.channels(x, t["sigma"]), "l1x": _l1(x), "linfx": _linf(x)}
            if fg.get("gr") is None or fg.get("of") != _ident(gy) or fg.get("linfg") is None:
                fg = {"gr": thin.channels(gy, t["rho"]), "l1g": _l1(gy), "linfg": _linf(gy)}
            # bounds on max_n |ΔW|ᵀ|ρ| and max_m |ΔW||σ| from channel-norm maps (|ρ|, |σ| ≤ 1):
            # |ΔW|ᵀ|ρ| ≤ |X| ⋆ Σ_m|dY| per input channel; when X ≥ 0 (after a ReLU) that is one more channel of
            # q's product, and its max over the channels bounds tighter than (max_n |X|) ⋆ Σ_m|dY|
            if fx["linfx"] is None:
                J = fg["gr"].shape[1]
                both = thin.conv_weight_thin_out(x, torch.cat([fg["gr"], fg["l1g"]], 1), kernel, cp)
                q, qa = both[:J], both[J:].amax(dim=1, keepdim=True)
            else:
                q = thin.conv_weight_thin_out(x, fg["gr"], kernel, cp)
                qa = thin.conv_weight_thin_out(fx["linfx"], fg["l1g"], kernel, cp)
            v = thin.conv_weight_thin_in(fx["xs"], gy, kernel, cp)
            va = thin.conv_weight_thin_in(fx["l1x"], fg["linfg"], kernel, cp)
            rows = gy.shape[0] * gy.shape[2] * gy.shape[3]
        else:
            # X σ, ‖x_b‖ from the forward check and dY ρ, ‖dy_b‖ from the input-gradient check when they were
            # computed from these very tensors (same storage and shape); else computed here
            fx = layer.saved if layer.saved is not None and layer.saved.get("of") == _ident(x) else None
            fg = layer.saved_g if layer.saved_g is not None and layer.saved_g.get("of") == _ident(gy) else None
            layer.saved = layer.saved_g = None
            xs, xn = (fx["xs"], fx["xn"]) if fx else (_thin(x, t["sigma"]), x.norm(dim=1, keepdim=True))
            gr, gn = (fg["gr"], fg["gn"]) if fg else (_thin(gy, t["rho"]), gy.norm(dim=1, keepdim=True))
            agy = gy.abs()
            k = gr.shape[1]
            # q = Xᵀ(dY ρ); its abs bound |X|ᵀ(|dY||ρ|) and the norm bounds of the gradient's rows / columns,
            # ‖Σ_b g_bj x_b‖ ≤ Σ_b |g_bj| ‖x_b‖, are products with |X| and |dY|, several per read
            x_side = torch.cat([gr, _thin(agy, t["arho"]), gn], 1)
            xas = fx["xas"] if fx else None
            if xas is not None:  # X ≥ 0 (checked in the forward): |X| = X, one product for all three
                qq = _thin(x.t(), x_side)
                q, qm = qq[:, :k], qq[:, k:]
            else:
                ax = x.abs()
                q, qm = _thin(x.t(), gr), _thin(ax.t(), x_side[:, k:])
                xas = _thin(ax, t["asigma"])
            v = _thin(gy.t(), xs)
            vn = _thin(agy.t(), torch.cat([xas, xn], 1))
            qa, va = qm[:, :k], vn[:, :k]
            rows = x.shape[0]
            norms = {"N": vn[:, k].double(), "M": qm[:, k].double()}
        # the gradient projections' rounding drift in σ units (see LAMBDA, _advance): the worker's product
        # (rows terms), the tracker's two thin products (rows terms) and dY ρ / X σ (max(m, n) terms), and four
        # single roundings, all on partial sums ≤ the abs bound: one martingale, Σ c² ≤ (3 rows + max(m, n) + 4)·bound²
        err = U32 * math.sqrt(3 * rows + max(layer.m, layer.n) + 4)
        out = {"q": q.double(), "qa": qa.double(), "qe": qa.double() * err,
               "v": v.double(), "va": va.double(), "ve": va.double() * err}
        if not layer.conv:
            out.update(norms)
        return out

    def grad_weight(self, site, x, grad_y, weight_shape):
        layer = site.state["tempo"]
        rt = self.runtime
        key = layer.key
        g2 = self._encode_grad_weight(layer, grad_y)
        if layer.resident:
            self._hold_grad_projections(layer, x, grad_y)
            self._call_each([(k, self._request(layer, self._grad_weight_product(
                layer, self._block(layer, g2, lo, hi), lo, hi, keep=True))) for k, (lo, hi) in enumerate(layer.blocks)])
            return None
        # enclave-side update: the obfuscated gradient comes back, is decoded and checked
        parts = [reply.result for reply in self._call_each(
            [(k, self._request(layer, self._grad_weight_product(layer, self._block(layer, g2, lo, hi), lo, hi,
                                                                keep=False)))
             for k, (lo, hi) in enumerate(layer.blocks)])]
        with rt.ledger.timed("decode_verify"):
            dw = self._dec(torch.cat(parts), key["pm"], key["pn"], key["c"], key["s"])
            proj = self._grad_projections(layer, x.detach().float(), grad_y.float())
            t = layer.t
            got = self._proj_q(layer, dw.double(), t["rho"].double())
            # the gradient's rounding (worker product and tracker, σ units: λ·qe, see _grad_projections) + this
            # projection's own double rounding (≤ 2^-50·m·|dW|ᵀ|ρ|)
            tol = LAMBDA * proj["qe"] + proj["qa"] * (2.0 ** -49 * layer.m * layer.ksz) + 1e-30
            self._verdict(site.name, "grad_weight", (got - proj["q"]).abs(), tol, operands=(proj["q"], tol),
                          kind="grad_weight", detail="weight gradient fails the Freivalds check")
        return dw.to(x.dtype)

    # ----------------------------------------------------- the optimizer step -----
    def _after_optimizer_step(self, optimizer, args, kwargs):
        """Apply SGD to the worker-held weights (in their key) and advance the check projections.

        One ``sgd_step`` message per worker carries the updates of all its layers."""
        rt = self.runtime
        updates = []  # (layer, projections of its weight gradient, SGD hyperparameters)
        for layer in self.layers.values():
            P, layer.pending = layer.pending, None
            if P is None:
                continue
            group = self._group_of(layer.param)
            if group is None:
                self._drop_grad(layer)
                continue
            updates.append((layer, P, (float(group["lr"]), float(group.get("momentum", 0.0)),
                                       float(group.get("dampening", 0.0)), float(group.get("weight_decay", 0.0)),
                                       bool(group.get("nesterov", False)))))
        with rt.ledger.timed("decode_verify"):  # the projections follow the update; they need no answer
            cohorts: dict[tuple, list] = {}  # layers whose recurrences take the same coefficients
            for layer, P, hyper in updates:
                cohorts.setdefault((hyper, layer.has_buf), []).append((layer, P))
            for (hyper, has_buf), members in cohorts.items():
                self._advance(members, *hyper, has_buf=has_buf)
        requests = []
        for k in range(self.settings["workers"]):
            steps = [{"target": f"{layer.h}/w", "grad": f"{layer.h}/g", "buffer": f"{layer.h}/buf",
                      **dict(zip(("lr", "momentum", "dampening", "weight_decay", "nesterov"), hyper))}
                     for layer, _, hyper in updates if k < len(layer.blocks)]
            if steps:
                requests.append((k, Request("sgd_step", {}, Tag(rt.step, "*", "update"), params={"updates": steps},
                                            return_result=False)))
        self._call_each(requests)

    def _drop_grad(self, layer):
        self._call_each([(k, Request("free", {}, Tag(self.runtime.step, layer.site.name, "update"),
                                     params={"handles": [f"{layer.h}/g"]}, return_result=False))
                         for k in range(len(layer.blocks))])

    @staticmethod
    def _rounding_caps(t, P, d, lr, mu, damp, wd, nesterov, has_buf):
        """Linear layers: upper bounds of the norms ``‖c_{:,n}‖`` (track ``q``, over the m outputs) or
        ``‖c_{m,:}‖`` (track ``v``) of what each SGD operation rounds (``d``, ``b``, ``s``, the new ``w``), from
        the tracked norm bounds (the same triangle recurrences as :meth:`_advance`'s norm block).  A fresh
        rounding of a projection, ``Σ_m ρ_m δ_m c_m``, has ℓ2 coefficient norm ``≤ ‖c‖`` (|ρ| ≤ 1), up to √m
        below the abs projection ``Σ_m |ρ_m||c_m|``.  None for conv layers (abs bounds only)."""
        key = {"q": "M", "v": "N"}[d]
        if key not in P:
            return None
        wn = t[key + "w"]
        dn = P[key] + abs(wd) * wn
        bn = sn = dn
        if mu != 0:
            bn = abs(mu) * t[key + "b"] + abs(1 - damp) * dn if has_buf else dn
            sn = dn + abs(mu) * bn if nesterov else bn
        return {"d": dn, "b": bn, "s": sn, "w": (wn + abs(lr) * sn) * (1 + 4 * U32)}

    def _advance(self, members, lr, mu, damp, wd, nesterov, *, has_buf):
        """The SGD recurrences on the projections (exact, float64), their abs bounds and rounding drift.

        ``members``: ``(layer, P)`` pairs sharing the hyperparameters and ``has_buf``; every term is one
        batched ``torch._foreach_*`` op over all their projections.  Per projection (value x, abs bound xa,
        rounding drift xe; P gives the gradient's g, ga, ge):
        ``d = g + wd·w``, ``b = mu·b + (1−damp)·d`` (``b = d`` on the first step), ``s = d + mu·b`` (Nesterov)
        or ``b``, ``w ← w − lr·s``; the bounds take absolute coefficients.

        The drift ``xe`` is in σ units (see :data:`LAMBDA`): an upper bound of ``u·√(Σ_t α_t² c_t²)`` over every
        rounding ``t`` so far (``α_t``: its coefficient in the tracked quantity), so the drift itself is at most
        ``λ·xe`` under the model.  Errors from earlier steps ("old") propagate through the recurrence with
        absolute coefficients (triangle inequality on the coefficient vectors); this step's roundings ("fresh":
        the gradient's ``ge``, and per rounded operation a few ``u`` of its abs bound, ℓ2 ≤ ℓ1 over the
        projected coordinates) are independent of all earlier ones, so ``xe' = √(old² + fresh²)``: the drift
        grows as √steps, not as steps."""
        u, fe = U32, torch._foreach_add
        tracks = [(layer.t, P, d) for layer, P in members for d in ("q", "v")]

        def cap(abs_bound, caps, stage):  # the ℓ2 coefficient norm of a fresh rounding: min(abs, norm)
            return abs_bound if caps is None else torch.minimum(abs_bound, caps[stage].unsqueeze(1))

        def terms(source, suffix):
            return [source(t, P)[d + suffix] for t, P, d in tracks]

        G, GA, GE = (terms(lambda t, P: P, s) for s in ("", "a", "e"))
        W, WA, WE = (terms(lambda t, P: t, "w" + s) for s in ("", "a", "e"))
        caps = [self._rounding_caps(t, P, d, lr, mu, damp, wd, nesterov, has_buf) for t, P, d in tracks]
        zero = [torch.zeros_like(x) for x in WE]
        if wd != 0:  # (old, fresh) drift of d: old from w's drift, fresh from the gradient and d's 2 roundings
            D, DA = fe(G, W, alpha=wd), fe(GA, WA, alpha=abs(wd))
            DO = torch._foreach_mul(WE, abs(wd))
            DF = [torch.hypot(ge, 2 * u * cap(da, c, "d")) for ge, da, c in zip(GE, DA, caps)]
        else:
            D, DA, DO, DF = G, GA, zero, GE
        S, SA, SO, SF = D, DA, DO, DF
        if mu != 0:
            if has_buf:
                B, BA, BO = (torch._foreach_mul(terms(lambda t, P: t, "b" + s), c)
                             for s, c in (("", mu), ("a", abs(mu)), ("e", abs(mu))))
                torch._foreach_add_(B, D, alpha=1 - damp)
                torch._foreach_add_(BA, DA, alpha=abs(1 - damp))
                torch._foreach_add_(BO, DO, alpha=abs(1 - damp))
                BF = [torch.hypot(abs(1 - damp) * df, 3 * u * cap(ba, c, "b")) for df, ba, c in zip(DF, BA, caps)]
            else:  # b = d, copied: no rounding
                B, BA, BO, BF = ([x.clone() for x in X] for X in (D, DA, DO, DF))
            for i, (t, _, d) in enumerate(tracks):
                t[d + "b"], t[d + "ba"], t[d + "be"] = B[i], BA[i], torch.hypot(BO[i], BF[i])
            if nesterov:  # (d's and b's fresh roundings are correlated: triangle)
                S, SA, SO = fe(D, B, alpha=mu), fe(DA, BA, alpha=abs(mu)), fe(DO, BO, alpha=abs(mu))
                SF = [torch.hypot(df + abs(mu) * bf, 2 * u * cap(sa, c, "s")) for df, bf, sa, c in zip(DF, BF, SA, caps)]
            else:
                S, SA, SO, SF = B, BA, BO, BF
        W, WA = fe(W, S, alpha=-lr), fe(WA, SA, alpha=abs(lr))
        WO = fe(WE, SO, alpha=abs(lr))
        # w − lr·s: 2 roundings (+ slack)
        WF = [torch.hypot(abs(lr) * sf, 3 * u * cap(wa, c, "w")) for sf, wa, c in zip(SF, WA, caps)]
        WE = [torch.hypot(wo, wf) for wo, wf in zip(WO, WF)]
        for i, (t, _, d) in enumerate(tracks):
            t[d + "w"], t[d + "wa"], t[d + "we"] = W[i], WA[i], WE[i]
        linear = [(layer.t, P, d) for layer, P in members if not layer.conv for d in ("N", "M")]
        if linear:  # upper bounds of the rows' / columns' norms, by the triangle inequality
            G, W = [P[d] for _, P, d in linear], [t[d + "w"] for t, _, d in linear]
            S = fe(G, W, alpha=abs(wd)) if wd != 0 else G
            if mu != 0:
                if has_buf:
                    B = torch._foreach_mul([t[d + "b"] for t, _, d in linear], abs(mu))
                    torch._foreach_add_(B, S, alpha=abs(1 - damp))
                else:
                    B = [x.clone() for x in S]
                for (t, _, d), b in zip(linear, B):
                    t[d + "b"] = b
                S = fe(S, B, alpha=abs(mu)) if nesterov else B
            W = fe(W, S, alpha=abs(lr))
            torch._foreach_mul_(W, 1 + 4 * u)
            for (t, _, d), w in zip(linear, W):
                t[d + "w"] = w
        for layer, _ in members:
            if mu != 0:
                layer.has_buf = True
            self._refresh_check_mats(layer)

    # ------------------------------------------------- both-private products ------
    def _bmm(self, site, op, a, b):
        """``a @ b`` (…×p×q, …×q×r), both operands obfuscated under fresh keys, checked."""
        rt = self.runtime
        lead = a.shape[:-2]
        p, q = a.shape[-2:]
        r = b.shape[-1]
        a3 = a.detach().float().reshape(-1, p, q)
        b3 = b.detach().float().reshape(-1, q, r)
        L = a3.shape[0]
        with rt.ledger.timed("encode"):
            keys = self._step_keys(op != "forward" or site.module.training)
            pl, pp, pq, pr = (self._perm(L, keys), self._perm(p, keys), self._perm(q, keys), self._perm(r, keys))
            sq = self._signs(q, keys)
            ca, cr = self._pow2(p, keys), self._pow2(r, keys)
            ae = a3.index_select(0, pl).index_select(1, pp).index_select(2, pq)
            ae.mul_(ca[pp].view(1, -1, 1) * sq[pq].view(1, 1, -1))
            be = b3.index_select(0, pl).index_select(1, pq).index_select(2, pr)
            be.mul_(sq[pq].view(1, -1, 1) * cr[pr].view(1, 1, -1))
        blocks = self._blocks(p)
        requests = []
        for k, (lo, hi) in enumerate(blocks):
            part = ae if len(blocks) == 1 else ae[:, lo:hi].contiguous()
            requests.append((k, Request("bilinear", {"A": Sent(part, "obfuscated"), "B": Sent(be, "obfuscated")},
                                        Tag(rt.step, site.name, op), params={"fn": "bmm"})))
        parts = [reply.result for reply in self._call_each(requests)]
        with rt.ledger.timed("decode_verify"):
            ye = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            y = ye.index_select(0, self._inverse(pl)).index_select(1, self._inverse(pp)).index_select(
                2, self._inverse(pr))
            y.mul_((1.0 / ca).view(1, -1, 1) * (1.0 / cr).view(1, 1, -1))
            k = self.settings["check_vectors"]
            rho = self._uniform((r, k), keys)
            lhs = y @ rho
            rhs = a3 @ (b3 @ rho)
            # every rounding in |Yρ − A(Bρ)| under one Azuma bound (_rounding_bound): the worker's A B (q terms,
            # weighted by ρ: Σ_j ρ_j² q S_ij² ≤ q T1², T1 = |A|(|B||ρ|)), the check's Bρ (r terms, ≤ |B||ρ|,
            # carried through A: ≤ r T1²), A(Bρ) (q terms, ≤ T2 = |A||Bρ|) and Yρ (r terms, ≤ T3 = |Y||ρ|)
            t1 = a3.abs() @ (b3.abs() @ rho.abs())
            t2 = a3.abs() @ (b3 @ rho).abs()
            t3 = y.abs() @ rho.abs()
            operand_tol = t1 + t2  # (finite iff the enclave's operands are)
            tol = _rounding_bound((q, t1), (r, t1), (q, t2), (r, t3))
            self._verdict(site.name, op, (lhs - rhs).abs(), CHECK_MARGIN * tol + 1e-30, operands=(rhs, operand_tol),
                          kind="attention", detail="attention product fails the Freivalds check")
        return y.reshape(*lead, p, r).to(a.dtype)

    def matmul(self, site, a, b):
        return self._bmm(site, "forward", a, b)

    def matmul_grads(self, site, a, b, grad_y, needs):
        grad_a = grad_b = None
        if needs[0]:
            grad_a = self._bmm(site, "grad_input", grad_y, b.transpose(-2, -1))
        if needs[1]:
            grad_b = self._bmm(site, "grad_weight", a.transpose(-2, -1), grad_y)
        return grad_a, grad_b

    # ------------------------------------------------------------ resuming ------
    #: a layer's key entries that are state (the rest is derived from them on demand)
    _KEY_ENTRIES = ("pn", "pm", "s", "c")

    def state_dict(self) -> dict:
        """Per layer: key epoch and its start step, the weight key, whether the worker holds a momentum
        buffer, and the check vectors and tracked projections (SECRET: keys; for the sealed checkpoint only).
        With the runtime's CSPRNG state and the plaintext model / optimizer state, a resumed run sends the
        workers exactly the ``W′`` they held and draws exactly the keys the uninterrupted run draws."""
        layers = {}
        for name, layer in self.layers.items():
            if layer.pending is not None:
                raise UsageError("tempo: save the session state after optimizer.step(), not between a backward "
                                 "and its step")
            layers[name] = {
                "epoch": layer.epoch, "epoch_start": layer.epoch_start, "has_buf": layer.has_buf,
                # whether the key epoch covers the current weights (else the next forward starts a new one)
                "current": layer.key is not None and (layer.resident or layer.param._version == layer.encrypted_version),
                "key": None if layer.key is None else {k: layer.key[k].clone() for k in self._KEY_ENTRIES},
                "trackers": {k: v.clone() for k, v in layer.t.items() if torch.is_tensor(v)},
            }
        return {"rotations": self.rotations, "layers": layers}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (after ``prepare`` and the plaintext model / optimizer state).
        A layer whose key epoch covered the saved weights sends ``W′`` (and the buffer) under the restored key
        at its next forward, without a new epoch; one whose weights changed since (enclave-side updates)
        starts its next epoch there, as the uninterrupted run does."""
        saved_layers = state.get("layers") if isinstance(state, dict) else None
        if not isinstance(saved_layers, dict) or set(saved_layers) != set(self.layers):
            raise UsageError("tempo: the checkpoint's session state does not match this model's layers")
        for name, saved in saved_layers.items():
            layer = self.layers[name]
            layer.epoch, layer.epoch_start = int(saved["epoch"]), int(saved["epoch_start"])
            layer.has_buf = bool(saved["has_buf"])
            layer.t = {k: v.clone() for k, v in saved["trackers"].items()}
            if saved["key"] is None:
                layer.key = None
                continue
            layer.key = {k: saved["key"][k].clone() for k in self._KEY_ENTRIES}
            layer.blocks = self._blocks(layer.m)
            layer.encrypted_version = None  # the loaded plaintext is what the next forward encrypts ...
            layer.restore = bool(saved["current"])  # ... under the restored key, or under a new epoch's
            if "qw" in layer.t:
                self._refresh_check_mats(layer)
        self.rotations = int(state.get("rotations", 0))

    # -------------------------------------------------------------- reporting ------
    def privacy(self) -> dict:
        """Per-layer key entropy and what the worker's view fixes of it (bits)."""
        e = self.settings["scale_range"]
        scale_bits = math.log2(2 * e + 1)
        out = {}
        first = next(iter(self.layers), None)
        for name, layer in self.layers.items():
            perm = _log2_factorial(layer.n) + _log2_factorial(layer.m)
            signs = float(layer.n)
            scales = layer.m * scale_bits
            out[name] = {
                "key_entropy_bits": perm + signs + scales,
                "permutation_bits": perm, "sign_bits": signs, "scale_bits": scales,
                "fixed_by_view_bits": scales,
                "effective_bits": perm + signs,
                "fixed_by_view": "output scales (row-norm ratios of W′ against the known init distribution, and "
                                 "the factor c² that rescales G₁ into G₂, sent in the clear); "
                                 "the multiset of |W| per row up to its scale; shapes",
                "batch_key_bits_per_step": (_log2_factorial(layer.last_batch) + layer.last_batch * scale_bits)
                if layer.last_batch else None,
            }
            if name == first:
                out[name]["model_input"] = (
                    "conv: the input images are visible to the worker up to a channel permutation, per-channel sign "
                    "and per-sample power-of-two scale (spatial layout kept): effectively in the clear"
                    if layer.conv else
                    "linear: input features permuted and signed under a key fixed for the key epoch; feature "
                    "statistics across the epoch's batches can pin the permutation")
        return out

    def detection(self, ratio: float = 2.0 ** 10) -> dict:
        k = self.settings["check_vectors"]
        return {"check_vectors": k,
                "miss_probability_bound": "(tolerance/|error|)^k per checked result",
                f"miss_probability_at_error_{int(ratio)}x_tolerance": ratio ** -k,
                "soundness_bits_at_that_error": k * math.log2(ratio)}

    def tolerance_report(self) -> dict:
        """Per check family: the largest fraction of its tolerance an honest-passing check used, the checks
        passed, and the headroom ``tolerance / largest residual`` (how much larger than any honest residual
        seen an error must be to be caught for sure)."""
        out = {}
        for kind, (used, count) in sorted(self._used.items()):
            out[kind] = {"max_used_fraction": used, "checks": count,
                         "headroom": (1.0 / used) if used > 0 else None}
        worst = max((used for used, _ in self._used.values()), default=0.0)
        return {"max_used_fraction": worst, "headroom": (1.0 / worst) if worst > 0 else None, "per_check": out}

    def summary(self) -> dict:
        layers = {}
        for name, layer in self.layers.items():
            held = [v for v in layer.t.values() if torch.is_tensor(v)]
            held += [v for v in (layer.key or {}).values() if torch.is_tensor(v)]
            state = sum(v.numel() * v.element_size() for v in held)
            plain = layer.param.numel() * layer.param.element_size()
            layers[name] = {"epoch": layer.epoch, "resident_on_worker": layer.resident,
                            "enclave_state_bytes": state, "enclave_plaintext_weight_bytes": plain,
                            "weight_bytes": layer.m * layer.n * layer.ksz * 4}
        self.runtime.ledger.integrity_soundness_bits = self.detection()["soundness_bits_at_that_error"]
        return {"options": dict(self.settings),
                "rotate_every": self.settings["rotate_every"], "rotations": self.rotations,
                "fused_activations": self.settings["fuse_activations"],
                "fused_layers": list(getattr(self, "fused", [])),
                "fused_integrity": FUSED_INTEGRITY if self.settings["fuse_activations"] else None,
                "optimizer_update": "worker (SGD on W′ in place)" if any(l.resident for l in self.layers.values())
                else "enclave (decode gradient, re-encrypt each step)",
                "encode_decode_pass": gather_backend(),
                "integrity": self.detection(), "tolerance": self.tolerance_report(),
                "privacy": self.privacy(), "layers": layers}

    # -------------------------------------------------------------- cost model ------
    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        """Bytes and messages of one steady-state step (between key rotations), as the ledger counts them.

        A key rotation adds, per weighted layer, once every ``rotate_every`` steps: W′ (and the momentum
        buffer) fetched and sent again (``2 × weight bytes`` each way in total), ``2N`` messages
        (``3N`` with a buffer).  With a non-SGD optimizer (enclave-side update) the weight gradient comes back
        and W′ is re-sent every step; that is included when no optimizer state says otherwise.
        """
        from ..costs import FLOAT32, StepCost

        workers = self.settings["workers"]
        k = self.settings["check_vectors"]
        resident = all(layer.resident for layer in self.layers.values()) if self.layers else \
            self.settings["update"] != "enclave"
        cost = StepCost(workers=workers, trust="worker sees obfuscated (permuted, signed, scaled) operands")
        used = ops if training else [op for op in ops if op.op == "forward"]
        messages = sgd_workers = 0
        with_grad_input = {op.layer for op in used if op.op == "grad_input" and op.kind != "matmul"}
        for op in used:
            a, b, out = op.numel("A"), op.numel("B"), op.numel("out")
            if op.kind == "matmul":
                n = min(workers, op.a_shape[-2])
                cost.bytes_to_worker += (a + n * b) * FLOAT32
                cost.bytes_from_worker += out * FLOAT32
                cost.worker_flops += op.flops
                cost.enclave_elementwise += 2 * (a + b + out)
                cost.enclave_flops += 2 * k * (a + b + 2 * out)
                messages += n
                continue
            m = op.b_shape[0] if op.op != "grad_weight" else op.out_shape[0]
            if op.kind == "linear" and op.op == "forward":
                m = op.b_shape[1]
            elif op.kind == "linear" and op.op == "grad_input":
                m = op.b_shape[0]
            elif op.kind == "linear":
                m = op.out_shape[1]
            n = min(workers, m)
            cost.worker_flops += op.flops
            if op.op == "forward":
                cost.bytes_to_worker += n * a * FLOAT32
                cost.bytes_from_worker += out * FLOAT32
                cost.enclave_elementwise += 3 * (a + out)
                cost.enclave_flops += 4 * k * (a + out)
                messages += n
            elif op.op == "grad_input":
                cost.bytes_to_worker += a * FLOAT32
                cost.bytes_from_worker += n * out * FLOAT32
                cost.enclave_elementwise += 3 * (a + out)
                cost.enclave_flops += 4 * k * (a + out)
                messages += n
            else:
                if resident and op.layer in with_grad_input:  # G₁ crossed already: its rank-one rescaling to G₂
                    cost.bytes_to_worker += (n * op.b_shape[0] + op.b_shape[1]) * FLOAT32
                else:
                    cost.bytes_to_worker += b * FLOAT32
                    cost.enclave_elementwise += 3 * b
                cost.enclave_flops += 8 * k * (a + b)
                if resident:
                    if op.layer not in with_grad_input:
                        messages += n  # the gradient, kept on the worker (else it rides with grad_input's)
                    sgd_workers = max(sgd_workers, n)  # then one SGD message per worker for all layers
                else:
                    cost.bytes_from_worker += out * FLOAT32
                    cost.bytes_to_worker += out * FLOAT32  # re-encryption of the updated weights
                    messages += 3 * n  # gradient back, store, free (no momentum buffer on the worker)
        cost.round_trips = messages + sgd_workers
        cost.notes = [f"steady state between key rotations (every {self.settings['rotate_every']} steps); a rotation "
                      "adds 2x the layer's weight bytes (x2 with a momentum buffer), fetched then re-sent",
                      "no weight-sized tensor crosses in a steady-state step with SGD (weights stay on the worker)",
                      f"enclave per step: encode/decode passes and Freivalds checks with k={k} vectors, "
                      "O(activations), independent of the number of weights"]
        return cost
