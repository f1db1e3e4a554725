"""Shared runs for the privacy-lab tests: one short plain training run with transcript and ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from blindtrain.train import TrainConfig, run_training


@dataclass(frozen=True)
class Run:
    transcript: Path
    metrics: Path
    truth: Path
    keystore: Path
    checkpoint: Path


def _train(root: Path, protocol: str, **options) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    run = Run(root / f"{protocol}.npz", root / f"{protocol}.json", root / f"{protocol}.gt", root / "sealing.key",
              root / f"{protocol}.ckpt")
    run_training(TrainConfig(protocol=protocol, hidden=(32,), steps=4, batch_size=32, seed=0, device="cpu",
                             transcript=str(run.transcript), metrics=str(run.metrics),
                             record_ground_truth=str(run.truth), keystore=str(run.keystore),
                             checkpoint=str(run.checkpoint), progress=False, protocol_options=options),
                 echo=lambda *_: None)
    return run


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Run:
    return _train(tmp_path_factory.mktemp("lab-plain"), "plain")


@pytest.fixture(scope="session")
def enclave_run(tmp_path_factory) -> Run:
    return _train(tmp_path_factory.mktemp("lab-enclave"), "enclave")
