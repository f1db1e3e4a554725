"""plain and enclave: same loss curve on the same seed, every ledger field reported."""

from __future__ import annotations

import json

import pytest

from blindtrain.train import TrainConfig, run_training

LEDGER_FIELDS = ("protocol", "model", "dataset", "steps", "epochs", "final_loss", "test_accuracy", "wall_seconds",
                 "enclave_seconds", "worker_seconds", "bytes_to_worker", "bytes_from_worker", "messages",
                 "integrity_checks", "integrity_failures", "integrity_soundness_bits", "weight_encryptions",
                 "enclave_peak_bytes", "device")


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    runs = {}
    for protocol in ("plain", "enclave"):
        config = TrainConfig(protocol=protocol, model="mlp", dataset="digits", steps=12, batch_size=32,
                             metrics=str(out / f"{protocol}.json"), progress=False, device="cpu")
        run_training(config)
        runs[protocol] = json.loads((out / f"{protocol}.json").read_text())
    return runs


def test_plain_and_enclave_give_the_same_loss_curve(baseline_runs):
    plain, enclave = baseline_runs["plain"]["loss_curve"], baseline_runs["enclave"]["loss_curve"]
    assert len(plain) == len(enclave) == 12
    assert plain == pytest.approx(enclave, rel=1e-5, abs=1e-6)
    assert plain[-1] < plain[0]


@pytest.mark.parametrize("protocol", ["plain", "enclave"])
def test_metrics_contain_every_ledger_field(baseline_runs, protocol):
    metrics = baseline_runs[protocol]
    missing = [f for f in LEDGER_FIELDS if f not in metrics]
    assert not missing
    assert metrics["protocol"] == protocol and metrics["steps"] == 12
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_the_ledgers_tell_the_baselines_apart(baseline_runs):
    plain, enclave = baseline_runs["plain"], baseline_runs["enclave"]
    assert enclave["bytes_to_worker"] == enclave["messages"] == 0 and enclave["worker_seconds"] == 0
    # plain: per step the input batch and the logits' gradient go out, the logits come back
    batch_bytes = 32 * 64 * 4
    assert plain["bytes_to_worker"] >= 12 * batch_bytes
    assert plain["bytes_from_worker"] > 0 and plain["worker_seconds"] > 0
