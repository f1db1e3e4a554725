"""Tempo under CPU contention: uncontended vs one competing busy process, side by side, interleaved.

    PYTHONPATH=src python scripts/contention.py [--reps 3] [--steps 40] [--ratio-steps 3] [--threads N]
                                                [--skip-ratio] [--json contention.json] [--src DIR]

Per repetition, in turn, each without and then with one busy-loop process alive: (0) in this process, the
inproc transport's µs/message and tempo-sized small ops (a 64×128 gather pass, a small matmul) on 2 and on 1
intra-op threads (the mechanism); (a) ``blindtrain train --steps 40`` (the defaults: tempo, mlp, digits) without and
then with one busy-loop process alive, timed by its ledger (``wall_seconds``: the training steps, without
interpreter start-up); (b) ``scripts/offload_ratio.py --models mlp4096`` without and with the busy process.
Acceptance (issue 15): contended 40-step time at most 3x uncontended, and the contended mlp-4096 offload
ratio at most 0.1, at the default thread count.  Prints a table and writes JSON.

The "uncontended" runs are only as quiet as the machine is: on a shared machine, say so beside the
figures.  ``--threads`` passes ``--threads`` to both commands (e.g. 1, to compare with the serial enclave).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True: pass"


@contextmanager
def busy_process(active: bool):
    """One process spinning on a core for the duration of the block (or nothing, if not ``active``)."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    time.sleep(0.2)  # let it get scheduled
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


SRC = [str(ROOT / "src")]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC[0] + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_seconds(steps: int, threads: int | None) -> float:
    """``blindtrain train --steps N`` (defaults), the ledger's ``wall_seconds`` of the steps."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.json"
        cmd = [sys.executable, "-m", "blindtrain", "train", "--steps", str(steps), "--metrics", str(metrics)]
        if threads:
            cmd += ["--threads", str(threads)]
        subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return float(json.loads(metrics.read_text())["wall_seconds"])


def offload_ratio(steps: int, threads: int | None) -> dict:
    """``scripts/offload_ratio.py --models mlp4096``: its last line (JSON) with the ratios."""
    cmd = [sys.executable, str(ROOT / "scripts" / "offload_ratio.py"), "--models", "mlp4096", "--steps", str(steps),
           ]
    if threads:
        cmd += ["--threads", str(threads)]
    run = subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["mlp4096"]


def inproc_latency_us() -> float:
    """µs per message of the inproc transport (its worker is a thread of this process: each message is a
    hand-off to that thread and back), through the boundary (:mod:`blindtrain.bench.transports`)."""
    from blindtrain.bench import transports

    result = transports.measure(settings=transports.Settings(rounds=3, messages=200, mib=1),
                                transports=("inproc",), echo=lambda *a: None)
    return result["figures"]["inproc"]["us_per_message"]


def small_op_us(threads: int, calls: int = 300) -> dict:
    """µs per call of tempo-sized small ops (a 64×128 gather pass and a 64×128 @ 128×128 matmul + ReLU) on
    ``threads`` intra-op threads of this thread: the mechanism (a parallel region waits for every thread)."""
    import torch

    from blindtrain.kernels.gather import gather
    from blindtrain.threads import running_on

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 128, generator=g), torch.randn(128, 128, generator=g)
    p0, p1, r0, r1 = torch.randperm(64, generator=g), torch.randperm(128, generator=g), torch.ones(64), torch.ones(128)
    out = {}
    with running_on(threads):
        for name, op in (("gather_64x128", lambda: gather(x, p0, p1, r0, r1)),
                         ("matmul_relu_64x128x128", lambda: torch.relu(x @ w))):
            for _ in range(20):
                op()
            start = time.perf_counter()
            for _ in range(calls):
                op()
            out[name] = (time.perf_counter() - start) / calls * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ratio-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="--threads for both (default: the default)")
    parser.add_argument("--skip-ratio", action="store_true", help="only the 40-step training time")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--src", default=str(ROOT / "src"),
                        help="the blindtrain source to run the CLI and offload_ratio.py from (e.g. another checkout's "
                             "src, to compare before and after)")
    args = parser.parse_args()

    SRC[0] = args.src
    train = {"uncontended": [], "contended": []}
    ratio = {"uncontended": [], "contended": []}
    latency = {"uncontended": [], "contended": []}
    small = {f"{label}_{t}_threads": [] for label in ("uncontended", "contended") for t in (1, 2)}
    for rep in range(args.reps):
        for label, active in (("uncontended", False), ("contended", True)):
            with busy_process(active):
                latency[label].append(inproc_latency_us())
                for t in (2, 1):
                    small[f"{label}_{t}_threads"].append(small_op_us(t))
            print(f"rep {rep}: {label}: inproc {latency[label][-1]:.0f} µs/message; small ops (µs/call) on 2 threads "
                  f"{small[label + '_2_threads'][-1]}, on 1 thread {small[label + '_1_threads'][-1]}", flush=True)
        for label, active in (("uncontended", False), ("contended", True)):
            with busy_process(active):
                train[label].append(train_seconds(args.steps, args.threads))
            print(f"rep {rep}: train --steps {args.steps} {label}: {train[label][-1]:.3f} s", flush=True)
        if args.skip_ratio:
            continue
        for label, active in (("uncontended", False), ("contended", True)):
            with busy_process(active):
                ratio[label].append(offload_ratio(args.ratio_steps, args.threads))
            r = ratio[label][-1]
            print(f"rep {rep}: mlp-4096 offload ratio {label}: steady {r['ratio']:.3f}"
                  + (f", amortized over a key epoch {r['ratio_amortized']:.3f}" if "ratio_amortized" in r else ""),
                  flush=True)

    out_small = {k: {op: statistics.median(r[op] for r in v) for op in v[0]} for k, v in small.items()}
    out_latency = {k: statistics.median(v) for k, v in latency.items()}
    print(f"inproc transport: {out_latency['uncontended']:.0f} µs/message uncontended, "
          f"{out_latency['contended']:.0f} µs/message contended")
    print("small ops, µs/call (median):", json.dumps({k: {op: round(us, 1) for op, us in v.items()}
                                                      for k, v in out_small.items()}))
    med = {k: statistics.median(v) for k, v in train.items()}
    out = {"machine": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
           "threads": args.threads or "default", "steps": args.steps,
           "src": args.src, "inproc_us_per_message": out_latency, "small_ops_us": out_small,
           "train_seconds": train, "train_median": med, "slowdown": med["contended"] / med["uncontended"]}
    print(f"40-step training: uncontended {med['uncontended']:.3f} s, contended {med['contended']:.3f} s "
          f"-> slowdown {out['slowdown']:.2f}x (acceptance: <= 3)")
    if not args.skip_ratio:
        out["offload_ratio"] = ratio
        out["ratio_median"] = {k: statistics.median(r["ratio"] for r in v) for k, v in ratio.items()}
        print(f"mlp-4096 offload ratio (steady state): uncontended {out['ratio_median']['uncontended']:.3f}, "
              f"contended {out['ratio_median']['contended']:.3f} (acceptance: contended <= 0.1)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
