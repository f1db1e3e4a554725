"""The worker's exact modular op on CUDA agrees with the CPU (skipped without a CUDA device)."""

import pytest
import torch

from blindtrain.field.codec import DEFAULT_MODULUS as P
from blindtrain.field.modular import mod_bilinear


@pytest.mark.cuda
@pytest.mark.parametrize("fn", ["matmul", "conv2d", "conv2d_input"])
def test_mod_bilinear_cuda_matches_cpu(fn):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the CUDA path of bilinear_mod is not exercised")
    g = torch.Generator().manual_seed(0)
    params = {}
    if fn == "matmul":
        a, b = torch.randint(0, P, (64, 300), generator=g), torch.randint(-P // 2, P // 2, (300, 32), generator=g)
    else:
        b = torch.randint(-P // 2, P // 2, (8, 4, 3, 3), generator=g)
        params = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}
        if fn == "conv2d":
            a = torch.randint(0, P, (2, 4, 9, 9), generator=g)
        else:
            a = torch.randint(0, P, (2, 8, 9, 9), generator=g)
            params["input_size"] = (2, 4, 9, 9)
    cpu = mod_bilinear(fn, a.double(), b.double(), P, params)
    gpu = mod_bilinear(fn, a.double().cuda(), b.double().cuda(), P, params).cpu()
    assert torch.equal(cpu, gpu)
