"""Sealed checkpoints: model, optimizer, RNG state and step, encrypted and authenticated.

A checkpoint leaves the enclave sealed with AES-256-GCM under the key store's key
(:mod:`blindtrain.crypto.keystore`); a modified, truncated or foreign file is
rejected with :class:`~blindtrain.crypto.SealError` (exit 2).  Files are written
atomically (:mod:`blindtrain.files`), so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .crypto import KeyStore
from .errors import UsageError
from .files import atomic_write

FORMAT = 1
PURPOSE = "blindtrain-checkpoint-v1"


def save(path, *, keystore: KeyStore, model_spec: dict, model_state: dict, optimizer_state: dict | None,
         step: int, extra: dict | None = None) -> Path:
    """Seal and write a checkpoint."""
    buffer = io.BytesIO()
    payload = {
        "format": FORMAT,
        "model_spec": model_spec,
        "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer_state": _to_cpu(optimizer_state),
        "torch_rng": torch.get_rng_state(),
        "step": int(step),
        "extra": extra or {},
    }
    torch.save(payload, buffer)
    return atomic_write(path, keystore.seal(buffer.getvalue(), purpose=PURPOSE))


def load(path, *, keystore: KeyStore) -> dict:
    """Read and unseal a checkpoint (``SealError`` if it was tampered with)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    plaintext = keystore.unseal(blob, purpose=PURPOSE)
    payload = torch.load(io.BytesIO(plaintext), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} has unsupported format {payload.get('format')!r}")
    return payload


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
