"""Same behaviour, bit for bit: tempo runs of two source trees compared (losses, metrics, transcripts).

    python scripts/tempo_same_behaviour.py --base /work/main/src --new src [--out /tmp/same] [--only mlp,lenet]

Runs ``blindtrain train --protocol tempo`` under each tree for several configurations (mlp/digits, lenet,
fused activations, 2 workers, key rotation every step, enclave-side updates, Adam, vit-tiny) with the
enclave CSPRNG keyed by a fixed key (the CLI draws it from the OS, so two runs are otherwise keyed
differently and differ in the last bits), then compares the loss curves, every deterministic metric, the
protocol summary and every transcript tensor.  Exit 0 when all are identical.  For refactorings: any
change of maths, key draws or message order shows up here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

CONFIGS = {
    "mlp": ["--model", "mlp", "--dataset", "digits", "--steps", "30"],
    "lenet": ["--model", "lenet", "--dataset", "synthetic", "--steps", "5"],
    "fuse": ["--model", "lenet", "--dataset", "synthetic", "--steps", "5", "--fuse-activations"],
    "fusemlp": ["--model", "mlp", "--dataset", "digits", "--steps", "30", "--fuse-activations"],
    "workers2": ["--model", "mlp", "--dataset", "digits", "--steps", "30", "--workers", "2"],
    "rot1": ["--model", "mlp", "--dataset", "digits", "--steps", "30", "--rotate-every", "1"],
    "lenetw2rot": ["--model", "lenet", "--dataset", "synthetic", "--steps", "5", "--workers", "2", "--rotate-every", "2"],
    "enclave_update": ["--model", "mlp", "--dataset", "digits", "--steps", "10", "--option", "update=enclave"],
    "adam": ["--model", "mlp", "--dataset", "digits", "--steps", "10", "--optimizer", "adam"],
    "vit": ["--model", "vit-tiny", "--dataset", "synthetic", "--steps", "2", "--batch-size", "8"],
}
#: metrics that are timings, memory or run identity (not behaviour)
VOLATILE = {"enclave_seconds", "enclave_seconds_by_category", "worker_seconds", "wait_seconds", "enclave_peak_bytes",
            "per_worker", "run_id", "wall_seconds", "samples_per_second", "modelled", "config"}
#: the CLI with the enclave CSPRNG keyed by a fixed key (comparison runs only: never a real key)
FIXED_KEY_CLI = """
import sys
from blindtrain.crypto import csprng
_init = csprng.Csprng.__init__
csprng.Csprng.__init__ = lambda self, key=None: _init(self, key if key is not None else bytes(range(32)))
from blindtrain.cli import main
sys.argv[0] = "blindtrain"
main()
"""


def run(src: str, out: str, name: str, args: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-c", FIXED_KEY_CLI, "train", "--protocol", "tempo", "--threads", "1", "--seed", "0",
           "--metrics", f"{out}/{name}.json", "--transcript", f"{out}/{name}.npz", *args]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} under {src} exited {done.returncode}: {done.stderr[-2000:]}")


def load_metrics(path: str) -> dict:
    # the native kernel's library name carries a digest of its source file (comments included)
    return json.loads(re.sub(r"gather-[0-9a-f]+\.so", "gather-*.so", open(path).read()))


def compare(a: str, b: str, name: str) -> bool:
    A, B = load_metrics(f"{a}/{name}.json"), load_metrics(f"{b}/{name}.json")
    diffs = [k for k in A if k not in VOLATILE and A[k] != B.get(k)]
    ta, tb = np.load(f"{a}/{name}.npz"), np.load(f"{b}/{name}.npz")
    tdiff = sorted(set(ta.files) ^ set(tb.files)) + [
        k for k in ta.files if k in tb.files and not (ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]))]
    same = not diffs and not tdiff
    print(f"{name:15s} {'identical' if same else 'DIFFERENT'}: {len(A['loss_curve'])} losses "
          f"(final {A['final_loss']!r} vs {B['final_loss']!r}), {len(ta.files) - 1} transcript messages; "
          f"metric diffs {diffs}, transcript diffs {tdiff[:5]}", flush=True)
    return same


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="src folder of the reference tree")
    parser.add_argument("--new", required=True, help="src folder of the tree under test")
    parser.add_argument("--out", default="/tmp/tempo_same_behaviour")
    parser.add_argument("--only", default=",".join(CONFIGS))
    args = parser.parse_args()
    ok = True
    for name in args.only.split(","):
        run(os.path.abspath(args.base), f"{args.out}/base", name, CONFIGS[name])
        run(os.path.abspath(args.new), f"{args.out}/new", name, CONFIGS[name])
        ok &= compare(f"{args.out}/base", f"{args.out}/new", name)
    print("ALL IDENTICAL" if ok else "SOME DIFFER")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
