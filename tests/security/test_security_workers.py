"""A dishonest or broken worker: a malformed result is an integrity violation (exit 3) with the audit
files written; a crashed or hung worker names what it was serving; its text never reaches the
terminal raw."""

from __future__ import annotations

import json

import pytest
import torch

from blindtrain import transcript
from blindtrain.boundary import Boundary, Ref, Request, Sent, Tag, bilinear_products
from blindtrain.boundary.expect import HeldShapes, TensorSpec
from blindtrain.boundary.transport import InprocTransport
from blindtrain.errors import IntegrityError, WorkerCrashed
from blindtrain.ledger import Ledger
from blindtrain.worker import WorkerConfig
from blindtrain.worker.adversaries import AdversarySpec

OTP = ["train", "--quiet", "--protocol", "otp", "--steps", "4"]


@pytest.mark.parametrize("form", ["shape", "dtype", "missing", "object"])
def test_a_malformed_result_is_exit_3_with_metrics_and_transcript_written(cli, tmp_path, form):
    metrics, record, ckpt = tmp_path / "m.json", tmp_path / "t.npz", tmp_path / "ck"
    result = cli(*OTP, "--adversary", f"malformed:step=2,form={form}", "--metrics", metrics, "--transcript", record,
                 "--checkpoint", ckpt)
    assert result.exit_code == 3, result.output
    assert "integrity violation: layer '1', op 'forward', step 2" in result.output
    assert "malformed result" in result.output and "Traceback" not in result.output
    ledger = json.loads(metrics.read_text())
    assert ledger["status"] == "integrity_violation" and ledger["steps"] == 2 and ledger["integrity_failures"] == 1
    meta, arrays = transcript.load(record)
    assert meta and max(m["step"] for m in meta) == 2 and len(arrays) == len(meta)
    assert not ckpt.exists()  # no checkpoint from a run that ended in a violation


def test_a_malformed_tensor_kept_on_the_worker_stops_tempo_cleanly(cli, tmp_path):
    """tempo keeps the weight gradient on the worker: a malformed one breaks the worker's own update, which
    is a worker failure (exit 3, one line naming layer, op and step, audit files written), not a traceback."""
    metrics, ckpt = tmp_path / "m.json", tmp_path / "ck"
    result = cli("train", "--quiet", "--steps", "4", "--adversary", "malformed:op=grad_weight", "--metrics", metrics,
                 "--checkpoint", ckpt)
    assert result.exit_code == 3, result.output
    assert "failed serving layer" in result.output and "op 'update', step 1" in result.output
    assert "Traceback" not in result.output and not ckpt.exists()
    assert json.loads(metrics.read_text())["status"] == "worker_crashed"


@pytest.mark.parametrize("transport", ["inproc", "process"])
def test_a_worker_spoofing_terminal_output_is_shown_escaped(cli, transport):
    result = cli(*OTP, "--transport", transport, "--adversary", "spoof:step=1")
    assert result.exit_code == 3
    lines = result.output.splitlines()
    assert not any(line.startswith("done:") or "\x1b" in line or "\r" in line for line in lines)
    assert not any(line.strip().startswith("test accuracy") for line in lines)
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and "serving layer '1', op 'forward', step 1" in error[0]
    assert "\\rdone: tempo trained mlp" in error[0] and "\\x1b[2K" in error[0]  # there, but escaped


@pytest.mark.parametrize("transport", ["inproc", pytest.param("process", marks=pytest.mark.slow)])
def test_a_hung_worker_is_declared_dead_after_the_timeout_naming_what_it_served(cli, transport):
    result = cli(*OTP, "--transport", transport, "--adversary", "hang:step=1,op=grad_input",
                 "--worker-timeout", "1.5")
    assert result.exit_code == 3, result.output
    assert "did not answer within 1.5 s serving layer" in result.output and "op 'grad_input', step 1" in result.output


