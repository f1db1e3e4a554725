"""Long honest tempo runs: zero false alarms, and how much of the check tolerance honest results use.

    PYTHONPATH=src python scripts/tolerance_soak.py [--steps 20000] [--model mlp] [--dataset digits]
        [--batch 64] [--lr 0.05] [--rotate-every 100] [--out soak.json] [--every 500] [--optimizer sgd|adam]

An honest worker, SGD with momentum and weight decay (the worker-side update; ``--optimizer adam``: the
enclave-side update, whose returned weight gradients are checked too: the ``grad_weight`` family), key
rotation every ``--rotate-every`` steps.  Every check of every step is judged as in training; the protocol keeps, per check
family (forward, grad_input, held = fetched weights at a rotation, grad_weight, attention), the largest
fraction of its tolerance a passing check used.  A false alarm (an integrity violation on this honest
worker) ends the run with exit 3 and is recorded.  ``--out`` is rewritten every ``--every`` steps, so a run
stopped early still reports what it measured (``steps_done``).

Prints and writes: steps done, integrity checks, false alarms, max used fraction per family, and the
headroom ``tolerance / largest honest residual``.  Several models: ``--model lenet --dataset synthetic`` ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import blindtrain as bt
from blindtrain import data as datasets
from blindtrain.errors import IntegrityError, TrainingDiverged
from blindtrain.models import build
from blindtrain.protocols import tempo


def _batches(dataset, batch: int, seed: int):
    epoch = 0
    while True:
        yield from dataset.batches(batch_size=batch, epoch=epoch, seed=seed)
        epoch += 1


def _report(args, session, done: int, started: float, alarm: str | None) -> dict:
    ledger = session.ledger
    tolerance = session.protocol.tolerance_report()
    return {"model": args.model, "dataset": args.dataset, "optimizer": args.optimizer, "batch": args.batch, "lr": args.lr,
            "rotate_every": args.rotate_every, "steps_requested": args.steps, "steps_done": done,
            "seconds": time.perf_counter() - started, "integrity_checks": ledger.integrity_checks,
            "false_alarms": ledger.integrity_failures, "false_alarm": alarm,
            "lambda": tempo.LAMBDA, "false_alarm_per_check": tempo.FALSE_ALARM_PER_CHECK,
            "max_used_fraction": tolerance["max_used_fraction"], "headroom": tolerance["headroom"],
            "per_check": tolerance["per_check"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rotate-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--model-kwargs", default="{}", help='JSON, e.g. {"depth": 2, "dim": 32, "heads": 2}')
    args = parser.parse_args(argv)

    dataset = datasets.load(args.dataset, seed=args.seed)
    torch.manual_seed(args.seed)
    model = build(args.model, dataset.input_shape, dataset.num_classes, **json.loads(args.model_kwargs))
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    session = bt.Session(protocol="tempo", device="cpu", seed=None, rotate_every=args.rotate_every)
    model, optimizer = session.prepare(model, optimizer)
    model.train()
    started, done, alarm = time.perf_counter(), 0, None

    def write():
        report = _report(args, session, done, started, alarm)
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(report, handle, indent=2)
        return report

    batches = _batches(dataset, args.batch, args.seed)
    try:
        for _ in tqdm(range(args.steps), desc=f"soak {args.model}", unit="step", mininterval=5):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done % args.every == 0:
                write()
    except (IntegrityError, TrainingDiverged) as exc:
        alarm = str(exc)
    report = write()
    session.close()
    print(json.dumps(report, indent=2))
    return 3 if report["false_alarms"] or alarm else 0


if __name__ == "__main__":
    sys.exit(main())
