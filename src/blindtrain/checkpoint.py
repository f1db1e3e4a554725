"""Sealed checkpoints: model, optimizer, RNG state and step, encrypted and authenticated.

File layout: ``b"BTCKPT2\\n" || len(header) (4 bytes, big-endian) || header || sealed payload``.

* The *header* is a JSON object in the clear: format, run identity (``run_id``, random, created at a
  run's first step and kept across resumes), ``counter`` (this run's checkpoint number, monotonic),
  ``step``, and ``binding``: the protocol, model and dataset configuration the run was started with.
* The *payload* (model, optimizer and RNG state, ``extra``) is sealed with AES-256-GCM under the key
  store's key (:mod:`blindtrain.crypto.keystore`) with the header as associated data: a header that
  was changed (another step, configuration or run) fails authentication like a changed payload.
* Rollback: the key store keeps the highest counter written per run; loading a checkpoint whose
  counter is lower (an older checkpoint of the same run copied over a newer one) raises
  :class:`RollbackError` unless ``allow_rollback``.

A modified, truncated or foreign file is rejected with :class:`~blindtrain.crypto.SealError`
(exit 2).  Files are written atomically (:mod:`blindtrain.files`), so a crash never leaves half a
checkpoint.
"""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch

from .crypto import KeyStore, SealError
from .errors import UsageError
from .files import atomic_write

FORMAT = 2
MAGIC = b"BTCKPT2\n"
PURPOSE = "blindtrain-checkpoint-v2"


class RollbackError(UsageError):
    """An older checkpoint of a run was presented after a newer one was written (exit 2)."""


def new_run_id() -> str:
    """A fresh random run identity (128 bits, hex)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Header:
    """What a checkpoint says about itself, authenticated (the AES-GCM associated data)."""

    run_id: str
    counter: int
    step: int
    binding: dict

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "run_id": self.run_id, "counter": self.counter, "step": self.step,
                           "binding": self.binding}, sort_keys=True, separators=(",", ":")).encode()


def save(path, *, keystore: KeyStore, model_spec: dict, model_state: dict, optimizer_state: dict | None,
         step: int, extra: dict | None = None, binding: dict | None = None, run_id: str | None = None) -> Path:
    """Seal and write a checkpoint of run ``run_id`` (a new one if not given) bound to ``binding``;
    then record its counter in the key store."""
    run_id = run_id or new_run_id()
    header = Header(run_id=run_id, counter=keystore.counter(run_id) + 1, step=int(step),
                    binding=dict(binding or {}))
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
    header_bytes = header.encode()
    sealed = keystore.seal(buffer.getvalue(), purpose=PURPOSE, associated=header_bytes)
    written = atomic_write(path, MAGIC + len(header_bytes).to_bytes(4, "big") + header_bytes + sealed)
    keystore.raise_counter(run_id, header.counter)
    return written


def read_header(blob: bytes, *, path) -> tuple[Header, bytes, bytes]:
    """Split a checkpoint file into ``(header, header bytes, sealed payload)`` (not yet authenticated)."""
    if not blob.startswith(MAGIC):
        if blob.startswith(b"BTSEAL1"):
            raise UsageError(f"checkpoint {path} was written by an older blindtrain (format 1, no configuration "
                             f"binding); it cannot be resumed by this version")
        raise SealError(f"{path} is not a blindtrain checkpoint (bad header)")
    size = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 4], "big")
    start = len(MAGIC) + 4
    header_bytes = blob[start:start + size]
    try:
        fields = json.loads(header_bytes)
        header = Header(run_id=str(fields["run_id"]), counter=int(fields["counter"]), step=int(fields["step"]),
                        binding=dict(fields["binding"]))
    except (ValueError, KeyError, TypeError):
        raise SealError(f"checkpoint {path} failed authentication: its header is malformed") from None
    return header, header_bytes, blob[start + size:]


def load(path, *, keystore: KeyStore, allow_rollback: bool = False) -> dict:
    """Read and unseal a checkpoint (``SealError`` if it was tampered with, ``RollbackError`` if a newer
    checkpoint of its run was written since, unless ``allow_rollback``).

    Returns the payload with ``header`` (a :class:`Header`) added."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    header, header_bytes, sealed = read_header(blob, path=path)
    plaintext = keystore.unseal(sealed, purpose=PURPOSE, associated=header_bytes)
    payload = torch.load(io.BytesIO(plaintext), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT or payload.get("step") != header.step:
        raise UsageError(f"checkpoint {path} has unsupported format {payload.get('format')!r}")
    latest = keystore.counter(header.run_id)
    if header.counter < latest and not allow_rollback:
        raise RollbackError(f"checkpoint {path} is a rollback: it is checkpoint {header.counter} (step {header.step}) "
                            f"of run {header.run_id[:12]}, but checkpoint {latest} of that run was written since; "
                            f"pass --allow-rollback to use it anyway")
    if header.counter > latest:  # written, but the counter update was lost (a crash in between)
        keystore.raise_counter(header.run_id, header.counter)
    payload["header"] = header
    return payload


def binding_differences(saved: dict, current: dict) -> list[str]:
    """``["--protocol: checkpoint otp, this run tempo", ...]`` for every bound setting that differs."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            flag = "--" + key.replace("_", "-")
            differences.append(f"{flag}: checkpoint {_show(saved.get(key))}, this run {_show(current.get(key))}")
    return differences


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "{}"
    return str(value)


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
