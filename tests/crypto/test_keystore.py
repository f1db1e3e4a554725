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


def test_associated_data_is_bound(tmp_path):
    store = KeyStore(tmp_path / "key")
    blob = store.seal(b"payload", purpose="checkpoint", associated=b'{"step":3}')
    assert store.unseal(blob, purpose="checkpoint", associated=b'{"step":3}') == b"payload"
    for other in (b'{"step":4}', b""):
        with pytest.raises(SealError):
            store.unseal(blob, purpose="checkpoint", associated=other)


def test_counters_are_monotonic_sealed_and_per_run(tmp_path):
    store = KeyStore(tmp_path / "key")
    assert store.counter("run-a") == 0
    assert store.raise_counter("run-a", 3) == 3
    assert store.raise_counter("run-a", 2) == 3  # never goes back
    assert store.raise_counter("run-b", 1) == 1 and KeyStore(tmp_path / "key").counter("run-a") == 3
    assert b"run-a" not in store.counters_path.read_bytes()  # sealed, not readable
    assert stat.S_IMODE(store.counters_path.stat().st_mode) == 0o600
    other = KeyStore(tmp_path / "other-key")
    other.counters_path.write_bytes(store.counters_path.read_bytes())
    with pytest.raises(SealError):
        other.counter("run-a")  # a counter file sealed under another key is refused


def test_check_reports_a_corrupt_or_misplaced_key_store(tmp_path):
    from blindtrain.errors import UsageError

    (tmp_path / "key").write_bytes(b"short")
    with pytest.raises(UsageError, match="corrupt"):
        KeyStore(tmp_path / "key").check()
    with pytest.raises(UsageError, match="is a directory"):
        KeyStore(tmp_path).check()
