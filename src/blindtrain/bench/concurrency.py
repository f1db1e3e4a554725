"""Concurrent workers: a tempo step's wait on its workers with ``--workers 2`` against ``--workers 1``.

tempo splits each layer's output columns into N blocks, one per worker, and sends every block before
waiting for any (:meth:`~blindtrain.boundary.boundary.Boundary.call_many`).  For each transport, two
sessions train the same model (mlp 3×4096 on ``synthetic``, batch 64, SGD with momentum) side by side in
one process — one with 1 worker, one with 2 — their steps interleaved so that load from other processes
hits both alike.  Each worker process gets ``worker_threads`` torch threads (default 1: each worker plays
one device; a worker given every core leaves a second one nothing to run on).  Per step, from the
ledgers: ``wait`` — the wall time the trusted side was blocked on workers (what concurrency shortens) —
and ``worker`` — the workers' own compute seconds, summed (about the same whatever N).  The first
``warmup`` steps (tempo's weight encryption and the workers' start) are not timed.

    PYTHONPATH=src python scripts/concurrency_ratio.py [--transports process,dist] [--steps 3]
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .. import data as datasets
from ..models import build

HIDDEN = (4096, 4096, 4096)
TINY_HIDDEN = (256, 256)


class _Runner:
    """One tempo session with ``workers`` workers on ``transport``, stepped one step at a time."""

    def __init__(self, *, transport: str, workers: int, hidden, batch: int, worker_threads: int, seed: int,
                 dataset) -> None:
        from ..session import Session

        torch.manual_seed(seed)
        model = build("mlp", dataset.input_shape, dataset.num_classes, hidden=tuple(hidden))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.session = Session(protocol="tempo", device="cpu", seed=seed, transport=transport,
                               worker_threads=worker_threads, workers=workers)
        self.model, self.optimizer = self.session.prepare(model, optimizer)
        self.batches = dataset.batches(batch_size=batch, epoch=0, seed=seed)
        self.wait: list[float] = []
        self.worker: list[float] = []

    def step(self, *, timed: bool) -> None:
        ledger = self.session.ledger
        wait, worker = ledger.wait_seconds, ledger.worker_seconds
        x, y = next(self.batches)
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        if timed:
            self.wait.append(ledger.wait_seconds - wait)
            self.worker.append(ledger.worker_seconds - worker)

    def close(self) -> None:
        self.session.close()


def measure_transport(transport: str, *, hidden=HIDDEN, batch: int = 64, steps: int = 3, warmup: int = 1,
                      worker_threads: int = 1, seed: int = 0, dataset=None) -> dict:
    """Median per-step ``wait`` and ``worker`` seconds with 1 and 2 workers on ``transport``, interleaved."""
    dataset = dataset or datasets.load("synthetic", seed=seed)
    runners = {}
    try:
        for n in (1, 2):
            runners[n] = _Runner(transport=transport, workers=n, hidden=hidden, batch=batch,
                                 worker_threads=worker_threads, seed=seed, dataset=dataset)
        for index in range(warmup + steps):
            for runner in runners.values():
                runner.step(timed=index >= warmup)
    finally:
        for runner in runners.values():
            runner.close()
    row = {"transport": transport}
    for n, runner in runners.items():
        row[f"workers{n}"] = {"wait_s": statistics.median(runner.wait), "worker_s": statistics.median(runner.worker)}
    row["wait_ratio"] = row["workers2"]["wait_s"] / row["workers1"]["wait_s"]
    return row


def measure(*, transports=("process", "dist"), hidden=HIDDEN, batch: int = 64, steps: int = 3, warmup: int = 1,
            worker_threads: int = 1, seed: int = 0, echo=print) -> dict:
    """:func:`measure_transport` for each transport; a transport that fails is reported with its reason."""
    dataset = datasets.load("synthetic", seed=seed)
    rows = []
    for transport in transports:
        try:
            row = measure_transport(transport, hidden=hidden, batch=batch, steps=steps, warmup=warmup,
                                    worker_threads=worker_threads, seed=seed, dataset=dataset)
        except Exception as exc:  # noqa: BLE001 - e.g. no gloo: reported, the bench goes on
            row = {"transport": transport, "failed": f"{type(exc).__name__}: {exc}"}
            echo(f"concurrency: {transport}: failed: {row['failed']}")
        else:
            echo(f"concurrency: {transport}: wait per step {row['workers1']['wait_s'] * 1e3:.0f} ms with 1 worker, "
                 f"{row['workers2']['wait_s'] * 1e3:.0f} ms with 2 -> ratio {row['wait_ratio']:.2f}")
        rows.append(row)
    return {"model": f"mlp {'x'.join(map(str, hidden))}", "dataset": "synthetic", "batch": batch, "steps": steps,
            "warmup": warmup, "worker_threads": worker_threads, "torch_threads": torch.get_num_threads(),
            "rows": rows}


def markdown(result: dict | None) -> list[str]:
    """The bench report's section (lines)."""
    if not result or not result.get("rows"):
        return []
    lines = ["## Concurrent workers: tempo with 2 workers against 1", "",
             f"tempo on {result['model']} ({result['dataset']}, batch {result['batch']}): per step, the wall time the "
             f"trusted side waited on its workers, and the workers' own compute seconds summed; median of "
             f"{result['steps']} steps after {result['warmup']} untimed, the two sessions' steps interleaved in one "
             f"run; {result['worker_threads']} torch thread(s) per worker process.  Ratio < 1: the blocks ran at "
             f"the same time.", "",
             "| transport | wait, 1 worker | wait, 2 workers | ratio | worker compute, 1 | worker compute, 2 |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "failed" in row:
            lines.append(f"| {row['transport']} | failed: {row['failed']} | | | | |")
            continue
        one, two = row["workers1"], row["workers2"]
        lines.append(f"| {row['transport']} | {one['wait_s'] * 1e3:.0f} ms | {two['wait_s'] * 1e3:.0f} ms | "
                     f"{row['wait_ratio']:.2f} | {one['worker_s'] * 1e3:.0f} ms | {two['worker_s'] * 1e3:.0f} ms |")
    return lines + [""]
