"""The field engine's throughput as a ratio to float32 on the same device (issue 12).

For each shape (the mlp's 4096×4096 layer at batch 64, resnet18's convolutions at batch 8) and
weight width (16 bits: int16, two int8 limbs; 24 bits: int32, four limbs — otp's default), one run
times, interleaved round by round: the float32 op (``torch.matmul`` / ``F.conv2d``), the exact
61-bit op ``f(A, B) mod (2^61 − 1)`` on each back-end (A uniform in F_p: eight int8 limbs), and —
the baseline this engine replaced — the float64 limb path that served p = 2^24 − 3 before
(:func:`legacy_float64`).  Reported: median milliseconds and ``median / median(float32)``.

    PYTHONPATH=src python scripts/field_engine_bench.py --out field-engine.json
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .. import bilinear
from ..field.engine import BACKENDS, FieldEngine

MODULUS = 2**61 - 1
LEGACY_MODULUS = 2**24 - 3


@dataclass(frozen=True)
class Shape:
    name: str
    fn: str
    a_shape: tuple
    b_shape: tuple
    params: dict


CONV = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}
SHAPES = (
    Shape("mlp-4096 (64×4096 @ 4096×4096)", "matmul", (64, 4096), (4096, 4096), {}),
    Shape("resnet18 layer1 conv (8×64×32×32, 3×3×64→64)", "conv2d", (8, 64, 32, 32), (64, 64, 3, 3), CONV),
    Shape("resnet18 layer3 conv (8×256×8×8, 3×3×256→256)", "conv2d", (8, 256, 8, 8), (256, 256, 3, 3), CONV),
    Shape("resnet18 layer4 conv (8×512×4×4, 3×3×512→512)", "conv2d", (8, 512, 4, 4), (512, 512, 3, 3), CONV),
)
TINY_SHAPES = (
    Shape("mlp-256 (16×256 @ 256×256)", "matmul", (16, 256), (256, 256), {}),
    Shape("conv (2×16×8×8, 3×3×16→16)", "conv2d", (2, 16, 8, 8), (16, 16, 3, 3), CONV),
)


def legacy_float64(fn: str, a: torch.Tensor, b: torch.Tensor, modulus: int, params: dict, *, _n=None):
    """The float64 path before the engine (p < 2^24): split the larger operand in halves until
    ``n·max|A|·max|B| < 2^53``, reduce each partial result mod p (kept verbatim as the baseline)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    n = _n if _n is not None else (a.shape[-1] if fn == "matmul" else b[0].numel())
    amax, bmax = float(a.abs().max()), float(b.abs().max())
    if n * amax * bmax < 2.0**53:
        return torch.remainder(bilinear.apply(fn, a, b, **params), float(modulus))
    split_a = amax >= bmax
    big = a if split_a else b
    half = max((int(max(amax, bmax)).bit_length() + 1) // 2, 1)
    hi = torch.floor(big / 2.0**half)
    lo = big - hi * 2.0**half
    parts = [legacy_float64(fn, x, b, modulus, params, _n=n) if split_a else
             legacy_float64(fn, a, x, modulus, params, _n=n) for x in (hi, lo)]
    return torch.remainder(parts[0] * float(pow(2, half, modulus)) + parts[1], float(modulus))


def _float32(shape: Shape, a, b):
    return lambda: bilinear.apply(shape.fn, a, b, **shape.params)


def _time(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(*, device: str = "cpu", rounds: int = 5, shapes=SHAPES, weight_bits=(16, 24),
            legacy: bool = True, seed: int = 0, echo=print) -> dict:
    """Time every variant of every shape, interleaved; returns ``{"rows": [...], ...}`` (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        a32 = torch.randn(shape.a_shape, generator=g).to(device)
        b32 = torch.randn(shape.b_shape, generator=g).to(device)
        a_field = torch.randint(0, MODULUS, shape.a_shape, generator=g).to(device)
        variants = {"float32": _float32(shape, a32, b32)}
        for bits in weight_bits:
            dtype = torch.int16 if bits <= 16 else torch.int32
            w = torch.randint(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1), shape.b_shape, generator=g).to(dtype).to(device)
            for backend in BACKENDS:
                engine = FieldEngine(MODULUS, backend=backend)
                variants[f"{backend}/w{bits}"] = (lambda e=engine, w=w: e.bilinear(shape.fn, a_field, w, shape.params))
        if legacy:
            a_legacy = torch.randint(0, LEGACY_MODULUS, shape.a_shape, generator=g).double().to(device)
            w_legacy = torch.randint(-2**9, 2**9, shape.b_shape, generator=g).double().to(device)
            variants["legacy-float64 (p=2^24-3, w10)"] = lambda: legacy_float64(shape.fn, a_legacy, w_legacy,
                                                                                LEGACY_MODULUS, shape.params)
        for run in variants.values():  # warm-up: first-call set-up (oneDNN primitives, allocations)
            run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, run in variants.items():
                times[name].append(_time(run, device))
        base = statistics.median(times["float32"])
        row = {"shape": shape.name, "fn": shape.fn, "ms": {}, "ratio_to_float32": {}}
        for name, values in times.items():
            med = statistics.median(values)
            row["ms"][name] = round(med * 1e3, 3)
            row["ratio_to_float32"][name] = round(med / base, 3)
        rows.append(row)
        echo(f"field engine: {shape.name}: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["ratio_to_float32"].items()))
    return {"device": device, "modulus": MODULUS, "rounds": rounds, "torch_threads": torch.get_num_threads(),
            "rows": rows}


def markdown(result: dict) -> list[str]:
    """The bench report's section (lines)."""
    if not result or not result.get("rows"):
        return []
    names = list(result["rows"][0]["ratio_to_float32"])
    lines = ["## Field engine: exact mod-p products against float32", "",
             f"Exact `f(A, B) mod (2^61 − 1)` (A uniform in F_p, B a signed weight of 16 or 24 bits) per back-end, and "
             f"the float64 path it replaced (p = 2^24 − 3, 10-bit weights), as median time / median float32 time of "
             f"the same op on `{result['device']}` ({result['torch_threads']} torch threads, {result['rounds']} "
             f"rounds, interleaved in one run).", "",
             "| shape | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for row in result["rows"]:
        lines.append(f"| {row['shape']} | " + " | ".join(
            f"{row['ratio_to_float32'][n]:.2f}x ({row['ms'][n]:.1f} ms)" for n in names) + " |")
    return lines + [""]
