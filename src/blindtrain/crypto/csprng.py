"""A cryptographically secure random stream, keyed inside the enclave.

Every secret in blindtrain (one-time pads, permutation keys, signs, scales,
Freivalds vectors) comes from here, never from ``torch.rand`` or ``random``.

Construction: ChaCha20 (``cryptography`` package) under a 256-bit key.  Each draw
names a *label* (e.g. ``("pad", "fc1", "forward", step)``); the label is hashed
with SHA-256 into the 128-bit ChaCha20 nonce-and-counter block, so distinct labels
give independent keystreams.  A label may be drawn from once only: asking again
raises :class:`NonceReuseError`, which is how "never reuse a one-time pad" is
enforced rather than hoped for.  :meth:`Csprng.stream` opens a label's keystream for
several draws in sequence (one cipher context for, e.g., all of a step's batch keys).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class NonceReuseError(RuntimeError):
    """A keystream label was drawn from twice (a pad would have been reused)."""


def _label_bytes(label: tuple) -> bytes:
    return repr(tuple(label)).encode()


class Csprng:
    """ChaCha20 keystream generator with labelled, use-once draws.

    Args:
        key: 32 secret bytes; ``None`` draws them from the OS (``os.urandom``),
            which is what an enclave does with RDRAND / its sealed seed.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(32)
        if len(key) != 32:
            raise ValueError("Csprng key must be 32 bytes")
        self._key = key
        self._used: set[bytes] = set()

    def __repr__(self) -> str:  # never print the key
        return f"Csprng(<key hidden>, {len(self._used)} streams drawn)"

    @property
    def streams_drawn(self) -> int:
        return len(self._used)

    def export_state(self) -> dict:
        """Everything this generator is: its key and the labels drawn so far (their SHA-256 digests).

        SECRET: the key.  For the sealed checkpoint only (bit-exact resume); never log or print it.
        A generator made with :meth:`from_state` draws the same keystreams for the same labels and still
        refuses every label drawn before the export.  Resuming one state twice replays its later keystreams:
        harmless while a resumed run is bit-exact (it sends the very messages the first resume sent), which
        holds only with the checkpoint's configuration (batch size, data, seed) — resuming with another one
        would put other data under the same keys; the checkpoint's configuration binding refuses that."""
        return {"key": bytes(self._key), "used": b"".join(sorted(self._used))}

    @classmethod
    def from_state(cls, state: dict) -> "Csprng":
        """The generator :meth:`export_state` described (``ValueError`` if the state is malformed)."""
        key, used = state.get("key"), state.get("used")
        if not isinstance(key, (bytes, bytearray)) or not isinstance(used, (bytes, bytearray)) or len(used) % 32:
            raise ValueError("malformed Csprng state")
        rng = cls(bytes(key))
        rng._used = {bytes(used[i:i + 32]) for i in range(0, len(used), 32)}
        return rng

    def load_state(self, state: dict) -> None:
        """Become the generator :meth:`export_state` described (in place: holders of this object follow)."""
        other = Csprng.from_state(state)
        self._key, self._used = other._key, other._used

    def child(self, *label) -> "Csprng":
        """An independent generator keyed from this one's stream ``("child", *label)``."""
        return Csprng(self.random_bytes(32, label=("child", *label)))

    def stream(self, *label) -> "KeyStream":
        """The keystream for ``label`` (each label once), to draw from in sequence: many draws, one
        cipher context.  Draws from one stream are independent (disjoint stretches of keystream)."""
        digest = hashlib.sha256(_label_bytes(label)).digest()
        if digest in self._used:
            raise NonceReuseError(f"keystream label drawn twice: {label!r}")
        self._used.add(digest)
        # 16-byte nonce: ChaCha20's 32-bit block counter (zero) + 96-bit nonce from the label.
        nonce = b"\x00\x00\x00\x00" + digest[:12]
        return KeyStream(Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor())

    # One draw under its own label (a stream used once):
    def random_bytes(self, n: int, *, label: tuple) -> bytes:
        """``n`` keystream bytes for ``label``."""
        return self.stream(*label).random_bytes(n)

    def uniform_mod(self, shape, modulus: int, *, label: tuple) -> np.ndarray:
        """Integers uniform in ``[0, modulus)``; see :meth:`KeyStream.uniform_mod`."""
        return self.stream(*label).uniform_mod(shape, modulus)

    def integers(self, low: int, high: int, shape, *, label: tuple) -> np.ndarray:
        """Integers uniform in the closed range ``[low, high]``, as int64."""
        return self.stream(*label).integers(low, high, shape)

    def permutation(self, n: int, *, label: tuple) -> np.ndarray:
        """A uniformly random permutation of ``range(n)``; see :meth:`KeyStream.permutation`."""
        return self.stream(*label).permutation(n)

    def signs(self, n: int, *, label: tuple) -> np.ndarray:
        """``n`` independent uniform signs in {-1, +1} (float32)."""
        return self.stream(*label).signs(n)

    def uniform_float(self, shape, *, label: tuple) -> np.ndarray:
        """Floats uniform in [0, 1) with 53 random bits each (float64)."""
        return self.stream(*label).uniform_float(shape)


