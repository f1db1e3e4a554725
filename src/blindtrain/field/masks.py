"""One-time pads uniform in F_p from the enclave CSPRNG (ChaCha20), never reused.

Every pad is drawn under a label naming the layer, the op, the operand, the step
and a session-unique nonce; :class:`~blindtrain.crypto.Csprng` refuses a label it
has drawn before, so a pad cannot be drawn twice.  Uniformity mod p is exact
(rejection sampling in :meth:`Csprng.uniform_mod`).  The stream also keeps a
SHA-256 fingerprint of every pad handed out, so a test (or an auditor with the
enclave's cooperation) can confirm that no two pads of a run were equal.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..crypto import Csprng


class PadStream:
    """Draws pads for one protocol instance and remembers their fingerprints."""

    def __init__(self, rng: Csprng, modulus: int) -> None:
        self.rng = rng
        self.modulus = modulus
        self.drawn = 0
        self.elements = 0
        self.fingerprints: set[bytes] = set()

    def draw(self, shape, *, layer: str, op: str, operand: str, step: int, nonce: int) -> torch.Tensor:
        """A fresh pad of ``shape``, uniform in ``[0, p)`` (int64)."""
        pad = self.rng.uniform_mod(tuple(shape), self.modulus, label=("pad", layer, op, operand, step, nonce))
        self.record(pad)
        return torch.from_numpy(pad)

    def record(self, pad: np.ndarray) -> None:
        self.drawn += 1
        self.elements += pad.size
        self.fingerprints.add(hashlib.sha256(np.ascontiguousarray(pad).tobytes()).digest())

    @property
    def all_distinct(self) -> bool:
        return len(self.fingerprints) == self.drawn
