"""Cost-model projections: turn a protocol's modelled :class:`~blindtrain.costs.StepCost` into
seconds per step on a *device profile*.

Everything here is a PROJECTION from analytic counts and assumed (or locally calibrated)
rates, never a measurement.  Two kinds of profile:

* ``local``: calibrated on the machine the bench runs on (a matmul, an elementwise op and a
  copy, timed at start-up).  The worker and the enclave share this machine, so the terms add
  up.  The bench compares it with the measurement (does measured time track modelled work?
  does the ordering of protocols agree?).
* named profiles (``sgx1-desktop-rtx3090``, ``sgx2-xeon-a100``): assumed figures for an SGX
  enclave beside a GPU, with the modelled SGX transition and EPC paging costs.  They answer
  "what would this split cost on real hardware", and are labelled as such in the report.

Projected step time = enclave FLOPs / enclave GFLOP/s + enclave elementwise / elementwise
rate + worker FLOPs / worker rate + bytes / link rate + round trips x 2 transitions +
EPC paging (pages of the measured enclave peak above the EPC, out and in once per step).
No overlap of enclave, link and worker is assumed (a conservative, sequential schedule).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    enclave_gflops: float        # sustained FP32 GFLOP/s of the enclave's cores on matmuls
    enclave_gelems: float        # elementwise operations per second (1e9) on the enclave
    worker_tflops: float         # sustained FP32 TFLOP/s of one worker (GPU)
    link_gbps: float             # GB/s between enclave and worker (each way, after encryption/copies)
    enclave_cores: int = 1       # cores the enclave's threads run on (the GFLOP/s figure is for all of them)
    transition_cycles: int = 13_000
    page_cycles: int = 40_000
    epc_bytes: int = 128 * 2**20
    cpu_hz: float = 3.0e9
    calibrated: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "sgx1-desktop-rtx3090": DeviceProfile(
        "sgx1-desktop-rtx3090",
        "assumed: SGX1 desktop enclave (4 cores, ~100 GFLOP/s FP32, 128 MiB EPC) beside an RTX 3090 "
        "(~35 TFLOP/s FP32 peak, 50% sustained) over PCIe 3 (~10 GB/s)",
        enclave_gflops=100.0, enclave_gelems=2.0, worker_tflops=17.5, link_gbps=10.0, enclave_cores=4,
        epc_bytes=128 * 2**20),
    "sgx2-xeon-a100": DeviceProfile(
        "sgx2-xeon-a100",
        "assumed: SGX2 Xeon enclave (16 cores, ~500 GFLOP/s FP32, 64 GiB EPC) beside an A100 "
        "(19.5 TFLOP/s FP32 peak, 70% sustained) over PCIe 4 (~20 GB/s)",
        enclave_gflops=500.0, enclave_gelems=8.0, worker_tflops=13.6, link_gbps=20.0, enclave_cores=16,
        epc_bytes=64 * 2**30),
}
DEFAULT_PROFILE = "sgx1-desktop-rtx3090"


def _best_rate(fn, work: float, repeats: int = 3) -> float:
    fn()  # warm
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return work / max(best, 1e-9)


def calibrate(worker_device: str = "cpu") -> DeviceProfile:
    """The ``local`` profile: rates of this machine, measured now (about a second)."""
    n = 768
    a, b = torch.randn(n, n), torch.randn(n, n)
    enclave_flops = _best_rate(lambda: a @ b, 2.0 * n ** 3)
    x, y = torch.randn(2**22), torch.randn(2**22)
    elems = _best_rate(lambda: torch.add(x, y), float(x.numel()))
    big = torch.randn(2**23)
    copy_bytes = _best_rate(lambda: big.clone(), float(big.numel() * 4))
    worker_flops, link = enclave_flops, copy_bytes
    if worker_device.startswith("cuda") and torch.cuda.is_available():
        m = 4096
        ga, gb = torch.randn(m, m, device=worker_device), torch.randn(m, m, device=worker_device)

        def gpu_mm():
            ga @ gb
            torch.cuda.synchronize()

        worker_flops = _best_rate(gpu_mm, 2.0 * m ** 3)
        host = torch.randn(2**24).pin_memory()

        def h2d():
            host.to(worker_device, non_blocking=False)
            torch.cuda.synchronize()

        link = _best_rate(h2d, float(host.numel() * 4))
    return DeviceProfile(
        "local", f"calibrated on this machine at start-up (worker device {worker_device}); "
                 "no SGX transition or paging cost (the enclave is emulated)",
        enclave_gflops=enclave_flops / 1e9, enclave_gelems=elems / 1e9, worker_tflops=worker_flops / 1e12,
        link_gbps=link / 1e9, enclave_cores=torch.get_num_threads(), transition_cycles=0, page_cycles=0,
        epc_bytes=2**62, calibrated=True)


def project(cost: dict, profile: DeviceProfile, *, enclave_peak_bytes: int = 0, batch: int = 1,
            include_paging: bool = True) -> dict:
    """Projected seconds per step of a modelled step ``cost`` (a ``StepCost.as_dict()``) on ``profile``.

    ``include_paging=False`` reports the paging term under ``terms_excluded`` instead of adding it
    (when ``enclave_peak_bytes`` is not a trustworthy enclave footprint, e.g. an in-process CPU worker)."""
    terms = {
        "enclave_compute": cost["enclave_flops"] / (profile.enclave_gflops * 1e9)
        + cost["enclave_elementwise"] / (profile.enclave_gelems * 1e9),
        "worker_compute": cost["worker_flops"] / (profile.worker_tflops * 1e12),
        "transfer": (cost["bytes_to_worker"] + cost["bytes_from_worker"]) / (profile.link_gbps * 1e9),
        "transitions": cost["round_trips"] * 2 * profile.transition_cycles / profile.cpu_hz,
        "paging": max(enclave_peak_bytes - profile.epc_bytes, 0) / 4096 * 2 * profile.page_cycles / profile.cpu_hz,
    }
    excluded = {}
    if not include_paging:
        excluded["paging"] = terms.pop("paging")
    total = sum(terms.values())
    return {"profile": profile.name, "step_seconds": total, "terms_excluded": excluded,
            "steps_per_second": 1 / total if total > 0 else None,
            "samples_per_second": batch / total if total > 0 else None, "terms": terms,
            "label": "projection from the cost model, not a measurement"}


def modelled_enclave_seconds(cost: dict, profile: DeviceProfile) -> float:
    """The enclave-compute term alone: what the measured enclave seconds should track."""
    return cost["enclave_flops"] / (profile.enclave_gflops * 1e9) + \
        cost["enclave_elementwise"] / (profile.enclave_gelems * 1e9)
