"""The transcript: every tensor a worker received, in order (DESIGN.md format).

Written as an ``.npz`` with keys ``m000000``, ``m000001``, ... and ``meta``: a JSON
list with one object per message
``{key, step, layer, op, operand, kind, dtype, modulus, worker}``.
Only the boundary appends to it, so it is exactly what crossed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .files import atomic_file

#: What a tensor handed to a worker is (DESIGN.md).
KINDS = ("masked", "public", "obfuscated", "pad", "clear")


class Transcript:
    """An in-memory transcript of one worker role, saved atomically on :meth:`save`."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []
        self._meta: list[dict] = []

    def append(self, tensor: torch.Tensor, *, step: int, layer: str, op: str, operand: str, kind: str,
               modulus: int | None, worker: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"transcript kind must be one of {KINDS}, got {kind!r}")
        array = tensor.detach().cpu().numpy().copy()
        key = f"m{len(self._arrays):06d}"
        self._arrays.append(array)
        self._meta.append({"key": key, "step": step, "layer": layer, "op": op, "operand": operand,
                           "kind": kind, "dtype": str(array.dtype), "modulus": modulus, "worker": worker})

    def __len__(self) -> int:
        return len(self._arrays)

    @property
    def meta(self) -> list[dict]:
        return list(self._meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically (:func:`blindtrain.files.atomic_file`)."""
        payload = {m["key"]: a for m, a in zip(self._meta, self._arrays)}
        payload["meta"] = np.array(json.dumps(self._meta))
        with atomic_file(path) as handle:
            np.savez(handle, **payload)
        return Path(path)


def load(path: str | os.PathLike) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Read a transcript back: ``(meta, {key: array})``."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {m["key"]: data[m["key"]] for m in meta}
    return meta, arrays
