"""``blindtrain export``: the plaintext weights of a sealed checkpoint, for use outside blindtrain.

This runs on the trusted side: it unseals the checkpoint with the key store (so a modified, foreign or
rolled-back file is refused exactly as on resume) and writes the model's ``state_dict`` with
``torch.save``, atomically.  The result is plaintext: whoever can read the output file has the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .crypto import KeyStore
from .files import atomic_file, check_writable


def export(*, checkpoint: str, out: str, keystore: str | None = None, allow_rollback: bool = False) -> dict:
    """Unseal ``checkpoint`` and write its model's plaintext ``state_dict`` to ``out``.

    Returns what was written: the model spec, the step, the number of tensors and parameters."""
    check_writable(out, flag="--out")
    payload = ckpt.load(checkpoint, keystore=KeyStore(keystore), allow_rollback=allow_rollback)
    state = {name: tensor.detach().cpu() for name, tensor in payload["model_state"].items()}
    with atomic_file(out) as handle:
        torch.save({"model_spec": payload["model_spec"], "step": payload["step"], "state_dict": state}, handle)
    return {"out": str(Path(out)), "model_spec": payload["model_spec"], "step": payload["step"],
            "tensors": len(state), "parameters": sum(t.numel() for t in state.values())}
