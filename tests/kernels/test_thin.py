"""The enclave's thin-channel convolutions equal torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from blindtrain.kernels import thin


@pytest.mark.parametrize("kernel,stride,padding,dilation,size", [
    ((3, 3), 1, 1, 1, (8, 8)), ((3, 3), 2, 1, 1, (9, 8)), ((1, 1), 2, 0, 1, (8, 8)), ((2, 3), 1, (1, 2), 1, (7, 9)),
    ((3, 3), 1, 2, 2, (9, 9)), ((5, 5), 1, 2, 1, (8, 8)), ((4, 4), 4, 0, 1, (8, 8)), ((3, 3), 3, 0, 1, (10, 11))])
@pytest.mark.parametrize("n,m", [(5, 6), (1, 1)])  # (1, 1): the narrow maps F.conv2d takes (the tolerances)
def test_thin_convolutions_match_torch(kernel, stride, padding, dilation, size, n, m):
    torch.manual_seed(0)
    params = {"stride": stride, "padding": padding, "dilation": dilation}
    b, J = 3, 2
    x = torch.randn(b, n, *size, dtype=torch.float64)
    w = torch.randn(J, n, *kernel, dtype=torch.float64)
    y = F.conv2d(x, w, **params)
    torch.testing.assert_close(thin.conv(x, w, params), y)
    g = torch.randn(b, m, *y.shape[2:], dtype=torch.float64)
    v = torch.randn(m, J, *kernel, dtype=torch.float64)
    size_in = (b, J, *size)
    torch.testing.assert_close(thin.conv_input(g, v, size_in, params), conv2d_input(size_in, v, g, **params))
    gj = torch.randn(b, J, *y.shape[2:], dtype=torch.float64)
    torch.testing.assert_close(thin.conv_weight_thin_out(x, gj, kernel, params),
                               conv2d_weight(x, (J, n, *kernel), gj, **params))
    xs = torch.randn(b, J, *size, dtype=torch.float64)
    torch.testing.assert_close(thin.conv_weight_thin_in(xs, g, kernel, params),
                               conv2d_weight(xs, (m, J, *kernel), g, **params))
    vec = torch.randn(m, J, dtype=torch.float64)
    torch.testing.assert_close(thin.channels(g, vec), torch.einsum("bmhw,mk->bkhw", g, vec))
