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

import array
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
        self._offsets = array.array("q")  # where each message's .npy record starts in the spool ...
        self._lengths = array.array("q")  # ... and its length
        self._meta_json: list[str] = []  # each message's meta object, JSON-encoded (compact in memory)

    def append(self, tensor: torch.Tensor, *, step: int, layer: str, op: str, operand: str, kind: str,
               modulus: int | None, worker: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"transcript kind must be one of {KINDS}, got {kind!r}")
        array = tensor.detach().cpu().numpy()
        key = f"m{len(self._offsets):06d}"
        self._spool.seek(0, os.SEEK_END)
        offset = self._spool.tell()
        np.lib.format.write_array(self._spool, np.ascontiguousarray(array), allow_pickle=False)
        self._offsets.append(offset)
        self._lengths.append(self._spool.tell() - offset)
        self._meta_json.append(json.dumps({"key": key, "step": step, "layer": layer, "op": op, "operand": operand,
                                           "kind": kind, "dtype": str(array.dtype), "modulus": modulus,
                                           "worker": worker}))

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def meta(self) -> list[dict]:
        return [json.loads(item) for item in self._meta_json]

    @property
    def spooled_bytes(self) -> int:
        return sum(self._lengths)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically (:func:`blindtrain.files.atomic_file`), streaming from the spool."""
        self._spool.flush()
        with atomic_file(path) as handle:
            with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for index, (offset, length) in enumerate(zip(self._offsets, self._lengths)):
                    self._spool.seek(offset)
                    with archive.open(f"m{index:06d}.npy", mode="w", force_zip64=True) as entry:
                        _copy_exactly(self._spool, entry, length)
                with archive.open("meta.npy", mode="w", force_zip64=True) as entry:
                    self._write_meta(entry)
        return Path(path)

    def _write_meta(self, handle) -> None:
        """``meta`` as :func:`numpy.save` writes ``np.array(json.dumps(meta_list))`` (a 0-d ``<U`` array:
        a header, then the text in UTF-32), streamed piece by piece instead of built in memory."""
        pieces = self._meta_json
        length = 2 + sum(len(piece) for piece in pieces) + 2 * max(len(pieces) - 1, 0)  # "[" ", ".join "]"
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(f"<U{length}")),
                                                      "fortran_order": False, "shape": ()})
        handle.write(b"[\x00\x00\x00")
        for index, piece in enumerate(pieces):
            handle.write(((", " if index else "") + piece).encode("utf-32-le"))
        handle.write(b"]\x00\x00\x00")

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
