"""Trainer memory with and without ``--transcript``: transcripts stream to disk, so RSS stays flat.

    PYTHONPATH=src python scripts/transcript_memory.py [--steps 2000] [--protocol tempo] [--model mlp]
                                                       [--json OUT]

Runs ``blindtrain train`` twice, each in a fresh process (the same arguments, one with
``--transcript``), and reports for each the process's peak resident memory (``ru_maxrss``), the
ledger's ``enclave_peak_bytes`` and, for the run with it, the transcript's size on disk.  The
difference of the peaks is what recording the transcript costs in memory (issue 17 asks for less
than 50 MiB over 2,000 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, runpy, sys
out = sys.argv[1]
sys.argv = ["blindtrain", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("blindtrain", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
with open(out, "w") as handle:
    json.dump({"exit_code": code, "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, handle)
"""


def run(args: list[str], folder: Path, label: str) -> dict:
    report = folder / f"{label}.rss.json"
    metrics = folder / f"{label}.metrics.json"
    command = [sys.executable, "-c", _CHILD, str(report), "train", "--quiet", *args, "--metrics", str(metrics)]
    subprocess.run(command, check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
    result = json.loads(report.read_text())
    if result["exit_code"] != 0:
        raise SystemExit(f"{label} run failed with exit code {result['exit_code']}")
    ledger = json.loads(metrics.read_text())
    return {"max_rss_bytes": result["max_rss_bytes"], "enclave_peak_bytes": ledger["enclave_peak_bytes"],
            "messages": ledger["messages"], "bytes_to_worker": ledger["bytes_to_worker"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--protocol", default="tempo")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    common = ["--protocol", args.protocol, "--model", args.model, "--steps", str(args.steps),
              "--batch-size", str(args.batch_size), "--device", "cpu"]
    mib = 2 ** 20
    with tempfile.TemporaryDirectory(prefix="transcript-memory-") as folder:
        folder = Path(folder)
        without = run(common, folder, "without")
        record = folder / "run.npz"
        with_transcript = run([*common, "--transcript", str(record)], folder, "with")
        with_transcript["transcript_file_bytes"] = record.stat().st_size
    figures = {
        "command": " ".join(["PYTHONPATH=src python scripts/transcript_memory.py", *sys.argv[1:]]),
        "steps": args.steps, "protocol": args.protocol, "model": args.model,
        "without_transcript": without, "with_transcript": with_transcript,
        "rss_difference_mib": (with_transcript["max_rss_bytes"] - without["max_rss_bytes"]) / mib,
    }
    print(f"{args.protocol} / {args.model}, {args.steps} steps")
    for label, run_figures in (("without --transcript", without), ("with --transcript", with_transcript)):
        print(f"  {label:22s} peak RSS {run_figures['max_rss_bytes'] / mib:8.1f} MiB   "
              f"enclave_peak_bytes {run_figures['enclave_peak_bytes'] / mib:6.1f} MiB")
    print(f"  transcript on disk     {with_transcript['transcript_file_bytes'] / mib:8.1f} MiB "
          f"({with_transcript['messages']} messages)")
    print(f"  RSS difference         {figures['rss_difference_mib']:8.1f} MiB (limit: 50 MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
