"""Enclave memory under tempo: RSS of the trusted process (worker in its own process).

    PYTHONPATH=src python scripts/enclave_memory.py [--model mlp4096|resnet18] [--steps 3]

Prints the trusted process's resident memory with the model built, at the key epoch's
start (encryption: a transient of one layer's weights), and in steady state, where the
plaintext weights have been released (they live encrypted on the worker), plus tempo's own
per-layer state (keys, check vectors, projections).
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import data as datasets
from blindtrain.ledger import current_rss_bytes
from blindtrain.models import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mlp4096")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = datasets.load("synthetic", seed=0)
    mib = 2 ** 20
    before = current_rss_bytes()
    hidden, batch = ((4096, 4096, 4096), 64) if args.model == "mlp4096" else (None, 32)
    model = build("mlp" if args.model == "mlp4096" else args.model, data.input_shape, data.num_classes, hidden=hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    built = current_rss_bytes()
    session = bt.Session(protocol="tempo", device="cpu", transport="process", seed=None)
    model, optimizer = session.prepare(model, optimizer)
    batches = data.batches(batch_size=batch, epoch=0, seed=0)
    for index in range(args.steps):
        x, y = next(batches)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        gc.collect()
        if index == 0:
            first = session.ledger.enclave_peak_bytes + session.ledger._rss_baseline
    steady = current_rss_bytes()
    layers = session.protocol.summary()["layers"]
    state = sum(v["enclave_state_bytes"] for v in layers.values())
    weights = sum(v["weight_bytes"] for v in layers.values())
    print(f"{args.model}: RSS before model {before / mib:.0f} MiB, model built {built / mib:.0f} MiB "
          f"(weights {weights / mib:.0f} MiB + optimizer), peak during the first step (encryption) {first / mib:.0f} MiB, "
          f"steady state {steady / mib:.0f} MiB; tempo state {state / mib:.2f} MiB "
          f"(max per layer {max(v['enclave_state_bytes'] for v in layers.values()) / 2**10:.0f} KiB)")
    session.close()


if __name__ == "__main__":
    main()
