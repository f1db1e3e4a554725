"""The op table (``blindtrain.bilinear.OPS``): every entry against PyTorch, and every rule the protocols
read from it (contraction length, output-channel axes, MACs, the field engine's lowering, Freivalds).

A new op is one entry in the table plus one case in :data:`CASES` (the first test fails until it has one).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from blindtrain import bilinear
from blindtrain.field import freivalds
from blindtrain.field.engine import FieldEngine

P = 2**61 - 1
CONV2D = {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 2)}
CONV1D = {"stride": 2, "padding": 1, "dilation": 2}


def _grad(forward, wrt: str, a, b, grad_out):
    """The gradient of ``<forward(a, b), grad_out>`` with respect to operand ``wrt`` (torch autograd)."""
    a, b = a.clone().requires_grad_(wrt == "a"), b.clone().requires_grad_(wrt == "b")
    (grad,) = torch.autograd.grad((forward(a, b) * grad_out).sum(), a if wrt == "a" else b)
    return grad


def _conv_cases(name, conv, x_shape, w_shape, params):
    """The three ops of a convolution: (a, b, params, torch's result) each."""
    g = torch.Generator().manual_seed(len(name))
    x, w = torch.randn(x_shape, generator=g, dtype=torch.float64), torch.randn(w_shape, generator=g, dtype=torch.float64)
    y = conv(x, w, **params)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    return {
        name: (x, w, params, y),
        f"{name}_input": (dy, w, {**params, "input_size": tuple(x.shape)}, _grad(lambda a, b: conv(a, b, **params),
                                                                                 "a", x, w, dy)),
        f"{name}_weight": (x, dy, {**params, "weight_size": tuple(w.shape)}, _grad(lambda a, b: conv(a, b, **params),
                                                                                   "b", x, w, dy)),
    }


def _cases() -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64)

    a, b = r(5, 7), r(7, 3)
    tn_a, tn_b = r(6, 4), r(6, 3)
    q, k = r(2, 3, 5, 4), r(2, 3, 4, 6)
    return {
        "matmul": (a, b, {}, a @ b),
        "matmul_tn": (tn_a, tn_b, {}, tn_a.t() @ tn_b),
        "bmm": (q, k, {}, torch.einsum("xhpq,xhqr->xhpr", q, k)),
        **_conv_cases("conv2d", F.conv2d, (2, 3, 9, 8), (4, 3, 3, 2), CONV2D),
        **_conv_cases("conv1d", F.conv1d, (2, 3, 11), (4, 3, 3), CONV1D),
    }


CASES = _cases()


def test_every_op_in_the_table_has_a_case_here():
    assert set(CASES) == set(bilinear.OPS)


@pytest.mark.parametrize("fn", sorted(bilinear.OPS))
def test_apply_matches_torch(fn):
    a, b, params, expected = CASES[fn]
    out = bilinear.apply(fn, a, b, **params)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", sorted(bilinear.OPS))
def test_contraction_length_is_the_products_each_output_sums(fn):
    a, b, params, _ = CASES[fn]
    counts = bilinear.apply(fn, torch.ones_like(a), torch.ones_like(b), **params)
    length = bilinear.contraction_length(fn, a.shape, b.shape, params)
    assert counts.max() <= length  # a bound: the field engine's exactness rests on it
    dense = {k: v for k, v in params.items() if k in ("input_size", "weight_size")}  # stride 1, no padding
    if dense != params:
        a_dense, b_dense = _dense_operands(fn, a, b)
        dense = {k: _dense_size(fn, k, a_dense, b_dense) for k in dense}
        counts = bilinear.apply(fn, torch.ones_like(a_dense), torch.ones_like(b_dense), **dense)
        length = bilinear.contraction_length(fn, a_dense.shape, b_dense.shape, dense)
    assert counts.max() == length  # and tight: the full window of an interior output


def _dense_operands(fn, a, b):
    """Operands of the same op at stride 1 without padding or dilation."""
    base = "conv2d" if fn.startswith("conv2d") else "conv1d"
    x, w, _, _ = CASES[base]
    y = bilinear.apply(base, x, w)
    return {base: (x, w), f"{base}_input": (y, w), f"{base}_weight": (x, y)}[fn]


def _dense_size(fn, key, a, b):
    base = "conv2d" if fn.startswith("conv2d") else "conv1d"
    return tuple(CASES[base][0].shape) if key == "input_size" else tuple(CASES[base][1].shape)


@pytest.mark.parametrize("fn", sorted(bilinear.OPS))
def test_macs_are_the_flops_torch_counts(fn):
    a, b, params, _ = CASES[fn]
    with FlopCounterMode(display=False) as counter:
        out = bilinear.apply(fn, a, b, **params)
    assert 2 * bilinear.macs(fn, a.shape, b.shape, out.shape) == counter.get_total_flops()


CHECKABLE = sorted(name for name, entry in bilinear.OPS.items() if entry.checkable)


