"""The field engine is exact: every op and back-end against Python big-integer references, on random,
all-maximal and long-contraction inputs, at the int32 and float64 accumulation bounds."""

import pytest
import torch

from blindtrain import bilinear
from blindtrain.field import engine as engine_mod
from blindtrain.field import integers, limbs
from blindtrain.field.engine import FieldEngine, int8_matmul

MERSENNE = 2**61 - 1
GENERAL = 2305843009213693921  # 2^61 − 31, prime, not Mersenne: the shift-and-reduce path
SMALL = 2**24 - 3
BACKENDS = ("int8", "float64")

CONV = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1)}
CASES = {
    "matmul": ((5, 33), (33, 7), {}),
    "matmul_3d": ((2, 3, 17), (17, 4), {}),
    "bmm": ((2, 3, 5, 9), (2, 3, 9, 4), {}),
    "matmul_tn": ((9, 5), (9, 4), {}),
    "conv2d": ((2, 3, 7, 7), (4, 3, 3, 3), CONV),
    "conv2d_dilated": ((2, 3, 9, 9), (4, 3, 3, 3), {"stride": (1, 1), "padding": (2, 2), "dilation": (2, 2)}),
    "conv2d_input": ((2, 4, 4, 4), (4, 3, 3, 3), {**CONV, "input_size": (2, 3, 7, 7)}),
    "conv2d_input_pad": ((2, 4, 8, 8), (4, 3, 3, 3), {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1),
                                                       "input_size": (2, 3, 8, 8)}),
    "conv2d_input_1x1": ((2, 4, 3, 3), (4, 3, 1, 1), {"stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
                                                       "input_size": (2, 3, 6, 6)}),
    "conv2d_weight": ((2, 3, 7, 7), (2, 4, 4, 4), {**CONV, "weight_size": (4, 3, 3, 3)}),
}


def fn_of(case: str) -> str:
    return {"matmul_3d": "matmul", "conv2d_dilated": "conv2d", "conv2d_input_pad": "conv2d_input",
            "conv2d_input_1x1": "conv2d_input"}.get(case, case)


def reference(fn, a, b, params, p):
    """``fn(a, b) mod p`` with Python integers: 16-bit digits of the residues, each digit product exact in
    float64 through the plain PyTorch op (``K·2^32 < 2^53``), recombined with big integers."""
    a, b = torch.remainder(a.long(), p), torch.remainder(b.long(), p)
    digits = 4 if p >= 2**48 else 2
    da = [((a >> (16 * i)) & 0xFFFF).double() for i in range(digits)]
    db = [((b >> (16 * j)) & 0xFFFF).double() for j in range(digits)]
    total, shape = None, None
    for i, x in enumerate(da):
        for j, y in enumerate(db):
            part = bilinear.apply(fn, x, y, **params)
            shape = part.shape
            weight = pow(2, 16 * (i + j), p)
            values = [int(v) * weight for v in part.reshape(-1).tolist()]
            total = values if total is None else [t + v for t, v in zip(total, values)]
    return torch.tensor([t % p for t in total], dtype=torch.int64).reshape(shape)


def operands(case, p, kind, seed=0):
    a_shape, b_shape, params = CASES[case]
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, p, a_shape, generator=g)
    if kind == "int16":
        b = torch.randint(-2**15, 2**15, b_shape, generator=g).to(torch.int16)
    elif kind == "field":
        b = torch.randint(0, p, b_shape, generator=g)
    else:  # signed, narrow but int64
        b = torch.randint(-2**20, 2**20, b_shape, generator=g)
    return a, b, params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", ["int16", "field", "signed"])
def test_every_op_matches_big_integers(case, backend, kind):
    a, b, params = operands(case, MERSENNE, kind)
    got = FieldEngine(MERSENNE, backend=backend).bilinear(fn_of(case), a, b, params)
    assert got.dtype == torch.int64
    assert torch.equal(got, reference(fn_of(case), a, b, params, MERSENNE))


@pytest.mark.parametrize("p", [GENERAL, SMALL, 65521])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["matmul", "conv2d", "conv2d_input", "conv2d_weight"])
def test_other_primes(case, backend, p):
    a, b, params = operands(case, p, "field", seed=3)
    got = FieldEngine(p, backend=backend).bilinear(fn_of(case), a, b, params)
    assert torch.equal(got, reference(fn_of(case), a, b, params, p))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a_value", [(MERSENNE - 1) // 2, (MERSENNE + 1) // 2, MERSENNE - 1])
