"""The privacy lab over every protocol: train (or serve) with a transcript and sealed ground truth, attack
each worker role's view, score, and write ``results.json``, ``report.md`` and a plot of offload ratio vs
attack success.

    PYTHONPATH=src python scripts/privacy_lab.py --preset quick --out docs/privacy      # or: make privacy

Each cell is what ``blindtrain train ... --transcript T --metrics M --record-ground-truth G`` followed by
``blindtrain attack --transcript T --role R --metrics M --ground-truth G`` prints; the report lists those
exact commands (run here in one process, which is the same code path, to share imports and the scorer's
public-only baseline).  The offload ratio is ``enclave_seconds(protocol) / enclave_seconds(enclave)`` of the
same runs (slalom's against ``predict --protocol enclave`` on the same checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from blindtrain.attacks.cli import attack_view
from blindtrain.attacks.report import write_report
from blindtrain.attacks.view import ROLES, role_path
from blindtrain.errors import BlindtrainError
from blindtrain.train import TrainConfig, run_predict, run_training, write_json


@dataclass(frozen=True)
class Config:
    """One protocol configuration of the lab.  Every worker role that received something is attacked on its
    own (``FILE.ROLE.npz`` beside the main transcript: ``mask``, ``s0`` ...)."""

    label: str
    protocol: str
    options: dict = field(default_factory=dict)
    inference: bool = False  #: served with ``blindtrain predict`` (slalom) instead of trained

    def flags(self) -> list[str]:
        words = []
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [flag, str(value)]
        return words


CONFIGS = (
    Config("plain", "plain"),
    Config("enclave", "enclave"),
    Config("otp", "otp", {"unmask": "enclave"}),
    Config("otp --unmask mask-worker", "otp", {"unmask": "mask-worker"}),
    Config("slalom (predict)", "slalom", inference=True),
    Config("tempo", "tempo"),
    Config("tempo --rotate-every 1", "tempo", {"rotate_every": 1}),
    Config("tempo --fuse-activations", "tempo", {"fuse_activations": True}),
    Config("tempo --workers 2", "tempo", {"workers": 2}),
)

def configs() -> list[Config]:
    """:data:`CONFIGS`, plus every registered protocol they do not name, in its default configuration (a
    protocol added later is attacked without editing this file)."""
    from blindtrain.protocols import load_all

    named = {c.protocol for c in CONFIGS}
    extra = [Config(name, name, inference=not cls.info.trains) for name, cls in sorted(load_all().items())
             if name not in named]
    return list(CONFIGS) + extra


PRESETS = {
    "quick": {"model": "mlp", "dataset": "digits", "steps": 30, "batch_size": 64},
    # the run `blindtrain train` makes by default (5 epochs of digits at batch 64): issue #11's acceptance view
    "default": {"model": "mlp", "dataset": "digits", "steps": 115, "batch_size": 64},
}


def _train_command(config: Config, preset: dict, files: dict) -> list[str]:
    return ["blindtrain", "train", "--protocol", config.protocol, *config.flags(), "--model", preset["model"],
            "--dataset", preset["dataset"], "--steps", str(preset["steps"]), "--batch-size", str(preset["batch_size"]),
            "--seed", "0", "--transcript", files["transcript"], "--metrics", files["metrics"],
            "--record-ground-truth", files["truth"], "--keystore", files["keystore"], "--quiet"]


def _enclave_seconds(metrics: dict, *, inference: bool) -> float:
    """The trusted side's seconds: the ledger's for training; for an inference run (the ledger times training
    steps only) wall time minus the waits on the worker, as ``blindtrain bench`` does."""
    if inference:
        return max(metrics["wall_seconds"] - metrics.get("wait_seconds", 0.0), 0.0)
    return metrics["enclave_seconds"]


def _run_config(config: Config, preset: dict, work: Path, keystore: str, victim: dict) -> dict:
    """Train or serve under ``config``; returns the commands, files and run metrics."""
    stem = work / config.label.split(" ")[0] if not config.options else work / (
        config.protocol + "-" + "-".join(f"{k}-{v}" for k, v in config.options.items()))
    files = {"transcript": f"{stem}.npz", "metrics": f"{stem}.json", "truth": f"{stem}.gt", "keystore": keystore}
    if config.inference:
        command = ["blindtrain", "predict", "--checkpoint", victim["checkpoint"], "--protocol", config.protocol,
                   "--transcript", files["transcript"], "--metrics", files["metrics"],
                   "--record-ground-truth", files["truth"], "--keystore", keystore]
        metrics = run_predict(checkpoint=victim["checkpoint"], protocol=config.protocol, device="cpu",
                              keystore=keystore, transcript=files["transcript"], record_ground_truth=files["truth"])
        write_json(files["metrics"], metrics)
        baseline = run_predict(checkpoint=victim["checkpoint"], protocol="enclave", device="cpu", keystore=keystore)
        reference = _enclave_seconds(baseline, inference=True)
        baseline_command = ["blindtrain", "predict", "--checkpoint", victim["checkpoint"], "--protocol", "enclave",
                            "--keystore", keystore]
    else:
        command = _train_command(config, preset, files)
        train_config = TrainConfig(model=preset["model"], dataset=preset["dataset"], protocol=config.protocol,
                                   steps=preset["steps"], batch_size=preset["batch_size"], seed=0, device="cpu",
                                   transcript=files["transcript"], metrics=files["metrics"],
                                   record_ground_truth=files["truth"], keystore=keystore, progress=False,
                                   protocol_options=dict(config.options),
                                   checkpoint=victim["checkpoint"] if config.protocol == "enclave" else None)
        if config.protocol == "enclave":
            command += ["--checkpoint", victim["checkpoint"]]
        metrics = run_training(train_config, echo=lambda *_: None)
        reference, baseline_command = None, None
    return {"files": files, "command": command, "metrics": metrics, "reference_enclave_seconds": reference,
            "enclave_seconds": _enclave_seconds(metrics, inference=config.inference),
            "baseline_command": baseline_command}


def _warm_up(preset: dict) -> None:
    """Two untimed steps under each protocol first, so that no measured run pays the process's first-use costs
    (lazy imports, allocator growth, tempo's fused pass) inside its steps: the offload ratios compare steps."""
    for protocol in ("enclave", "plain", "otp", "tempo"):
        run_training(TrainConfig(model=preset["model"], dataset=preset["dataset"], protocol=protocol, steps=2,
                                 batch_size=preset["batch_size"], device="cpu", progress=False),
                     echo=lambda *_: None)


def run(preset_name: str, out: Path, *, keystore: str | None = None, progress: bool = True) -> dict:
    preset = PRESETS[preset_name]
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    keystore = keystore or str(work / "sealing.key")
    victim = {"checkpoint": str(work / "victim.ckpt")}
    start, cpu_start = time.perf_counter(), time.process_time()
    runs: dict[str, dict] = {}
    cells = []
    _warm_up(preset)
    order = sorted(configs(), key=lambda c: (c.protocol != "enclave", c.inference))  # enclave first: the checkpoint
    bar = tqdm(order, desc="privacy lab", unit="config", disable=not progress, dynamic_ncols=True)
    for config in bar:
        bar.set_postfix_str(config.label)
        try:
            runs[config.label] = ran = _run_config(config, preset, work, keystore, victim)
        except BlindtrainError as exc:  # recorded in the report, never skipped silently
            cells.append({"config": config.label, "protocol": config.protocol, "options": config.options,
                          "role": "main", "inference": config.inference, "run_command": "-", "attack_command": "-",
                          "offload_ratio": None, "report": {"error": f"the run failed: {exc}"}})
            continue
        enclave_train = runs["enclave"]["metrics"]["enclave_seconds"]
        reference = ran["reference_enclave_seconds"] or enclave_train
        roles = [r for r in ROLES if role_path(ran["files"]["transcript"], r).is_file()]
        for role in roles:
            report = attack_view(transcript=ran["files"]["transcript"], roles=(role,), metrics=ran["files"]["metrics"],
                                 ground_truth=ran["files"]["truth"], keystore=keystore)
            cells.append({
                "config": config.label, "protocol": config.protocol, "options": config.options, "role": role,
                "inference": config.inference, "run_command": shlex.join(ran["command"]),
                "attack_command": report["command"], "baseline_command": ran["baseline_command"] and
                shlex.join(ran["baseline_command"]),
                "enclave_seconds": ran["enclave_seconds"], "reference_enclave_seconds": reference,
                "offload_ratio": ran["enclave_seconds"] / reference if reference else None,
                "test_accuracy": ran["metrics"].get("test_accuracy"), "report": report,
            })
    results = {"preset": preset_name, "settings": preset, "seconds": time.perf_counter() - start,
               "cpu_seconds": time.process_time() - cpu_start,
               "command": "PYTHONPATH=src python scripts/privacy_lab.py " + shlex.join(sys.argv[1:]),
               "keystore_note": f"ground truth sealed under {Path(keystore).name} (kept beside the runs, not committed)",
               "cells": cells}
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--out", default="docs/privacy")
    parser.add_argument("--keystore", help="sealing key (default: OUT/runs/sealing.key)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.preset, Path(args.out), keystore=args.keystore, progress=not args.quiet)
    print(f"privacy lab {args.preset}: {len(results['cells'])} cells in {results['seconds']:.0f} s; "
          f"wrote {args.out}/results.json, report.md, offload_vs_attack.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