def test_the_checkable_ops_are_the_data_times_weight_ones():
    assert CHECKABLE == ["conv1d", "conv1d_input", "conv2d", "conv2d_input", "matmul"]
    assert freivalds.SUPPORTED and set(freivalds.SUPPORTED) == set(CHECKABLE)


@pytest.mark.parametrize("fn", CHECKABLE)
def test_weight_channels_map_onto_the_output_channel_axis(fn):
    """``f(A, B)·s = f(A, B·s)`` over the declared axes: the identity Freivalds' check rests on."""
    entry = bilinear.op(fn)
    a, b, params, _ = CASES[fn]
    s = torch.randn(entry.channels(b.shape), 2, dtype=torch.float64)
    left = bilinear.apply(fn, a, b, **params).movedim(entry.out_channel_axis, -1) @ s
    bs = (b.movedim(entry.b_channel_axis, -1) @ s).movedim(-1, entry.b_channel_axis)
    right = bilinear.apply(fn, a, bs, **entry.with_channels(params, 2)).movedim(entry.out_channel_axis, -1)
    torch.testing.assert_close(left, right, rtol=1e-9, atol=1e-9)


def _integers(t: torch.Tensor, bound: int) -> torch.Tensor:
    return torch.randint(-bound, bound + 1, t.shape, generator=torch.Generator().manual_seed(t.numel()))


@pytest.mark.parametrize("backend", ["int8", "float64"])
@pytest.mark.parametrize("fn", sorted(bilinear.OPS))
def test_the_field_engine_lowers_every_op_exactly(fn, backend):
    a, b, params, _ = CASES[fn]
    qa, qb = _integers(a, 2**30), _integers(b, 2**12)  # sums below 2^53: float64 is exact
    got = FieldEngine(P, backend=backend).bilinear(fn, qa, qb, params)
    exact = bilinear.apply(fn, qa.to(torch.int64).double(), qb.double(), **params)  # |values| < 2^53: exact
    assert torch.equal(got, torch.remainder(exact.to(torch.int64), P))


@pytest.mark.parametrize("fn", CHECKABLE)
def test_freivalds_accepts_the_honest_result_and_catches_one_wrong_element(fn):
    engine = FieldEngine(P)
    a, b, params, _ = CASES[fn]
    qa, qb = _integers(a, 2**20), _integers(b, 2**10)
    y = engine.bilinear(fn, qa, qb, params)
    s = torch.randint(-freivalds.S_BOUND, freivalds.S_BOUND + 1, (freivalds.channels(fn, qb.shape), 2))
    bs = freivalds.contract_weight(fn, qb, s, engine)
    assert freivalds.check(fn, qa, y, bs, s, engine, params)
    wrong = y.clone()
    wrong.view(-1)[wrong.numel() // 2] += 1
    assert not freivalds.check(fn, qa, wrong, bs, s, engine, params)


def test_conv1d_is_one_entry_viewed_as_conv2d():
    entry = bilinear.op("conv1d")
    assert entry.base == "conv2d"
    base_fn, a, b, params, finish = bilinear.as_base("conv1d_input", (2, 4, 5), (4, 3, 3),
                                                      {"stride": 2, "padding": 1, "input_size": (2, 3, 11)})
    assert (base_fn, a, b) == ("conv2d_input", (2, 4, 1, 5), (4, 3, 1, 3))
    assert params == {"stride": (1, 2), "padding": (0, 1), "input_size": (2, 3, 1, 11)}


def test_unknown_ops_are_named():
    with pytest.raises(ValueError, match="unknown bilinear function 'conv3d'.*known"):
        bilinear.apply("conv3d", torch.ones(1), torch.ones(1))


def test_a_field_protocol_offloads_and_checks_conv1d_from_its_table_entry_alone():
    """otp has no conv1d code: its masking, fixed-point bounds, field lowering and Freivalds check all read
    the table, so Conv1d's forward and input gradient go to the worker and are verified."""
    import blindtrain as bt
    from blindtrain.glue import LayerSite

    torch.manual_seed(0)
    x, w = torch.randn(4, 3, 20), torch.randn(5, 3, 3)
    params = {"stride": 2, "padding": 1}
    x_ref, w_ref = x.clone().requires_grad_(), w.clone().requires_grad_()
    y_ref = F.conv1d(x_ref, w_ref, **params)
    dy = torch.randn(y_ref.shape)
    (y_ref * dy).sum().backward()
    with bt.Session(protocol="otp", device="cpu") as session:
        otp, site = session.protocol, LayerSite("c1", "conv1d", tuple(w.shape), params)
        y = otp.bilinear(site, "forward", "conv1d", x, w, roles=("data", "weight"), params=params)
        dx = otp.bilinear(site, "grad_input", "conv1d_input", dy, w, roles=("data", "weight"),
                          params={**params, "input_size": tuple(x.shape)})
        checks = session.ledger.integrity_checks
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-5, atol=1e-5 * float(y_ref.detach().abs().max()))
    torch.testing.assert_close(dx, x_ref.grad, rtol=1e-5, atol=1e-5 * float(x_ref.grad.abs().max()))
    assert checks == 2
