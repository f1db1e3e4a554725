"""Freivalds' check over F_p: correct results pass, wrong ones fail; the channel-contracted conv forms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blindtrain.crypto import Csprng
from blindtrain.field import freivalds
from blindtrain.field.codec import DEFAULT_MODULUS as P
from blindtrain.field.engine import FieldEngine
from blindtrain.field.modular import mod_bilinear

ENGINE = FieldEngine(P)

CASES = {
    "matmul": ((6, 20), (20, 9), {}),
    "conv2d": ((2, 3, 7, 7), (5, 3, 3, 3), {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}),
    "conv2d_input": ((2, 5, 4, 4), (5, 3, 3, 3),
                     {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "input_size": (2, 3, 7, 7)}),
}


def _case(fn, seed=0):
    a_shape, b_shape, params = CASES[fn]
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, P, a_shape, generator=g)
    b = torch.randint(-2**15, 2**15, b_shape, generator=g).to(torch.int16)
    return a, b, params, mod_bilinear(fn, a, b, P, params)


def test_soundness_bits():
    assert freivalds.soundness_bits(2) == pytest.approx(2 * math.log2(2**20 + 1))
    assert freivalds.soundness_bits(2) >= 40


@pytest.mark.parametrize("fn", sorted(CASES))
def test_correct_result_passes(fn):
    a, b, params, y = _case(fn)
    s = freivalds.draw(Csprng(bytes(32)), fn, b.shape, 2, label=("t",))
    assert s.abs().max() <= freivalds.S_BOUND
    assert freivalds.check(fn, a, y, freivalds.contract_weight(fn, b, s, ENGINE), s, ENGINE, params)


@pytest.mark.parametrize("fn", sorted(CASES))
def test_channel_contracted_form_matches_direct_contraction(fn):
    a, b, params, y = _case(fn, seed=3)
    s = freivalds.draw(Csprng(bytes(32)), fn, b.shape, 3, label=("t",))
    direct = freivalds.contract_output(fn, y, s, ENGINE)
    via_weight = freivalds.expected(fn, a, freivalds.contract_weight(fn, b, s, ENGINE), ENGINE, params)
    assert torch.equal(direct, via_weight)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.integers(0, 10**6), st.integers(1, P - 1), st.integers(0, 2**31))
def test_any_wrong_element_fails(fn, position, delta, key):
    a, b, params, y = _case(fn)
    wrong = y.clone()
    flat = wrong.view(-1)
    index = position % flat.numel()
    flat[index] = (flat[index] + delta) % P
    s = freivalds.draw(Csprng(key.to_bytes(32, "little")), fn, b.shape, 2, label=("t",))
    assert not freivalds.check(fn, a, wrong, freivalds.contract_weight(fn, b, s, ENGINE), s, ENGINE, params)


def test_float_or_misshapen_result_fails():
    a, b, params, y = _case("matmul")
    s = freivalds.draw(Csprng(bytes(32)), "matmul", b.shape, 2, label=("t",))
    bs = freivalds.contract_weight("matmul", b, s, ENGINE)
    assert freivalds.check("matmul", a, y, bs, s, ENGINE, params)
    assert not freivalds.check("matmul", a, y.double(), bs, s, ENGINE, params)
    assert not freivalds.check("matmul", a, y[:, :-1], bs, s, ENGINE, params)
    assert freivalds.check("matmul", a, y + P, bs, s, ENGINE, params)  # the same residues: correct mod p


def test_contracted_weight_is_the_exact_integer():
    _, b, _, _ = _case("matmul")
    s = freivalds.draw(Csprng(bytes(32)), "matmul", b.shape, 2, label=("t",))
    exact = b.long().numpy().astype(object) @ s.numpy().astype(object)
    assert freivalds.contract_weight("matmul", b, s, ENGINE).numpy().tolist() == exact.tolist()


def test_soundness_by_experiment_small_field():
    """With a tiny field the escape rate is measurable: about 1/p per repetition for a single wrong row."""
    p, trials, passed = 257, 4000, 0
    rng = Csprng(bytes(32))
    engine = FieldEngine(p)
    a = torch.randint(0, p, (1, 4))
    b = torch.randint(0, p, (4, 3))
    y = mod_bilinear("matmul", a, b, p)
    y[0, 1] = (y[0, 1] + 5) % p
    for t in range(trials):
        s = torch.from_numpy(rng.uniform_mod((3, 1), p, label=("s", t)))
        passed += freivalds.check("matmul", a, y, freivalds.contract_weight("matmul", b, s, engine), s, engine, {})
    assert passed / trials < 4 / p
