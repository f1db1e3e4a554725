"""The enclave's key store and sealing (AES-256-GCM).

In SGX the sealing key is derived by the CPU from the enclave's identity; in the
emulated enclave it is a 32-byte key file created with mode 0600 on first use.
Path: ``$BLINDTRAIN_KEYSTORE``, else ``~/.config/blindtrain/sealing.key``.

Sealed blob layout: ``b"BTSEAL1" || nonce(12) || AES-GCM(ciphertext || tag)``, with
the associated data naming what the blob is (a checkpoint, a table of unmask
factors), so a blob of one kind is not accepted as another.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import UsageError

MAGIC = b"BTSEAL1"


class SealError(UsageError):
    """A sealed blob was modified, truncated, or sealed under another key (exit 2)."""


def default_keystore_path() -> Path:
    env = os.environ.get("BLINDTRAIN_KEYSTORE")
    return Path(env) if env else Path.home() / ".config" / "blindtrain" / "sealing.key"


class KeyStore:
    """A sealing key kept in a 0600 file (emulated enclave)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_keystore_path()
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    def _sealing_key(self) -> bytes:
        if self._key is None:
            self._key = self._load_or_create()
        return self._key

    def _load_or_create(self) -> bytes:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = self.path.read_bytes()
            if len(key) != 32:
                raise UsageError(f"key store {self.path} is corrupt (expected 32 bytes)")
            return key
        key = os.urandom(32)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key

    def seal(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = os.urandom(12)
        return MAGIC + nonce + AESGCM(self._sealing_key()).encrypt(nonce, plaintext, purpose.encode())

    def unseal(self, blob: bytes, *, purpose: str) -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise SealError(f"not a sealed {purpose} (bad header)")
        nonce, body = blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:]
        try:
            return AESGCM(self._sealing_key()).decrypt(nonce, body, purpose.encode())
        except InvalidTag:
            raise SealError(f"sealed {purpose} failed authentication: modified, truncated or sealed "
                            f"under another key than {self.path}") from None
