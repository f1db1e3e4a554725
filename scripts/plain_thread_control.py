"""Control for the field engine's precision target: how far apart two *plain* resnet18/synthetic runs
drift when only torch's thread count differs, i.e. how much this training run amplifies float32
rounding alone.  Same configuration as scripts/field_acceptance.py (batch 8, SGD lr 1e-3, momentum 0.9,
seed 0, via ``run_training``), which runs this control too and plots it next to otp.

    PYTHONPATH=src python scripts/plain_thread_control.py [--steps 20] [--threads 1,2]
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_acceptance import relative, train_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", default="1,2", help="two thread counts, comma-separated")
    args = parser.parse_args()
    first, second = (int(t) for t in args.threads.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        one, _ = train_curve("plain", args.steps, Path(tmp), threads=first, tag=f"plain-{first}")
        two, _ = train_curve("plain", args.steps, Path(tmp), threads=second, tag=f"plain-{second}")
    for step, (u, v, r) in enumerate(zip(one, two, relative(one, two))):
        print(step, f"{u:.6f} {v:.6f} rel {r:.2e}")


if __name__ == "__main__":
    main()
