"""Fixed-point codec and exact modular ops (hypothesis property tests)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from blindtrain import bilinear
from blindtrain.errors import UsageError
from blindtrain.field import codec
from blindtrain.field.modular import contraction_length, mod_bilinear

P = codec.DEFAULT_MODULUS
floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 40), elements=floats), st.integers(-4, 14))
def test_round_to_nearest_roundtrip(x, exponent):
    x = torch.from_numpy(x)
    q = codec.quantize(x, exponent)
    if float(q.abs().max()) > codec.headroom(P):
        return  # does not fit the field at this exponent (encode_pair never picks it)
    back = codec.decode(codec.to_field(q, P), exponent, P)
    assert float((back - x.double()).abs().max()) <= 0.5 * 2.0**-exponent + 1e-12


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 40), elements=floats), st.integers(-4, 12),
       arrays(np.float64, 40, elements=st.floats(0, 1, exclude_max=True)))
def test_stochastic_roundtrip(x, exponent, uniforms):
    x = torch.from_numpy(x)
    u = torch.from_numpy(uniforms[: x.numel()])
    q = codec.quantize(x, exponent, u)
    if float(q.abs().max()) > codec.headroom(P):
        return
    back = codec.decode(codec.to_field(q, P), exponent, P)
    assert float((back - x.double()).abs().max()) < 2.0**-exponent + 1e-12


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 0.3)
    u = torch.from_numpy(np.random.default_rng(0).random(200_000))
    assert abs(float(codec.quantize(x, 0, u).mean()) - 0.3) < 0.005


def test_centred_representatives():
    v = torch.tensor([0, 1, P // 2, P // 2 + 1, P - 1])
    assert codec.centred(v, P).tolist() == [0, 1, P // 2, -(P // 2), -1]
    assert P == 2**61 - 1 and codec.element_dtype(P) == torch.int64 and codec.element_dtype(2**24 - 3) == torch.int32


def test_modulus_validation():
    assert codec.check_modulus(2**21 - 9) == 2**21 - 9
    assert codec.check_modulus(2**61 - 1) == 2**61 - 1
    assert codec.check_modulus(2305843009213693921) == 2305843009213693921  # 2^61 − 31
    assert codec.check_modulus(2**24 + 43) == 2**24 + 43
    for bad in (2**24 - 2, 101, "x", 2**61 + 15, 2**89 - 1, 2**61 - 3):  # 2^61 + 15: prime, too large
        with pytest.raises(UsageError):
            codec.check_modulus(bad)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.integers(1, 5), st.integers(1, 5), st.sampled_from([P, 2**21 - 9, 65521]))
def test_mod_matmul_exact_with_limbs(n, b, m, p):
    g = torch.Generator().manual_seed(n * 31 + b)
    a = torch.randint(0, p, (b, n), generator=g)
    w = torch.randint(-(p // 2), p // 2, (n, m), generator=g)
    expected = (a.numpy().astype(object) @ w.numpy().astype(object)) % p
    got = mod_bilinear("matmul", a, w, p)
    assert got.numpy().tolist() == expected.tolist()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["matmul", "conv2d", "conv2d_input"]), st.integers(1, 3), st.integers(1, 2),
       st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.booleans(), st.sampled_from([P, 2**24 - 3]),
       st.sampled_from([None, 16, 8]))
def test_encode_pair_never_wraps(fn, stride, dilation, scale_a, scale_b, stochastic, p, b_bits):
    g = torch.Generator().manual_seed(int(scale_a * 1000) % 9973)
    params = {}
    if fn == "matmul":
        a, b = torch.randn(5, 33, generator=g), torch.randn(33, 7, generator=g)
    else:
        b = torch.randn(4, 3, 3, 3, generator=g)
        params = {"stride": (stride, stride), "padding": (1, 1), "dilation": (dilation, dilation)}
        x = torch.randn(2, 3, 9, 9, generator=g)
        if fn == "conv2d":
            a = x
        else:
            y = torch.nn.functional.conv2d(x, b, **params)
            a = torch.randn(y.shape, generator=g)
            params["input_size"] = tuple(x.shape)
    a, b = a * scale_a, b * scale_b
    u = torch.rand(a.shape, generator=g).double() if stochastic else None
    encoded = codec.encode_pair(fn, a, b, params, p, uniforms=u, b_bits=b_bits)
    qa, qb, la, lb = encoded
    assert qa.dtype == qb.dtype == torch.int64
    if b_bits:
        assert int(qb.abs().max()) <= 2 ** (b_bits - 1) - 1 and encoded.b_bits <= b_bits
    assert encoded.a_bits == int(qa.abs().max()).bit_length() + 1
    from blindtrain.field.engine import FieldEngine

    exact = FieldEngine(2**61 - 1).bilinear(fn, qa, qb, params)  # the integer itself: |·| < 2^60
    exact = codec.centred(exact, 2**61 - 1)
    assert int(exact.abs().max()) <= codec.headroom(p)
    decoded = codec.decode(mod_bilinear(fn, codec.to_field(qa, p), qb, p, params), la + lb, p)
    rho = 1.0 if stochastic else 0.5
    bound = codec.error_bound(fn, a, b, rho * 2.0**-la, 0.5 * 2.0**-lb, params)
    assert bool(((decoded - bilinear.apply(fn, a.double(), b.double(), **params)).abs() <= bound + 1e-9).all())
    # and the precision is not thrown away: at least 6 bits per operand relative to its largest element
    # (with the 61-bit default: at least 15 for the weights and 25 for the other operand)
    relative_a, relative_b = la + math.log2(float(a.abs().max())), lb + math.log2(float(b.abs().max()))
    assert relative_a >= 6 and relative_b >= min(6, (b_bits or 99) - 3)  # sign bit, floor, rounding at the cap
    if p == P:
        assert relative_a >= 25 and relative_b >= min(15, (b_bits or 99) - 3)


def test_contraction_lengths():
    assert contraction_length("matmul", (4, 9), (9, 3)) == 9
    assert contraction_length("conv2d", (1, 3, 8, 8), (6, 3, 5, 5)) == 75
    assert contraction_length("conv2d_input", (1, 6, 8, 8), (6, 3, 5, 5)) == 150


def _op_operands(fn, g, stride=1, dilation=1):
    params = {}
    if fn == "matmul":
        return torch.randn(6, 40, generator=g), torch.randn(40, 7, generator=g), params
    b = torch.randn(5, 3, 3, 3, generator=g)
    params = {"stride": (stride, stride), "padding": (1, 1), "dilation": (dilation, dilation)}
    x = torch.randn(4, 3, 9, 9, generator=g)
    if fn == "conv2d":
        return x, b, params
    y = torch.nn.functional.conv2d(x, b, **params)
    params["input_size"] = tuple(x.shape)
    return torch.randn(y.shape, generator=g), b, params


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["matmul", "conv2d", "conv2d_input"]), st.integers(1, 3), st.integers(1, 2),
       st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.booleans(), st.sampled_from([P, 2**24 - 3]),
       st.sampled_from([24, 16, 8]), st.booleans())
def test_encode_scaled_never_wraps_and_decodes_within_bound(fn, stride, dilation, scale_a, scale_b, stochastic,
                                                            p, b_bits, column_scales):
    """Per-row / per-column scales: the exact integer result stays within (p−1)/2 (checked with the
    engine's exact product) and the decoded result is within the elementwise error bound."""
    g = torch.Generator().manual_seed(int(scale_a * 1000) % 9973)
    a, b, params = _op_operands(fn, g, stride, dilation)
    spread_rows = torch.logspace(0, 6, a.shape[0]).reshape(-1, *[1] * (a.dim() - 1))  # rows 1e6 apart
    a, b = a * scale_a * spread_rows, b * scale_b
    u = torch.rand(a.shape, generator=g).double() if stochastic else None
    encoded = codec.encode_scaled(fn, a, b, params, p, uniforms=u, b_bits=b_bits, column_scales=column_scales)
    assert int(encoded.qb.abs().max()) <= 2 ** (b_bits - 1) - 1
    from blindtrain.field.engine import FieldEngine

    exact = codec.centred(FieldEngine(P).bilinear(fn, encoded.qa, encoded.qb, params), P)  # |·| < 2^60
    assert int(exact.abs().max()) <= codec.headroom(p)
    decoded = encoded.decode(mod_bilinear(fn, codec.to_field(encoded.qa, p), encoded.qb, p, params), p)
    rho = 1.0 if stochastic else 0.5
    err_a = rho * torch.ldexp(torch.ones(()), -encoded.row_exponents.double())
    err_b = 0.5 * torch.ldexp(torch.ones(()), -encoded.column_exponents.double())
    bound = codec.error_bound(fn, a, b, err_a, err_b, params)
    assert bool(((decoded - bilinear.apply(fn, a.double(), b.double(), **params)).abs() <= bound + 1e-9).all())


@pytest.mark.parametrize("fn", ["matmul", "conv2d", "conv2d_input"])
def test_encode_scaled_gives_every_row_and_column_its_own_bits(fn):
    """A row (sample) 2^20 smaller than the largest, and a weight column 2^10 smaller, keep the same
    relative precision as the largest: per-tensor exponents would lose ~20 / ~10 bits on them."""
    g = torch.Generator().manual_seed(3)
    a, b, params = _op_operands(fn, g)
    a[0] *= 2.0**-20
    if fn == "conv2d":
        b[0] *= 2.0**-10
    else:
        b[:, 0] *= 2.0**-10
    encoded = codec.encode_scaled(fn, a, b, params, P, b_bits=24, column_scales=True)
    exact = bilinear.apply(fn, a.double(), b.double(), **params)
    decoded = encoded.decode(mod_bilinear(fn, codec.to_field(encoded.qa, P), encoded.qb, P, params), P)
    small_row = ((decoded - exact)[0].abs().max() / exact[0].abs().max()).item()
    other_rows = ((decoded - exact)[1:].abs().max() / exact[1:].abs().max()).item()
    assert small_row <= 4 * other_rows + 1e-12
    column_bits = codec.magnitude_bits(encoded.qb[0] if fn == "conv2d" else encoded.qb[:, 0])
    assert column_bits == 24
    per_tensor = codec.encode_pair(fn, a, b, params, P, b_bits=24)
    per_tensor_decoded = per_tensor.decode(mod_bilinear(fn, codec.to_field(per_tensor.qa, P), per_tensor.qb, P,
                                                        params), P)
    per_tensor_small = ((per_tensor_decoded - exact)[0].abs().max() / exact[0].abs().max()).item()
    assert small_row * 100 < per_tensor_small  # the fix matters: per-tensor is >100x worse there
