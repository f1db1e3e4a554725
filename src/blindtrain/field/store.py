"""Sealed storage of precomputed unmask factors *outside* the enclave (Slalom's offline phase).

Each factor is one AES-256-GCM blob in a file of an untrusted directory.  The
key lives only in enclave memory (drawn from the enclave CSPRNG per session), the
associated data binds the blob to its layer, shape and index, so the host can
neither read, modify, swap nor replay factors: a blob that fails authentication,
or is missing, is an integrity violation.  Each factor is consumed exactly once:
:meth:`SealedFactorStore.take` deletes the file and refuses an index taken before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class FactorUnavailable(Exception):
    """A sealed factor is missing, was consumed before, or failed authentication."""


class SealedFactorStore:
    """Files ``DIR/<n>.bin`` holding ``nonce || AES-GCM(int64 factor)``."""

    def __init__(self, key: bytes, directory: str | os.PathLike | None = None) -> None:
        self._aead = AESGCM(key)
        self._owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="blindtrain-slalom-") if directory is None else directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._nonce_counter = 0
        self._consumed: set[int] = set()
        self.sealed = 0
        self.taken = 0
        self.bytes_written = 0

    @staticmethod
    def _aad(layer: str, shape, index: int) -> bytes:
        return f"slalom-unmask-factor|{layer}|{tuple(shape)}|{index}".encode()

    def _path(self, index: int) -> Path:
        return self.directory / f"{index:08d}.bin"

    def put(self, index: int, layer: str, factor: torch.Tensor) -> None:
        """Seal ``factor`` (field elements, int64) under ``index``."""
        nonce = self._nonce_counter.to_bytes(12, "big")  # a counter: unique per key
        self._nonce_counter += 1
        plain = factor.to(torch.int64).contiguous().numpy().tobytes()
        blob = nonce + self._aead.encrypt(nonce, plain, self._aad(layer, factor.shape, index))
        self._path(index).write_bytes(blob)
        self.sealed += 1
        self.bytes_written += len(blob)

    def take(self, index: int, layer: str, shape) -> torch.Tensor:
        """Unseal, delete and return factor ``index`` (int64); each index once."""
        if index in self._consumed:
            raise FactorUnavailable(f"unmask factor {index} was consumed before")
        self._consumed.add(index)
        path = self._path(index)
        try:
            blob = path.read_bytes()
            path.unlink()
        except OSError as exc:
            raise FactorUnavailable(f"sealed unmask factor {index} is missing ({exc.strerror})") from None
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], self._aad(layer, shape, index))
        except InvalidTag:
            raise FactorUnavailable(f"sealed unmask factor {index} failed authentication") from None
        self.taken += 1
        return torch.from_numpy(np.frombuffer(plain, dtype=np.int64).copy()).reshape(tuple(shape))

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)
