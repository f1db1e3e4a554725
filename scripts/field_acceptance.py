"""Acceptance runs of the field engine's precision (issue 12), on CPU; a few minutes.

    PYTHONPATH=src python scripts/field_acceptance.py [--steps 20] [--threads N] [--out field-acceptance.json]

1. otp vs plain on resnet18 / synthetic (batch 8, SGD lr 1e-3, momentum 0.9): the relative loss
   difference at every step (acceptance: < 1e-3 at every step);
2. slalom vs plain inference on the resulting resnet18 over the synthetic test set: the share of
   test inputs with the same prediction (acceptance: ≥ 99.5%) and the logits' relative error
   (acceptance: < 1e-3; max over inputs of ‖Δlogits‖∞ / ‖logits_plain‖∞).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from blindtrain import Session
from blindtrain import checkpoint as ckpt
from blindtrain import data as datasets
from blindtrain import models
from blindtrain.crypto import KeyStore
from blindtrain.train import TrainConfig, run_training


def train_curves(steps: int, workdir: Path) -> dict:
    curves, summary = {}, None
    for protocol in ("plain", "otp"):
        start = time.perf_counter()
        metrics = run_training(TrainConfig(protocol=protocol, model="resnet18", dataset="synthetic", steps=steps,
                                           batch_size=8, lr=1e-3, seed=0, device="cpu", progress=False,
                                           checkpoint=str(workdir / f"{protocol}.ckpt"),
                                           keystore=str(workdir / "key")), echo=lambda *a: None)
        curves[protocol] = metrics["loss_curve"]
        print(f"{protocol}: {steps} steps in {time.perf_counter() - start:.0f} s, final loss {curves[protocol][-1]:.6f}",
              flush=True)
        if protocol == "otp":
            summary = metrics["protocol_summary"]
    rel = [abs(o - p) / abs(p) for p, o in zip(curves["plain"], curves["otp"])]
    bits = summary["operand_bits"]
    return {"plain": curves["plain"], "otp": curves["otp"], "relative_difference": rel,
            "max_relative_difference": max(rel), "pass": max(rel) < 1e-3,
            "operand_bits_min": {"A": min(b["A"] for b in bits.values()), "B": min(b["B"] for b in bits.values())},
            "operand_bits_max": {"A": max(b["A"] for b in bits.values()), "B": max(b["B"] for b in bits.values())},
            "worker_backends": summary["field_engine"]["worker_backends"]}


def slalom_agreement(workdir: Path, batch_size: int = 128, **options) -> dict:
    payload = ckpt.load(workdir / "plain.ckpt", keystore=KeyStore(workdir / "key"))
    data = datasets.load("synthetic", seed=0)
    model = models.build("resnet18", data.input_shape, data.num_classes)
    model.load_state_dict(payload["model_state"])
    model.eval()
    with torch.no_grad():
        plain = torch.cat([model(data.x_test[i:i + batch_size]) for i in range(0, len(data.x_test), batch_size)])
    session = Session(protocol="slalom", device="cpu", precompute=1, **options)
    wrapped, _ = session.prepare(model)
    start = time.perf_counter()
    with torch.no_grad():
        field = torch.cat([wrapped(data.x_test[i:i + batch_size]) for i in range(0, len(data.x_test), batch_size)])
    seconds = time.perf_counter() - start
    summary = session.protocol.summary()
    session.close()
    agree = float((plain.argmax(1) == field.argmax(1)).float().mean())
    rel = ((field - plain).abs().amax(1) / plain.abs().amax(1))
    print(f"slalom {options or ''}: agreement {agree:.4f}, max logit rel. error {float(rel.max()):.2e} "
          f"({len(plain)} inputs, {seconds:.0f} s)", flush=True)
    return {"inputs": len(plain), "agreement": agree, "max_relative_logit_error": float(rel.max()),
            "median_relative_logit_error": float(rel.median()), "weight_bits": summary["weight_bits"],
            "pass": agree >= 0.995 and float(rel.max()) < 1e-3, "seconds": seconds,
            "worker_backends": summary["field_engine"]["worker_backends"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="field-acceptance.json")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        result = {"command": "PYTHONPATH=src python scripts/field_acceptance.py " + " ".join(sys.argv[1:]),
                  "threads": torch.get_num_threads(), "otp_resnet18": train_curves(args.steps, workdir)}
        result["slalom_resnet18"] = slalom_agreement(workdir)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v.get("pass") for k, v in result.items() if isinstance(v, dict)}))


if __name__ == "__main__":
    main()
