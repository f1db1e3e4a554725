"""Cost of otp's encoding: per-tensor exponents (codec.encode_pair) against per-row / per-column
exponents (codec.encode_scaled), on resnet18 / mlp-4096 shapes, variants interleaved round by round.

    PYTHONPATH=src python scripts/field_codec_bench.py [--rounds 5] [--threads N]

Encoding runs in the enclave; the field engine's own products (scripts/field_engine_bench.py) do not
change with the scales.  Prints median milliseconds and the ratio scaled / per-tensor.
"""
import argparse
import statistics
import time

import torch

from blindtrain.field import codec

P = codec.DEFAULT_MODULUS
SHAPES = {  # name: fn, A shape, B shape, params
    "mlp-4096 forward (64x4096 @ 4096x4096)": ("matmul", (64, 4096), (4096, 4096), {}),
    "resnet18 conv 64ch 32x32 (batch 8)": ("conv2d", (8, 64, 32, 32), (64, 64, 3, 3),
                                           {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}),
    "resnet18 conv 512ch 4x4 (batch 8)": ("conv2d", (8, 512, 4, 4), (512, 512, 3, 3),
                                          {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    for name, (fn, a_shape, b_shape, params) in SHAPES.items():
        a, b = torch.randn(a_shape, generator=g), torch.randn(b_shape, generator=g) * 0.05
        times = {"per-tensor": [], "scaled": []}
        for _ in range(args.rounds):
            for variant, encode in (("per-tensor", codec.encode_pair), ("scaled", codec.encode_scaled)):
                start = time.perf_counter()
                encode(fn, a, b, params, P, b_bits=24)
                times[variant].append(time.perf_counter() - start)
        tensor_ms, scaled_ms = (1e3 * statistics.median(times[v]) for v in ("per-tensor", "scaled"))
        print(f"{name}: per-tensor {tensor_ms:.1f} ms, scaled {scaled_ms:.1f} ms, ratio {scaled_ms / tensor_ms:.2f}")


if __name__ == "__main__":
    main()
