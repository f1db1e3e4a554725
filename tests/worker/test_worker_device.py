"""The worker computes on CUDA when present (exercised on a GPU machine; skipped here otherwise)."""

from __future__ import annotations

import pytest
import torch

from blindtrain.boundary import Request, Sent, Tag
from blindtrain.worker import Worker, WorkerConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_auto_picks_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert Worker(WorkerConfig(device="auto")).device == "cpu"


@needs_cuda
@pytest.mark.cuda
def test_cuda_worker_matches_cpu_and_field_ops_stay_exact():
    worker = Worker(WorkerConfig(device="cuda"))
    assert worker.device == "cuda"
    a, b = torch.randn(64, 128), torch.randn(128, 32)
    tag = Tag(0, "fc", "forward")
    out = worker.handle(Request("bilinear", {"A": Sent(a, "clear"), "B": Sent(b, "clear")}, tag,
                                params={"fn": "matmul"})).result
    torch.testing.assert_close(out.cpu(), a @ b, rtol=1e-4, atol=1e-4)
    p = 2**24 - 3
    ai, bi = torch.randint(0, p, (8, 16)).double(), torch.randint(-2**8, 2**8, (16, 4)).double()
    exact = worker.handle(Request("bilinear", {"A": Sent(ai, "masked"), "B": Sent(bi, "public")}, tag,
                                  params={"fn": "matmul", "modulus": p})).result
    assert torch.equal(exact.cpu(), torch.remainder(ai @ bi, p))
