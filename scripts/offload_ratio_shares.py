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

import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import data as datasets
from blindtrain.models import build

CONFIGS = {
    "mlp4096": dict(model="mlp", hidden=(4096, 4096, 4096), batch=64),
    "mlp2048": dict(model="mlp", hidden=(2048, 2048, 2048), batch=64),
    "mlp1024": dict(model="mlp", hidden=(1024, 1024, 1024), batch=64),
    "resnet18": dict(model="resnet18", hidden=None, batch=32),
    "lenet": dict(model="lenet", hidden=None, batch=64),
}


class Runner:
    def __init__(self, protocol: str, cfg: dict, dataset, *, momentum: float, device: str) -> None:
        torch.manual_seed(0)
        model = build(cfg["model"], dataset.input_shape, dataset.num_classes, hidden=cfg["hidden"])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
        self.session = bt.Session(protocol=protocol, device=device, seed=None)
        self.model, self.optimizer = self.session.prepare(model, optimizer)
        self.model.train()
        self.batches = dataset.batches(batch_size=cfg["batch"], epoch=0, seed=0)
        self.enclave_s, self.steps, self.breakdown = 0.0, 0, {}

    def step(self, timed: bool = True) -> None:
        ledger = self.session.ledger
        before, by = ledger.enclave_seconds, dict(ledger.enclave_breakdown())
        x, y = next(self.batches)
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        if timed:
            self.steps += 1
            self.enclave_s += ledger.enclave_seconds - before
            for k, v in ledger.enclave_breakdown().items():
                self.breakdown[k] = self.breakdown.get(k, 0.0) + v - by.get(k, 0.0)

    def result(self) -> dict:
        n = max(self.steps, 1)
        return {"enclave_s_per_step": self.enclave_s / n,
                "breakdown_per_step": {k: round(v / n, 4) for k, v in self.breakdown.items() if v}}


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
        cfg = CONFIGS[name]
        runners = {p: Runner(p, cfg, synthetic, momentum=args.momentum, device=args.device if p == "shares" else "cpu")
                   for p in ("enclave", "shares")}
        for runner in runners.values():
            runner.step(timed=False)
        for _ in range(args.steps):
            for runner in runners.values():
                runner.step()
        row = {p: r.result() for p, r in runners.items()}
        summary = runners["shares"].session.protocol.summary()
        row["relayed_bytes_per_step"] = summary["links"]["relayed_through_enclave_bytes"] / (args.steps + 1)
        row["ratio"] = row["shares"]["enclave_s_per_step"] / row["enclave"]["enclave_s_per_step"]
        for runner in runners.values():
            runner.session.close()
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
