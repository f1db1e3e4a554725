"""``--fuse-activations`` under attack: a worker that corrupts a fused layer's forward result is caught (exit 3).

Issue 17: fused results used to be checked only for the sign of their ReLU output, so zeros and a ×10
scaling went through.  Now the forward product of a fused layer is Freivalds-checked like every forward
result and the activation / max-pool run in the enclave (``tempo.FUSED_INTEGRITY``).  Per adversary, the
miss probability is at most ``(tolerance/|error|)^k`` per row (k = 2 check vectors): zeros (error = −Y),
×10 (error = 9Y), tamper (one entry moved by more than the largest |entry|), noise (1% of the largest
|entry| on every entry) and replay (an earlier step's result) all change the rows they touch by far more
than the tolerance (honest results use at most a few percent of it: see ``summary()["tolerance"]``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from blindtrain.cli import main
from blindtrain.worker.adversaries import Adversary


def _train(*args):
    return CliRunner().invoke(main, ["train", "--protocol", "tempo", "--fuse-activations", "--quiet",
                                     "--device", "cpu", *args])


@pytest.fixture
def scaling_worker(monkeypatch):
    """The adversary's corruption replaced by ×10 (a worker that scales a result, issue 17)."""
    monkeypatch.setattr(Adversary, "_corrupt", lambda self, result, modulus: result * 10)


@pytest.mark.parametrize("adversary", ["zeros:op=forward", "tamper:op=forward", "noise:op=forward",
                                       "replay:op=forward", "zeros:op=forward,layer=3,step=2"])
def test_fused_forward_corruption_is_caught(adversary):
    result = _train("--steps", "6", "--adversary", adversary)
    assert result.exit_code == 3, result.output
    assert "integrity violation" in result.output and "'forward'" in result.output


def test_fused_forward_scaled_by_ten_is_caught(scaling_worker):
    result = _train("--steps", "6", "--adversary", "noise:op=forward")
    assert result.exit_code == 3, result.output
    assert "integrity violation" in result.output


def test_fused_conv_and_pool_forward_corruption_is_caught(scaling_worker):
    result = _train("--model", "lenet", "--dataset", "synthetic", "--steps", "2", "--adversary",
                    "noise:op=forward,layer=features.0")
    assert result.exit_code == 3, result.output
    assert "features.0" in result.output


def test_fused_honest_run_passes_and_states_what_is_verified(tmp_path):
    import json

    metrics = tmp_path / "m.json"
    result = _train("--steps", "4", "--metrics", str(metrics))
    assert result.exit_code == 0, result.output
    summary = json.loads(metrics.read_text())["protocol_summary"]
    assert summary["fused_layers"] and "Freivalds-checked" in summary["fused_integrity"]
