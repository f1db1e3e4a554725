"""Offload ratio enclave_seconds(tempo) / enclave_seconds(enclave), measured in one process on CPU.

    PYTHONPATH=src python scripts/offload_ratio.py [--steps 3] [--models mlp4096,resnet18] [--fuse]

Per model: the same model, batch and data under ``enclave`` and ``tempo``; one warm-up step
(tempo encrypts the weights there) is excluded, then ``--steps`` steady-state steps are timed
from the ledgers.  Prints the ratio and where tempo's remaining enclave time goes.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import data as datasets
from blindtrain.models import build

CONFIGS = {
    "mlp4096": dict(model="mlp", hidden=(4096, 4096, 4096), batch=64),
    "resnet18": dict(model="resnet18", hidden=None, batch=32),
    "lenet": dict(model="lenet", hidden=None, batch=64),
}


def measure(protocol: str, cfg: dict, steps: int, dataset, **options) -> dict:
    torch.manual_seed(0)
    model = build(cfg["model"], dataset.input_shape, dataset.num_classes, hidden=cfg["hidden"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    session = bt.Session(protocol=protocol, device="cpu", seed=None, **options)
    model, optimizer = session.prepare(model, optimizer)
    model.train()
    batches = dataset.batches(batch_size=cfg["batch"], epoch=0, seed=0)
    ledger = session.ledger
    marks = None
    for index in range(steps + 1):
        x, y = next(batches)
        if index == 1:
            marks = (ledger.enclave_seconds, dict(ledger.enclave_breakdown()), ledger.bytes_to_worker,
                     ledger.bytes_from_worker, ledger.messages)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    breakdown = {k: (v - marks[1].get(k, 0.0)) / steps for k, v in ledger.enclave_breakdown().items()}
    out = {"enclave_s_per_step": (ledger.enclave_seconds - marks[0]) / steps, "breakdown_per_step": breakdown,
           "bytes_to_per_step": (ledger.bytes_to_worker - marks[2]) / steps,
           "bytes_from_per_step": (ledger.bytes_from_worker - marks[3]) / steps,
           "messages_per_step": (ledger.messages - marks[4]) / steps,
           "worker_s": ledger.worker_seconds, "peak_bytes": ledger.enclave_peak_bytes}
    session.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default="mlp4096,resnet18")
    parser.add_argument("--fuse", action="store_true", help="also measure tempo with fused activations")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    synthetic = datasets.load("synthetic", seed=0)
    results = {}
    for name in args.models.split(","):
        cfg = CONFIGS[name]
        base = measure("enclave", cfg, args.steps, synthetic)
        tempo = measure("tempo", cfg, args.steps, synthetic)
        row = {"enclave": base, "tempo": tempo, "ratio": tempo["enclave_s_per_step"] / base["enclave_s_per_step"]}
        if args.fuse:
            fused = measure("tempo", cfg, args.steps, synthetic, fuse_activations=True)
            row["tempo_fused"] = fused
            row["ratio_fused"] = fused["enclave_s_per_step"] / base["enclave_s_per_step"]
        results[name] = row
        print(f"{name}: enclave {base['enclave_s_per_step']:.3f} s/step, tempo {tempo['enclave_s_per_step']:.3f} "
              f"s/step -> offload ratio {row['ratio']:.3f}", flush=True)
        print("   tempo enclave time per step by category:",
              {k: round(v, 4) for k, v in tempo["breakdown_per_step"].items()}, flush=True)
        if args.fuse:
            print(f"   fused: {row['tempo_fused']['enclave_s_per_step']:.3f} s/step ratio {row['ratio_fused']:.3f}; "
                  f"messages/step {tempo['messages_per_step']:.0f} -> {row['tempo_fused']['messages_per_step']:.0f}; "
                  f"bytes/step {tempo['bytes_to_per_step'] + tempo['bytes_from_per_step']:.0f} -> "
                  f"{row['tempo_fused']['bytes_to_per_step'] + row['tempo_fused']['bytes_from_per_step']:.0f}",
                  flush=True)
    print(json.dumps({k: {"ratio": v["ratio"], **({"ratio_fused": v["ratio_fused"]} if "ratio_fused" in v else {})}
                      for k, v in results.items()}))


if __name__ == "__main__":
    main()