@pytest.mark.parametrize("b_value", [2**15 - 1, -2**15, (MERSENNE - 1) // 2])
@pytest.mark.parametrize("case", ["matmul", "conv2d", "conv2d_input"])
def test_all_maximal_inputs(case, backend, a_value, b_value):
    a_shape, b_shape, params = CASES[case]
    a = torch.full(a_shape, a_value, dtype=torch.int64)
    b = torch.full(b_shape, b_value, dtype=torch.int16 if abs(b_value) <= 2**15 else torch.int64)
    got = FieldEngine(MERSENNE, backend=backend).bilinear(case, a, b, params)
    assert torch.equal(got, reference(case, a, b, params, MERSENNE))


# The largest contraction lengths of the offloaded ops of resnet50 and vit-tiny (CIFAR, batch 8), from
#   blindtrain.costs.trace_ops + blindtrain.field.modular.contraction_length (test_stress_lengths_are_current).
LONGEST = {"resnet50": {"conv2d": 4608, "conv2d_input": 4608, "conv2d_weight": 8192, "matmul": 2048},
           "vit-tiny": {"matmul": 768, "matmul_tn": 520, "bmm": 65, "conv2d_weight": 512}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", sorted({k for lengths in LONGEST.values() for k in lengths.values()}))
def test_longest_contractions_all_maximal(k, backend):
    """Narrow but long: a 2×K field operand at its largest centred value against K×3 weights at the
    int16 extremes (and a full-width column), so every limb product is as large as it can be."""
    a = torch.full((2, k), (MERSENNE - 1) // 2, dtype=torch.int64)
    a[1] = (MERSENNE + 1) // 2
    b16 = torch.full((k, 3), -2**15, dtype=torch.int16)
    b16[:, 1] = 2**15 - 1
    expected = reference("matmul", a, b16, {}, MERSENNE)
    assert torch.equal(FieldEngine(MERSENNE, backend=backend).bilinear("matmul", a, b16), expected)
    b64 = torch.full((k, 2), MERSENNE - 2, dtype=torch.int64)
    assert torch.equal(FieldEngine(MERSENNE, backend=backend).bilinear("matmul", a, b64),
                       reference("matmul", a, b64, {}, MERSENNE))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_conv_weight_contraction(backend):
    """conv2d_weight sums over batch × positions: K = 8·16·16 = 2048 here, all-maximal."""
    x = torch.full((8, 2, 16, 16), (MERSENNE - 1) // 2, dtype=torch.int64)
    dy = torch.full((8, 3, 16, 16), (MERSENNE + 1) // 2, dtype=torch.int64)
    params = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "weight_size": (3, 2, 3, 3)}
    got = FieldEngine(MERSENNE, backend=backend).bilinear("conv2d_weight", x, dy, params)
    assert torch.equal(got, reference("conv2d_weight", x, dy, params, MERSENNE))


def test_int32_accumulator_bound_and_chunking():
    """int8 digits −128·−128 = 2^14: K = 131071 of them is the most an int32 holds (2^31 − 2^14); one more
    and the engine splits K into chunks, summed in int64."""
    for k in (131071, 131072, 140000):
        left = torch.full((1, 1, k), -128, dtype=torch.int8)
        right = torch.full((1, k, 1), -128, dtype=torch.int8)
        out = int8_matmul(left, right)
        assert int(out.reshape(())) == k * 2**14
    a = torch.full((1, 140000), -128, dtype=torch.int8)
    b = torch.full((140000, 1), -128, dtype=torch.int8)
    assert int(FieldEngine(MERSENNE, backend="int8").bilinear("matmul", a, b)) == 140000 * 2**14 % MERSENNE


def test_float64_widths_keep_partial_sums_exact():
    """At the float64 budget every partial sum is at most 2^53, and all-extreme digits reach it."""
    for k in (1, 7, 4096, 4608, 8192, 2**20):
        wl, wr = FieldEngine.float64_widths(k, MERSENNE // 2, 2**15)
        assert k * 2 ** (wl - 1) * 2 ** (wr - 1) <= 2**53
    k = 4096
    wl, wr = FieldEngine.float64_widths(k, MERSENNE // 2, MERSENNE // 2)
    nl, nr = limbs.limbs_needed(MERSENNE // 2, wl), limbs.limbs_needed(MERSENNE // 2, wr)
    # the most negative value each digit count represents: every digit at −2^(w−1)
    a_value = -(2 ** (wl - 1)) * sum(2 ** (wl * i) for i in range(nl))
    b_value = -(2 ** (wr - 1)) * sum(2 ** (wr * i) for i in range(nr))
    a = torch.full((1, k), a_value % MERSENNE, dtype=torch.int64)
    b = torch.full((k, 1), b_value % MERSENNE, dtype=torch.int64)
    got = FieldEngine(MERSENNE, backend="float64").bilinear("matmul", a, b)
    assert int(got) == k * (a_value % MERSENNE) * (b_value % MERSENNE) % MERSENNE


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropping_one_limb_product_is_detected(backend, monkeypatch):
    """The mutation the exactness tests must catch: one limb product left out of the recombination."""
    original = integers.combine

    def drop_one(terms, shape, p, *, device):
        return original(terms[:1] + terms[2:], shape, p, device=device)

    a, b, params = operands("matmul", MERSENNE, "int16")
    expected = reference("matmul", a, b, params, MERSENNE)
    monkeypatch.setattr(engine_mod.integers, "combine", drop_one)
    assert not torch.equal(FieldEngine(MERSENNE, backend=backend).bilinear("matmul", a, b), expected)


def test_auto_calibrates_once_per_shape_class_and_reports():
    engine_mod.CALIBRATION.clear()
    engine = FieldEngine(MERSENNE)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, MERSENNE, (16, 16, 8, 8), generator=g)  # 16·64 rows × 144 × 32: above TINY_WORK
    b = torch.randint(-2**15, 2**15, (32, 16, 3, 3), generator=g).to(torch.int16)
    params = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}
    first = engine.bilinear("conv2d", a, b, params)
    second = engine.bilinear("conv2d", a, b, params)
    assert torch.equal(first, second)
    assert torch.equal(first, FieldEngine(MERSENNE, backend="float64").bilinear("conv2d", a, b, params))
    report = engine.report()
    assert len(report["calibration"]) == 1
    chosen = report["calibration"][0]["chosen"]
    assert chosen in BACKENDS and set(report["calibration"][0]["ms"]) == set(BACKENDS)
    assert report["runs"] == {"conv2d": {chosen: 2}}
    assert engine.choose("conv2d", a, b, params) == chosen
    tiny = engine.bilinear("matmul", a[0, 0, :2, :3], b[0, 0])  # (2×3)@(3×3): not measured
    assert tiny.shape == (2, 3) and len(engine.report()["calibration"]) == 1


def test_operands_are_centred_and_bounded():
    engine = FieldEngine(MERSENNE, backend="int8")
    a = torch.tensor([[MERSENNE - 1, 3]])  # −1 and 3
    b = torch.tensor([[2], [5]])
    assert int(engine.bilinear("matmul", a, b)) == 13
    assert int(engine.bilinear("matmul", a - MERSENNE, b)) == 13  # any representative
    with pytest.raises(ValueError):
        FieldEngine(2**62 - 57)
    with pytest.raises(ValueError):
        FieldEngine(MERSENNE, backend="gpu")
    with pytest.raises(ValueError, match="groups"):
        engine.bilinear("conv2d", torch.zeros(1, 2, 4, 4, dtype=torch.int64), torch.zeros(2, 1, 3, 3,
                        dtype=torch.int64), {"groups": 2})


@pytest.mark.parametrize("p", [MERSENNE, GENERAL, SMALL, 2**31 - 1])
def test_mul_pow2_and_combine(p):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, p, (64,), generator=g)
    x[0], x[1] = 0, p - 1
    for k in (0, 1, 7, 8, 60, 61, 64, 72, 200):
        got = integers.mul_pow2(x, k, p).tolist()
        assert got == [v * pow(2, k, p) % p for v in x.tolist()], k
    terms = [integers.Term(8 * i, torch.full((3,), (-1) ** i * (2**31 - 1 - i)), 2**31) for i in range(9)]
    exact = sum((-1) ** i * (2**31 - 1 - i) * 2 ** (8 * i) for i in range(9)) % p
    assert integers.combine(terms, (3,), p, device="cpu").tolist() == [exact] * 3


def test_balanced_and_byte_limbs_reassemble():
    g = torch.Generator().manual_seed(2)
    v = torch.randint(-(2**60), 2**60, (50,), generator=g)
    for width in (8, 13, 26):
        n = limbs.limbs_needed(2**60, width)
        planes = limbs.balanced(v, width=width, count=n, dtype=torch.int64).planes
        assert planes.abs().max() <= 2 ** (width - 1)
        assert torch.equal(sum(planes[i] * 2 ** (width * i) for i in range(n)), v)
    for dtype in (torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        w = torch.randint(info.min, info.max, (7, 5), generator=g, dtype=torch.int64).to(dtype)
        w[0, 0], w[0, 1] = info.min, info.max
        limb = limbs.byte_planes(w, {})
        total = sum((limb.planes[i].long() + limb.offsets[i]) * 256**i for i in range(limb.count))
        assert torch.equal(total, w.long())


@pytest.mark.slow
def test_stress_lengths_are_current():
    """LONGEST above is what the models produce (recomputed: a few seconds per model)."""
    from blindtrain.costs import trace_ops
    from blindtrain.field.modular import contraction_length
    from blindtrain.models import build

    for model, lengths in LONGEST.items():
        ops = trace_ops(build(model, (3, 32, 32), 10), (3, 32, 32), batch=8)
        for fn, k in lengths.items():
            assert max(contraction_length(o.fn, o.a_shape, o.b_shape, o.params) for o in ops if o.fn == fn) == k


def test_byte_plane_offsets_past_the_int32_bound():
    """int16 weights (byte planes with offset 128) against a contraction longer than 131071."""
    k = 140000
    value = -128 * sum(256**i for i in range(7))  # every int8 digit −128: the largest row sums
    a = torch.full((1, k), value, dtype=torch.int64)
    b = torch.full((k, 1), -2**15, dtype=torch.int16)
    expected = k * value * -2**15 % MERSENNE
    assert int(FieldEngine(MERSENNE, backend="int8").bilinear("matmul", a, b)) == expected
