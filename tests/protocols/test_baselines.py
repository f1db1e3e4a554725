"""plain and enclave: same loss curve on the same seed, every ledger field reported."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from blindtrain import Session
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


class _TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, a, b, *, scale):
        return self.body(torch.cat([a, b], dim=1)) * scale


def test_plain_keeps_the_users_model_object_and_its_forward_signature():
    """plain hooks the user's own module instead of wrapping it: state_dict keys, indexing and
    multi-input / keyword forwards are plain PyTorch's; gradients match an unwrapped copy."""
    torch.manual_seed(0)
    model = _TwoInputs()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    session = Session(protocol="plain", device="cpu", seed=0, transcript=True)
    wrapped, _ = session.prepare(model, None)
    assert wrapped is model and list(wrapped.state_dict()) == keys and wrapped.body[0] is model.body[0]
    a, b = torch.randn(4, 2), torch.randn(4, 4)
    out = wrapped(a, b, scale=torch.tensor(2.0))
    want = reference(a, b, scale=torch.tensor(2.0))
    assert torch.allclose(out, want)
    out.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad), name
    # the model crossed once, in the clear, through the choke point (the worker holds it)
    meta = session.boundary.transcripts["main"].meta
    loaded = [m for m in meta if m["op"] == "load"]
    assert [m["layer"] for m in loaded] == keys and all(m["kind"] == "clear" for m in loaded)
    session.close()
