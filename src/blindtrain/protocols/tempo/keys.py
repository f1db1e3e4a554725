"""Tempo's keys: keystreams of the enclave CSPRNG, per-step batch keys, permutations, power-of-two
scales and signs, and the constants derived from a key (inverses, reciprocals, per-epoch products)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass(eq=False)
class WeightKey:
    """A layer's weight key for one key epoch (SECRET): permutation ``pn`` and signs ``s`` of the inner
    dimension (n), permutation ``pm`` and power-of-two scales ``c`` of the output dimension (m); the worker
    holds ``W′ = (c · W · s)[π_m][:, π_n]``.  The other fields are constants of the epoch derived from these
    on first use (:meth:`Keys._epoch_const`): ``s_pn = s[π_n]``, ``rc_pm = (1/c)[π_m]``, ``c2_pm = (c²)[π_m]``."""

    pn: torch.Tensor
    pm: torch.Tensor
    s: torch.Tensor
    c: torch.Tensor
    s_pn: torch.Tensor | None = None
    rc_pm: torch.Tensor | None = None
    c2_pm: torch.Tensor | None = None

    #: the fields that are state (a checkpoint's); the rest is derived from them on demand
    STATE = ("pn", "pm", "s", "c")

    def state(self) -> dict:
        """Copies of the key proper (for the sealed checkpoint)."""
        return {name: getattr(self, name).clone() for name in self.STATE}

    @classmethod
    def from_state(cls, state: dict) -> "WeightKey":
        return cls(**{name: state[name].clone() for name in cls.STATE})

    def tensors(self) -> list:
        """Every tensor the enclave holds for this key (the key and what was derived from it)."""
        return [v for v in (getattr(self, f.name) for f in fields(self)) if torch.is_tensor(v)]


class Keys:
    """Key drawing and derived key constants (a mixin of :class:`~.protocol.Tempo`)."""

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

    @staticmethod
    def _epoch_const(key, name, make):
        """``make()``, a constant of the key epoch, kept in the layer's key (field ``name`` of
        :class:`WeightKey`)."""
        value = getattr(key, name)
        if value is None:
            value = make()
            setattr(key, name, value)
        return value