class KeyStream:
    """Sequential draws from one labelled ChaCha20 keystream (see :meth:`Csprng.stream`)."""

    def __init__(self, encryptor) -> None:
        self._encryptor = encryptor

    def __repr__(self) -> str:
        return "KeyStream(<secret>)"

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the keystream."""
        return self._encryptor.update(bytes(n))

    def _words(self, count: int, dtype) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.random_bytes(count * itemsize), dtype=dtype)

    def uniform_mod(self, shape, modulus: int) -> np.ndarray:
        """Integers uniform in ``[0, modulus)`` (exactly: rejection sampling), as int64."""
        if not 1 < modulus <= 2**62:
            raise ValueError("modulus out of range")
        size = int(np.prod(shape, dtype=np.int64))
        bits = int(modulus - 1).bit_length()
        mask = np.uint64((1 << bits) - 1)
        accept_rate = modulus / float(1 << bits)
        out = np.empty(size, dtype=np.int64)
        filled = 0
        while filled < size:
            want = size - filled
            words = self._words(int(want / accept_rate * 1.05) + 16, np.uint64) & mask
            good = words[words < np.uint64(modulus)][:want]
            out[filled:filled + good.size] = good.astype(np.int64)
            filled += good.size
        return out.reshape(shape)

    def integers(self, low: int, high: int, shape) -> np.ndarray:
        """Integers uniform in the closed range ``[low, high]``, as int64."""
        return self.uniform_mod(shape, high - low + 1) + low

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random permutation of ``range(n)``; see :meth:`permutations`."""
        return self.permutations(1, n)[0]

    def permutations(self, count: int, n: int) -> np.ndarray:
        """``count`` independent uniformly random permutations of ``range(n)`` (count×n, int64).

        Each row: the ranks of ``n`` independent uniform 64-bit words (one vectorized sort for all rows).
        It is exactly uniform given distinct words; a row with a tie (probability below n²/2^65) is
        replaced by a Fisher-Yates draw.
        """
        words = self._words(count * n, np.uint64).reshape(count, n)
        perms = np.argsort(words, axis=1, kind="stable").astype(np.int64)
        if n > 1:
            ranked = np.take_along_axis(words, perms, axis=1)
            for row in np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1)):  # pragma: no cover
                perms[row] = self._fisher_yates(n)  # astronomically rare
        return perms

    def _fisher_yates(self, n: int) -> np.ndarray:
        """Fisher-Yates on keystream draws, each index by rejection sampling (exact, but a Python loop)."""
        perm = np.arange(n, dtype=np.int64)
        words, used = self._words(2 * n + 64, np.uint64), 0
        for i in range(n - 1, 0, -1):
            bound = np.uint64(i + 1)
            limit = (np.uint64(2**64 - 1) // bound) * bound
            while True:
                if used >= words.size:
                    words, used = self._words(2 * n + 64, np.uint64), 0
                word = words[used]
                used += 1
                if word < limit:
                    break
            j = int(word % bound)
            perm[i], perm[j] = perm[j], perm[i]
        return perm

    def signs(self, n: int) -> np.ndarray:
        """``n`` independent uniform signs in {-1, +1} (float32)."""
        bits = np.unpackbits(np.frombuffer(self.random_bytes((n + 7) // 8), dtype=np.uint8))[:n]
        return (bits.astype(np.float32) * 2.0 - 1.0)

    def uniform_float(self, shape) -> np.ndarray:
        """Floats uniform in [0, 1) with 53 random bits each (float64)."""
        size = int(np.prod(shape, dtype=np.int64))
        words = self._words(size, np.uint64) >> np.uint64(11)
        return (words.astype(np.float64) * (1.0 / (1 << 53))).reshape(shape)