@pytest.mark.parametrize("transport", ["inproc", "process"])
def test_a_crashed_worker_names_layer_op_and_step(cli, transport):
    result = cli(*OTP, "--transport", transport, "--adversary", "crash:step=2,layer=3,op=forward")
    assert result.exit_code == 3
    assert "serving layer '3', op 'forward', step 2" in result.output


def test_an_inproc_worker_thread_that_hangs_raises_within_the_timeout():
    config = WorkerConfig(name="main0", device="cpu", adversary=AdversarySpec(name="hang"))
    transport = InprocTransport(config, timeout=0.3)
    request = Request("bilinear", {"A": Sent(torch.ones(2, 3), "clear"), "B": Sent(torch.ones(3, 4), "clear")},
                      Tag(step=1, layer="fc", op="forward"), params={"fn": "matmul"})
    with pytest.raises(WorkerCrashed, match="did not answer within 0.3 s serving layer 'fc', op 'forward', step 1"):
        transport.call(request)
    with pytest.raises(WorkerCrashed, match="is gone"):  # and it is not used again
        transport.call(request)
    transport.close()


def test_expected_shapes_follow_held_tensors_and_products():
    held = HeldShapes()
    tag = Tag(0, "fc", "forward")
    store = Request("store", {"W": Sent(torch.zeros(5, 3), "public")}, tag, keep={"W": "w"})
    assert held.expect(store) is None
    x = Sent(torch.zeros(2, 5), "clear")
    product = bilinear_products(tag, [{"op": "forward", "fn": "matmul", "A": x, "B": Ref("w")},
                                      {"op": "kept", "fn": "matmul_tn", "A": x, "B": x, "keep": "g"}])
    assert held.expect(product) == TensorSpec((2, 3), torch.float32)
    assert held.expect(Request("fetch", {"X": Ref("g")}, tag)) == TensorSpec((5, 5), torch.float32)
    held.expect(Request("free", {}, tag, params={"handles": ["g"]}))
    assert held.expect(Request("fetch", {"X": Ref("g")}, tag)) is None  # unknown: no shape claimed


def test_the_boundary_rejects_a_result_of_the_wrong_shape_before_a_protocol_sees_it():
    ledger = Ledger()
    spec = AdversarySpec(name="malformed", step=0)
    boundary = Boundary(ledger=ledger, transport_factory=lambda role, i: InprocTransport(
        WorkerConfig(name=f"{role}{i}", device="cpu", adversary=spec)))
    request = Request("bilinear", {"A": Sent(torch.ones(4, 3), "clear"), "B": Sent(torch.ones(3, 2), "clear")},
                      Tag(step=0, layer="fc", op="forward"), params={"fn": "matmul"})
    with pytest.raises(IntegrityError, match=r"expected a \[4, 2\] float32 result, got \[3, 2\] float32"):
        boundary.call(request)
    assert ledger.integrity_failures == 1
    boundary.close()


def test_a_worker_process_cannot_write_on_the_terminal(capfd):
    """The process worker's stdout and stderr are captured, not inherited: what it prints is only ever
    quoted, escaped, in an error message."""
    from blindtrain.boundary.transport import ProcessTransport

    transport = ProcessTransport(WorkerConfig(name="main0", device="cpu", adversary=AdversarySpec(name="spoof"),
                                              in_process=False))
    request = Request("bilinear", {"A": Sent(torch.ones(2, 3), "clear"), "B": Sent(torch.ones(3, 4), "clear")},
                      Tag(step=1, layer="fc", op="forward"), params={"fn": "matmul"})
    try:
        with pytest.raises(WorkerCrashed) as failure:
            transport.call(request)
    finally:
        transport.close()
    captured = capfd.readouterr()
    assert "done:" not in captured.out and "done:" not in captured.err  # nothing reached the terminal
    assert "\n" not in str(failure.value) and "\\rdone: tempo" in str(failure.value)
