"""Streaming transcripts: messages go to a spool file as they cross (bounded memory), and the saved
file is the same ``.npz`` the in-memory writer produced (DESIGN.md format)."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import torch

from blindtrain.transcript import Transcript, load


def _messages():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(5, 7, generator=generator), dict(step=0, layer="fc1", op="forward", operand="A",
                                                         kind="masked", modulus=None, worker="main0")),
            (torch.arange(12, dtype=torch.float64).reshape(3, 4), dict(step=0, layer="fc1", op="forward",
                                                                       operand="B", kind="public", modulus=8388593,
                                                                       worker="main0")),
            (torch.ones(2, 3, 4, 4), dict(step=1, layer="conv", op="grad_input", operand="A", kind="obfuscated",
                                          modulus=None, worker="main0")),
            (torch.zeros(0, 3), dict(step=1, layer="fc2", op="grad_weight", operand="A", kind="clear",
                                     modulus=None, worker="main0"))]


def test_the_streamed_file_equals_the_in_memory_format(tmp_path):
    transcript = Transcript(spool_dir=tmp_path)
    meta, payload = [], {}
    for index, (tensor, info) in enumerate(_messages()):
        transcript.append(tensor, **info)
        key = f"m{index:06d}"
        meta.append({"key": key, **{k: info[k] for k in ("step", "layer", "op", "operand", "kind")},
                     "dtype": str(tensor.numpy().dtype), "modulus": info["modulus"], "worker": info["worker"]})
        payload[key] = tensor.numpy()
    streamed = transcript.save(tmp_path / "streamed.npz")
    reference = tmp_path / "reference.npz"  # what the in-memory writer did: np.savez of the arrays and meta
    np.savez(reference, **payload, meta=np.array(json.dumps(meta)))
    with zipfile.ZipFile(streamed) as a, zipfile.ZipFile(reference) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in b.namelist():
            assert a.read(name) == b.read(name), name  # byte for byte, each entry
    loaded_meta, arrays = load(streamed)
    assert loaded_meta == meta
    assert all(np.array_equal(arrays[k], payload[k]) and arrays[k].dtype == payload[k].dtype for k in payload)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the spool has no name on disk


def test_saving_twice_and_appending_in_between(tmp_path):
    transcript = Transcript()
    messages = _messages()
    transcript.append(messages[0][0], **messages[0][1])
    transcript.save(tmp_path / "t.npz")
    transcript.append(messages[1][0], **messages[1][1])
    meta, arrays = load(transcript.save(tmp_path / "t.npz"))
    assert [m["key"] for m in meta] == ["m000000", "m000001"] and arrays["m000001"].shape == (3, 4)


def test_messages_are_not_kept_in_memory():
    transcript = Transcript()
    message = torch.randn(256, 1024)  # 1 MiB
    tracemalloc.start()
    try:
        for _ in range(32):
            transcript.append(message, step=0, layer="fc", op="forward", operand="A", kind="clear", modulus=None,
                              worker="main0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert transcript.spooled_bytes >= 32 * 2**20
    assert peak < 4 * 2**20  # 32 MiB went to the spool; memory held about one message at a time
