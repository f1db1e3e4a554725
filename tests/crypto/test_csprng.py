"""The enclave CSPRNG: exact uniformity, use-once labels, valid permutations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from blindtrain.crypto import Csprng, NonceReuseError


def test_uniform_mod_is_uniform_by_chi_square():
    rng = Csprng(bytes(32))
    p = 2**24 - 3
    draws = rng.uniform_mod((200_000,), p, label=("t",))
    assert draws.min() >= 0 and draws.max() < p
    counts = np.bincount(draws * 64 // p, minlength=64)  # 64 equal-width bins over [0, p)
    assert stats.chisquare(counts).pvalue > 1e-4


@settings(max_examples=30, deadline=None)
@given(modulus=st.integers(2, 2**30), n=st.integers(1, 300))
def test_uniform_mod_range(modulus, n):
    draws = Csprng().uniform_mod((n,), modulus, label=("r",))
    assert draws.shape == (n,) and draws.min() >= 0 and draws.max() < modulus


def test_a_label_is_never_drawn_twice():
    rng = Csprng()
    rng.uniform_mod((4,), 97, label=("pad", "fc1", 0))
    with pytest.raises(NonceReuseError):
        rng.uniform_mod((4,), 97, label=("pad", "fc1", 0))
    rng.uniform_mod((4,), 97, label=("pad", "fc1", 1))  # a new label is fine


def test_streams_differ_by_label_and_by_key():
    a, b = Csprng(bytes(32)), Csprng(bytes(32))
    assert a.random_bytes(32, label=("x",)) == b.random_bytes(32, label=("x",))
    assert a.random_bytes(32, label=("y",)) != b.random_bytes(32, label=("z",))
    assert Csprng(bytes(32)).random_bytes(32, label=("x",)) != Csprng(b"\x01" * 32).random_bytes(32, label=("x",))


def test_default_key_comes_from_the_os_and_is_not_printed():
    assert Csprng().random_bytes(16, label=("k",)) != Csprng().random_bytes(16, label=("k",))
    assert "hidden" in repr(Csprng(bytes(32)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 200))
def test_permutation_is_a_permutation(n):
    perm = Csprng().permutation(n, label=("p",))
    assert sorted(perm.tolist()) == list(range(n))


def test_permutations_are_uniform_over_s3():
    rng = Csprng(bytes(32))
    seen = [tuple(rng.permutation(3, label=("p", i))) for i in range(6000)]
    counts = np.array([seen.count(p) for p in set(seen)])
    assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-4


def test_permutations_drawn_together_are_independent_and_uniform_over_s3():
    stream = Csprng(bytes(32)).stream("batch")
    rows = stream.permutations(6000, 3)
    assert rows.shape == (6000, 3) and rows.dtype == np.int64
    assert (np.sort(rows, axis=1) == np.arange(3)).all()
    seen = [tuple(r) for r in rows.tolist()]
    counts = np.array([seen.count(p) for p in set(seen)])
    assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-4
    # consecutive rows independent: the 36 ordered pairs of permutations are uniform too
    pairs = list(zip(seen[0::2], seen[1::2]))
    pair_counts = np.array([pairs.count(p) for p in set(pairs)])
    assert len(pair_counts) == 36 and stats.chisquare(pair_counts).pvalue > 1e-4


def test_signs_and_integers():
    rng = Csprng(bytes(32))
    signs = rng.signs(10_000, label=("s",))
    assert set(np.unique(signs)) == {-1.0, 1.0} and abs(signs.mean()) < 0.05
    ints = rng.integers(-2**19, 2**19, (50_000,), label=("i",))
    assert ints.min() >= -2**19 and ints.max() <= 2**19 and abs(ints.mean()) < 2**19 * 0.02


def test_fisher_yates_fallback_is_a_uniform_permutation_too():
    rng = Csprng(bytes(32))
    seen = [tuple(rng.stream("fy", i)._fisher_yates(3)) for i in range(6000)]
    counts = np.array([seen.count(p) for p in set(seen)])
    assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-4


def test_a_stream_draws_in_sequence_and_its_label_is_used_once():
    key = bytes(range(32))
    stream = Csprng(key).stream("batch", 7)
    first, second = stream.random_bytes(64), stream.random_bytes(64)
    assert first != second
    assert first + second == Csprng(key).random_bytes(128, label=("batch", 7))  # one keystream, in order
    rng = Csprng(key)
    rng.stream("batch", 7)
    with pytest.raises(NonceReuseError):
        rng.permutation(4, label=("batch", 7))
    perms = [tuple(Csprng(key).stream("s").permutation(5)) for _ in range(2)]
    assert perms[0] == perms[1] and sorted(perms[0]) == list(range(5))


def test_exported_state_continues_the_same_keystreams_and_refuses_used_labels():
    from blindtrain.crypto.csprng import Csprng as Generator
    from blindtrain.crypto.csprng import NonceReuseError as Reuse

    rng = Generator(bytes(range(32)))
    rng.random_bytes(8, label=("a",))
    state = rng.export_state()
    restored = Generator.from_state(state)
    assert restored.random_bytes(16, label=("b",)) == rng.random_bytes(16, label=("b",))
    with pytest.raises(Reuse):
        restored.random_bytes(8, label=("a",))
    fresh = Generator()
    fresh.load_state(state)
    assert fresh.random_bytes(16, label=("c",)) == Generator(bytes(range(32))).random_bytes(16, label=("c",))
    assert "key" not in repr(fresh).replace("<key hidden>", "")
    with pytest.raises(ValueError):
        Generator.from_state({"key": bytes(32), "used": b"\x00" * 7})
