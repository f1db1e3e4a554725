"""The field engine's speed against float32 matmul / conv2d on this device (issue 12).

    PYTHONPATH=src python scripts/field_engine_bench.py [--device cpu] [--rounds 5] [--threads N] [--out FILE]

Prints and writes (JSON) the median times and the ratios to float32, measured in one run with the
variants interleaved round by round (see :mod:`blindtrain.bench.field_engine`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from blindtrain.bench import field_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-legacy", action="store_true", help="skip the pre-engine float64 baseline")
    parser.add_argument("--out", default="field-engine.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = field_engine.measure(device=args.device, rounds=args.rounds, legacy=not args.no_legacy)
    result["command"] = "PYTHONPATH=src python " + " ".join(sys.argv)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n".join(field_engine.markdown(result)))


if __name__ == "__main__":
    main()
