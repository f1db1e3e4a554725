"""Offload ratio enclave_seconds(shares) / enclave_seconds(enclave), measured in one process on CPU.

    PYTHONPATH=src python scripts/offload_ratio_shares.py [--steps 2] [--models mlp4096,resnet18] [--momentum 0]

Per model: the same model, batch and data under ``enclave`` and ``shares`` (workers S0, S1 and the dealer
in-process on CPU unless ``--device cuda``); one warm-up step each (shares the weights there) is excluded,
then ``--steps`` steps are timed from the ledgers, interleaved so that load on a shared machine hits both
alike.  ``--momentum 0`` (default): plain SGD, updated on the shares (O(activations) enclave work);
``--momentum 0.9``: the update runs in the enclave and the weights are re-shared every step.
Prints the ratio and where the enclave's remaining time goes (ledger categories), plus the bytes the
enclave relayed between the workers (memory copies, not counted as enclave time by the ledger).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blindtrain import data as datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offload_ratio import CONFIGS, measure_interleaved  # noqa: E402 - the same runner and interleaving


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--models", default="mlp4096,resnet18")
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--device", default="cpu", help="the workers' device (the enclave is always CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    synthetic = datasets.load("synthetic", seed=0)
    results = {}
    for name in args.models.split(","):
        row = measure_interleaved(CONFIGS[name], args.steps, synthetic,
                                  {"enclave": ("enclave", {}), "shares": ("shares", {})},
                                  momentum=args.momentum, devices={"shares": args.device})
        summary = row.pop("shares_summary")
        for protocol in ("enclave", "shares"):
            row[protocol]["breakdown_per_step"] = {k: round(v, 4) for k, v in row[protocol]["breakdown_per_step"].items()
                                                   if v}
        row["relayed_bytes_per_step"] = summary["links"]["relayed_through_enclave_bytes"] / (args.steps + 1)
        row["ratio"] = row["shares"]["enclave_s_per_step"] / row["enclave"]["enclave_s_per_step"]
        results[name] = row
        print(f"{name} (momentum {args.momentum}): enclave {row['enclave']['enclave_s_per_step']:.3f} s/step, shares "
              f"{row['shares']['enclave_s_per_step']:.3f} s/step -> offload ratio {row['ratio']:.3f}", flush=True)
        print("   shares enclave time per step by category:", row["shares"]["breakdown_per_step"], flush=True)
        print(f"   relayed through the enclave: {row['relayed_bytes_per_step'] / 2**20:.1f} MiB/step", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
