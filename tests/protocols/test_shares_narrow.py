"""The enclave's narrow products mod p (``shares_narrow``) equal exact Python integer arithmetic."""

from __future__ import annotations

import pytest
import torch

from blindtrain.field import codec
from blindtrain.protocols.shares_beaver import field_elements, reconstruct, sub_mod
from blindtrain.protocols.shares_narrow import digits, matmul_mod


def _exact(a, b, p):
    rows, cols = a.shape[0], b.shape[1]
    return torch.tensor([[sum(int(a[i, t]) * int(b[t, j]) for t in range(a.shape[1])) % p for j in range(cols)]
                         for i in range(rows)])


@pytest.mark.parametrize("p", [codec.DEFAULT_MODULUS, 2**31 - 1, 1_000_000_007])
@pytest.mark.parametrize("a_low,a_high,b_low,b_high,k", [
    (0, None, -2**19, 2**19, 300),       # a result (field elements) times a check vector
    (-2**40, 2**40, 0, None, 300),       # an encoded activation times a projection (field elements)
    (0, None, 0, None, 20000),           # field times field, K over several float64 chunks
    (-2**61, 2**61, -2**21, 2**21, 7),   # signed values beyond p: any representative
])
def test_matmul_mod_is_exact(p, a_low, a_high, b_low, b_high, k):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(a_low, a_high if a_high is not None else p, (3, k), generator=g)
    b = torch.randint(b_low, b_high if b_high is not None else p, (k, 2), generator=g)
    got = matmul_mod(a, b, p)
    assert got.dtype == torch.int64 and bool(((got >= 0) & (got < p)).all())
    assert torch.equal(got, _exact(a, b, p))


def test_digits_recompose_and_stay_within_their_bound():
    x = torch.tensor([0, 1, -1, 2**21, -(2**21) - 5, 2**60 + 12345, -(2**61) + 7])
    d, count, bound = digits(x)
    assert count == 3 and int(d.abs().max()) <= bound
    assert [sum(int(d[j, i]) << (21 * j) for j in range(count)) for i in range(x.numel())] == x.tolist()


def test_modular_helpers_without_division():
    p = 2**61 - 1
    q = torch.tensor([-5, 0, 7, -(p - 1) // 2, 3 * p + 2])
    assert field_elements(q, p).tolist() == [p - 5, 0, 7, p - (p - 1) // 2, 2]
    x, y = torch.tensor([0, 5, p - 1]), torch.tensor([1, 5, 0])
    assert sub_mod(x, y, p).tolist() == [p - 1, 0, p - 1]
    assert reconstruct((torch.tensor([p - 1, -1, 2 * p]), torch.tensor([p - 1, 1, 3])), p).tolist() == [p - 2, 0, 3]
