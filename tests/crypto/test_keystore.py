"""Sealing: the key file is private, and any change to a sealed blob is rejected."""

from __future__ import annotations

import stat

import pytest

from blindtrain.crypto import KeyStore, SealError


def test_key_file_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "ks" / "key"
    store = KeyStore(path)
    blob = store.seal(b"secret", purpose="test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyStore(path).unseal(blob, purpose="test") == b"secret"


def test_modified_truncated_foreign_and_repurposed_blobs_are_rejected(tmp_path):
    store = KeyStore(tmp_path / "key")
    blob = store.seal(b"weights" * 100, purpose="checkpoint")
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    for bad in (bytes(flipped), blob[:-1], b"garbage"):
        with pytest.raises(SealError):
            store.unseal(bad, purpose="checkpoint")
    with pytest.raises(SealError):
        store.unseal(blob, purpose="unmask-factors")
    with pytest.raises(SealError):
        KeyStore(tmp_path / "other").unseal(blob, purpose="checkpoint")


def test_sealing_is_randomized(tmp_path):
    store = KeyStore(tmp_path / "key")
    assert store.seal(b"x", purpose="p") != store.seal(b"x", purpose="p")
