"""Divergence is not tampering: NaN/Inf arising on the trusted side from honest results is exit 1
"training diverged at step N", never an integrity violation (exit 3); bad hyper-parameters are exit 2."""

from __future__ import annotations

import json

import pytest
import torch

import blindtrain as bt
from blindtrain import checkpoint
from blindtrain.crypto import KeyStore
from blindtrain.errors import TrainingDiverged


@pytest.mark.parametrize("protocol", ["plain", "enclave", "otp"])
def test_a_diverging_honest_run_exits_1_never_3(cli, tmp_path, protocol):
    metrics, ckpt = tmp_path / "m.json", tmp_path / "ck"
    result = cli("train", "--quiet", "--protocol", protocol, "--lr", "1e6", "--steps", "20", "--metrics", metrics,
                 "--checkpoint", ckpt, "--checkpoint-every", "1")
    assert result.exit_code == 1, result.output
    assert "training diverged at step" in result.output and "integrity" not in result.output.split("error:")[-1]
    assert json.loads(metrics.read_text())["status"] == "diverged"
    if ckpt.exists():  # a checkpoint from before the divergence holds finite weights only
        state = checkpoint.load(ckpt, keystore=KeyStore())["model_state"]
        assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("flag,value", [("--momentum", "nan"), ("--momentum", "-5"), ("--weight-decay", "nan"),
                                        ("--weight-decay", "-1"), ("--momentum", "1.5"), ("--lr", "inf")])
def test_bad_optimizer_hyper_parameters_exit_2_in_one_line(cli, tmp_path, flag, value):
    result = cli("train", "--quiet", "--protocol", "otp", "--steps", "2", flag, value, "--metrics", tmp_path / "m.json")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and flag in result.output
    assert not (tmp_path / "m.json").exists()


def test_a_non_finite_operand_is_reported_as_divergence_before_it_is_offloaded():
    """Without the check, otp would try to encode the NaN (or, for a float protocol, fail its integrity
    check on it); the glue reports divergence first, naming the layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with bt.Session(protocol="otp", device="cpu", seed=0) as session:
        wrapped, _ = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        x = torch.randn(5, 4)
        x[2, 1] = float("nan")
        with pytest.raises(TrainingDiverged, match=r"training diverged at step 0: the input of layer '0'"):
            wrapped(x)
        with torch.no_grad():
            model[2].weight[0, 0] = float("inf")
        with pytest.raises(TrainingDiverged, match=r"the weight of layer '2'"):
            wrapped(torch.randn(5, 4))
        assert session.metrics()["integrity_failures"] == 0
