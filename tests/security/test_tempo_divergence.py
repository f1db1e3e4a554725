"""Honest divergence under tempo is exit 1 ("training diverged at step N"), never an integrity violation;
a NaN that a dishonest worker puts into a result is still exit 3 (issue 17, item 4).

Divergence: the worker-side SGD makes the held weights, and the enclave's tracked check projections with
them, non-finite; the checks then see a non-finite *operand side* (the enclave's own values), which an
honest worker's results cannot cause behind the checks' back.  A worker's NaN arrives on the result side
of a check whose operand side is finite: it fails the check."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from blindtrain.cli import main
from blindtrain.worker.adversaries import Adversary


def _train(*args):
    return CliRunner().invoke(main, ["train", "--protocol", "tempo", "--quiet", "--device", "cpu", *args])


@pytest.mark.parametrize("flags", [["--lr", "1e4"], ["--lr", "100", "--fuse-activations"]])
def test_divergence_is_exit_1_not_an_integrity_violation(flags):
    result = _train("--steps", "40", *flags)
    assert result.exit_code == 1, result.output
    assert "training diverged at step" in result.output and "integrity violation" not in result.output


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("op", ["forward", "grad_input"])
def test_a_non_finite_result_from_the_worker_is_exit_3(value, op, monkeypatch):
    def poison(self, result, modulus):
        out = result.clone()
        out.view(-1)[0] = value
        return out

    monkeypatch.setattr(Adversary, "_corrupt", poison)
    result = _train("--steps", "4", "--adversary", f"tamper:op={op},step=2")
    assert result.exit_code == 3, result.output
    assert "integrity violation" in result.output


@pytest.mark.parametrize("flag", ["--rotate-every", "--workers"])
def test_zero_rotation_period_or_workers_is_rejected_not_coerced(flag):
    result = _train("--steps", "1", flag, "0")
    assert result.exit_code == 2, result.output
    assert "must be at least 1" in result.output or "0 is not in the range x>=1" in result.output


@pytest.mark.parametrize("flag", ["--momentum", "--weight-decay"])
def test_a_nan_hyper_parameter_is_bad_input_before_training(flag):
    result = _train("--steps", "1", flag, "nan")
    assert result.exit_code == 2 and "must be a finite number" in result.output, result.output


def test_non_finite_weights_in_the_enclave_are_divergence_for_the_python_api():
    """The same rule through the library: a layer input with NaN (the enclave's own value) is divergence."""
    import blindtrain as bt
    from blindtrain.errors import TrainingDiverged
    from blindtrain.models import build

    model = build("mlp", (1, 8, 8), 10)
    with bt.Session(protocol="tempo", device="cpu", seed=None) as session:
        wrapped, _ = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        x = torch.randn(4, 1, 8, 8)
        x[0, 0, 0, 0] = float("nan")
        with pytest.raises(TrainingDiverged, match="training diverged at step 0"):
            wrapped(x)


def test_a_failed_check_on_values_past_2_100_is_divergence_and_below_it_tampering():
    """At --lr 100 an honest float32 product can overflow to Inf while the enclave's float64 operand side
    stays finite: past 2^100 on the trusted side a failed check is divergence (exit 1); below, exit 3."""
    from blindtrain import Session
    from blindtrain.errors import IntegrityError, TrainingDiverged

    session = Session(protocol="tempo", device="cpu")
    verdict = session.protocol._verdict
    failing = dict(residual=torch.tensor([float("inf")]), tol=torch.tensor([1.0]), kind="forward", detail="x")
    with pytest.raises(TrainingDiverged, match="beyond 2\\^100"):
        verdict("fc", "forward", operands=(torch.tensor([2.0 ** 101]),), **failing)
    with pytest.raises(IntegrityError):
        verdict("fc", "forward", operands=(torch.tensor([2.0 ** 90]),), **failing)
    session.close()
