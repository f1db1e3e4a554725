"""The field engine on CUDA (int8 limbs on tensor cores via ``torch._int_mm``, and float64) agrees bit for bit
with the CPU (skipped without a CUDA device; the CUDA shape rules are met by zero padding)."""

import pytest
import torch

from blindtrain.field.codec import DEFAULT_MODULUS as P
from blindtrain.field.engine import FieldEngine


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["int8", "float64"])
@pytest.mark.parametrize("fn", ["matmul", "conv2d", "conv2d_input", "conv2d_weight"])
def test_engine_cuda_matches_cpu(fn, backend):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the CUDA path of the field engine is not exercised")
    g = torch.Generator().manual_seed(0)
    params = {}
    if fn == "matmul":  # odd sizes: 5 rows (< 17), K = 300, 33 columns (not multiples of 8)
        a, b = torch.randint(0, P, (5, 300), generator=g), torch.randint(-2**15, 2**15, (300, 33), generator=g)
        b = b.to(torch.int16)
    else:
        params = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}
        b = torch.randint(-2**15, 2**15, (8, 4, 3, 3), generator=g).to(torch.int16)
        if fn == "conv2d":
            a = torch.randint(0, P, (2, 4, 9, 9), generator=g)
        elif fn == "conv2d_input":
            a = torch.randint(0, P, (2, 8, 9, 9), generator=g)
            params["input_size"] = (2, 4, 9, 9)
        else:
            a = torch.randint(0, P, (2, 4, 9, 9), generator=g)
            b = torch.randint(0, P, (2, 8, 9, 9), generator=g)
            params["weight_size"] = (8, 4, 3, 3)
    cpu = FieldEngine(P, backend=backend).bilinear(fn, a, b, params)
    gpu = FieldEngine(P, backend=backend).bilinear(fn, a.cuda(), b.cuda(), params)
    assert gpu.is_cuda and torch.equal(cpu, gpu.cpu())
