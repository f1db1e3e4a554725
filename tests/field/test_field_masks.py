"""One-time pads: exactly uniform in F_p, never reused; sealed unmask factors."""

import numpy as np
import pytest
import torch
from scipy import stats

from blindtrain.crypto import Csprng, NonceReuseError
from blindtrain.field.codec import DEFAULT_MODULUS as P
from blindtrain.field.masks import PadStream
from blindtrain.field.store import FactorUnavailable, SealedFactorStore


def chi_square_uniform_mod(values: np.ndarray, p: int, bins: int = 256) -> float:
    """p-value of a chi-square test that ``values`` are uniform on ``[0, p)`` (exact bin sizes)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    edges = np.array([i * p // bins for i in range(bins + 1)], dtype=np.int64)  # bin i: [edges[i], edges[i+1])
    observed = np.bincount(np.searchsorted(edges, values, side="right") - 1, minlength=bins)[:bins]
    expected = np.diff(edges).astype(np.float64) / p * values.size
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("p", [P, 2**24 - 3])
def test_pads_uniform(p):
    stream = PadStream(Csprng(bytes(32)), p)
    pad = stream.draw((200, 500), layer="fc", op="forward", operand="A", step=0, nonce=0)
    assert pad.dtype == torch.int64
    pad = pad.numpy()
    assert pad.min() >= 0 and pad.max() < p
    assert chi_square_uniform_mod(pad, p) > 1e-3
    # the top bits too (2^61 − 1 is not a power of two: rejection sampling keeps it exact)
    assert chi_square_uniform_mod(pad, p, bins=2) > 1e-3 and chi_square_uniform_mod(pad, p, bins=7) > 1e-3


def test_chi_square_detects_a_biased_stream():
    rng = np.random.default_rng(0)
    biased = rng.integers(0, P // 2, 100_000)  # only the lower half of F_p
    assert chi_square_uniform_mod(biased, P) < 1e-6


def test_pad_labels_are_use_once():
    stream = PadStream(Csprng(bytes(32)), P)
    stream.draw((4,), layer="fc", op="forward", operand="A", step=0, nonce=0)
    with pytest.raises(NonceReuseError):
        stream.draw((4,), layer="fc", op="forward", operand="A", step=0, nonce=0)
    stream.draw((4,), layer="fc", op="forward", operand="A", step=0, nonce=1)
    assert stream.drawn == 2 and stream.all_distinct


def test_sealed_factor_store_consumes_once_and_authenticates(tmp_path):
    store = SealedFactorStore(bytes(range(32)), tmp_path)
    factor = torch.arange(12, dtype=torch.int64).reshape(3, 4) * (2**57 + 1)  # 61-bit field elements
    for i in range(3):
        store.put(i, "fc", factor + i)
    assert torch.equal(store.take(0, "fc", (3, 4)), factor)
    with pytest.raises(FactorUnavailable, match="consumed"):
        store.take(0, "fc", (3, 4))
    blob = bytearray((tmp_path / "00000001.bin").read_bytes())
    blob[20] ^= 1  # the host flips a bit
    (tmp_path / "00000001.bin").write_bytes(bytes(blob))
    with pytest.raises(FactorUnavailable, match="authentication"):
        store.take(1, "fc", (3, 4))
    # a blob moved to another index (a replayed / swapped factor) fails too
    store.put(7, "fc", factor)
    (tmp_path / "00000007.bin").rename(tmp_path / "00000008.bin")
    store.put(9, "fc", factor)
    with pytest.raises(FactorUnavailable):
        store.take(8, "fc", (3, 4))
    with pytest.raises(FactorUnavailable, match="missing"):
        store.take(7, "fc", (3, 4))
    assert torch.equal(store.take(2, "fc", (3, 4)), factor + 2)
