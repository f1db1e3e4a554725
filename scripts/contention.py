"""Tempo under CPU contention: uncontended vs one competing busy process, side by side, interleaved.

    PYTHONPATH=src python scripts/contention.py [--reps 3] [--steps 40] [--ratio-steps 3] [--threads N]
                                                [--skip-ratio] [--json contention.json]

Per repetition, in turn: (a) ``blindtrain train --steps 40`` (the defaults: tempo, mlp, digits) without and
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


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ratio-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="--threads for both (default: the default)")
    parser.add_argument("--skip-ratio", action="store_true", help="only the 40-step training time")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    train = {"uncontended": [], "contended": []}
    ratio = {"uncontended": [], "contended": []}
    for rep in range(args.reps):
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

    med = {k: statistics.median(v) for k, v in train.items()}
    out = {"machine": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
           "threads": args.threads or "default", "steps": args.steps,
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
