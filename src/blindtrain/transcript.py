"""The transcript: every tensor a worker received, in order (DESIGN.md format).

Written as an ``.npz`` with keys ``m000000``, ``m000001``, ... and ``meta``: a JSON
list with one object per message
``{key, step, layer, op, operand, kind, dtype, modulus, worker}``.
Only the boundary appends to it, so it is exactly what crossed.

Streaming: each message goes to disk as it crosses, as a ``.npy`` record
(:func:`numpy.lib.format.write_array`) appended to a spool file — an anonymous temporary file (no
name on disk, so a killed run leaves nothing behind) in ``spool_dir`` (the destination's folder when
the trainer knows it).  Memory stays bounded by one message, and none of it is counted as enclave
memory.  :meth:`Transcript.save` copies the records, in chunks, into the zip entries of an ordinary
``.npz`` (``ZIP_STORED`` and Zip64, as :func:`numpy.savez` writes) and adds ``meta``; it can be called
again after more messages, and :func:`load` (and ``numpy.load``) read the file as before.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .files import atomic_file

#: What a tensor handed to a worker is (DESIGN.md).
KINDS = ("masked", "public", "obfuscated", "pad", "share", "clear")
_CHUNK = 1 << 20


class Transcript:
    """A transcript of one worker role, streamed to a spool file; :meth:`save` writes the ``.npz``.

    Args:
        spool_dir: folder of the spool file (default: the system's temporary folder).
    """

    def __init__(self, *, spool_dir: str | os.PathLike | None = None) -> None:
        self._spool = tempfile.TemporaryFile(dir=spool_dir, prefix=".blindtrain-transcript-")
        self._records: list[tuple[int, int]] = []  # (offset, length) of each message's .npy record
        self._meta: list[dict] = []

    def append(self, tensor: torch.Tensor, *, step: int, layer: str, op: str, operand: str, kind: str,
               modulus: int | None, worker: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"transcript kind must be one of {KINDS}, got {kind!r}")
        array = tensor.detach().cpu().numpy()
        key = f"m{len(self._records):06d}"
        self._spool.seek(0, os.SEEK_END)
        offset = self._spool.tell()
        np.lib.format.write_array(self._spool, np.ascontiguousarray(array), allow_pickle=False)
        self._records.append((offset, self._spool.tell() - offset))
        self._meta.append({"key": key, "step": step, "layer": layer, "op": op, "operand": operand,
                           "kind": kind, "dtype": str(array.dtype), "modulus": modulus, "worker": worker})

    def __len__(self) -> int:
        return len(self._records)

    @property
    def meta(self) -> list[dict]:
        return list(self._meta)

    @property
    def spooled_bytes(self) -> int:
        return sum(length for _, length in self._records)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically (:func:`blindtrain.files.atomic_file`), streaming from the spool."""
        self._spool.flush()
        with atomic_file(path) as handle:
            with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for meta, (offset, length) in zip(self._meta, self._records):
                    self._spool.seek(offset)
                    with archive.open(f"{meta['key']}.npy", mode="w", force_zip64=True) as entry:
                        _copy_exactly(self._spool, entry, length)
                with archive.open("meta.npy", mode="w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.array(json.dumps(self._meta)), allow_pickle=False)
        return Path(path)

    def close(self) -> None:
        """Drop the spool (nothing on disk remains: it never had a name)."""
        self._spool.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self._spool.close()
        except Exception:  # noqa: BLE001
            pass


def _copy_exactly(source, target, length: int) -> None:
    while length > 0:
        chunk = source.read(min(_CHUNK, length))
        if not chunk:
            raise OSError("transcript spool ended early")
        target.write(chunk)
        length -= len(chunk)


def load(path: str | os.PathLike) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Read a transcript back: ``(meta, {key: array})``."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {m["key"]: data[m["key"]] for m in meta}
    return meta, arrays


__all__ = ["KINDS", "Transcript", "load"]
