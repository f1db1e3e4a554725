"""The boundary: copy semantics, byte counting, transcript contents, the process transport."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import blindtrain as bt
from blindtrain.boundary import Boundary, Ref, Request, Sent, Tag
from blindtrain.boundary.transport import InprocTransport, ProcessTransport
from blindtrain.ledger import Ledger
from blindtrain.models import build
from blindtrain.transcript import load as load_transcript
from blindtrain.worker import WorkerConfig

TAG = Tag(step=0, layer="fc", op="forward")


def _boundary(transport_cls=InprocTransport, record=True):
    ledger = Ledger()
    return Boundary(ledger=ledger, transport_factory=lambda role, i: transport_cls(WorkerConfig(name=f"{role}{i}")),
                    record_transcript=record), ledger


@pytest.mark.parametrize("transport_cls", [InprocTransport, ProcessTransport])
def test_mutating_a_sent_tensor_does_not_change_what_the_worker_holds(transport_cls):
    boundary, _ = _boundary(transport_cls)
    try:
        held = torch.arange(6.0).reshape(2, 3)
        boundary.call(Request("store", {"X": Sent(held, "clear")}, TAG, keep={"X": "h"}))
        held.add_(100.0)  # the trusted side changes its tensor after sending it
        back = boundary.call(Request("fetch", {"X": Ref("h")}, TAG)).result
        torch.testing.assert_close(back, torch.arange(6.0).reshape(2, 3))
        back.zero_()  # and changing what came back does not change the worker's copy
        again = boundary.call(Request("fetch", {"X": Ref("h")}, TAG)).result
        torch.testing.assert_close(again, torch.arange(6.0).reshape(2, 3))
    finally:
        boundary.close()


def test_ledger_bytes_equal_the_tensor_sizes_sent_and_received():
    boundary, ledger = _boundary()
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    out = boundary.call(Request("bilinear", {"A": Sent(a, "clear"), "B": Sent(b, "public")}, TAG,
                                params={"fn": "matmul"})).result
    assert ledger.bytes_to_worker == 4 * 5 * 8 + 5 * 3 * 8
    assert ledger.bytes_from_worker == out.numel() * out.element_size() == 4 * 3 * 8
    assert ledger.messages == 1
    boundary.call(Request("store", {"X": Sent(a, "clear")}, TAG, keep={"X": "h"}))
    boundary.call(Request("fetch", {"X": Ref("h")}, TAG, return_result=False))  # a Ref costs no bytes
    assert ledger.bytes_to_worker == 4 * 5 * 8 * 2 + 5 * 3 * 8
    assert ledger.bytes_from_worker == 4 * 3 * 8
    assert ledger.messages == 3


def test_transcript_holds_exactly_what_crossed(tmp_path, clear_protocol):
    model = build("mlp", (1, 8, 8), 10, hidden=(16,))
    with bt.Session(protocol=clear_protocol, transcript=True) as session:
        wrapped, _ = session.prepare(model)
        x = torch.randn(3, 1, 8, 8)
        wrapped(x).sum().backward()
        path = tmp_path / "t.npz"
        session.save_transcripts(path)
        metrics = session.metrics()
    meta, arrays = load_transcript(path)
    assert [m["key"] for m in meta] == [f"m{i:06d}" for i in range(len(meta))]
    assert {m["operand"] for m in meta} == {"A", "B"} and {m["kind"] for m in meta} == {"clear"}
    assert sum(a.nbytes for a in arrays.values()) == metrics["bytes_to_worker"]
    first = meta[0]
    assert (first["layer"], first["op"], first["operand"], first["modulus"]) == ("1", "forward", "A", None)
    np.testing.assert_array_equal(arrays[first["key"]], x.reshape(3, 64).numpy())
    ops = [(m["layer"], m["op"]) for m in meta[::2]]
    assert ops == [("1", "forward"), ("3", "forward"), ("3", "grad_input"), ("3", "grad_weight"),
                   ("1", "grad_weight")]


def test_process_transport_trains_like_inproc(clear_protocol):
    curves = {}
    for transport in ("inproc", "process"):
        torch.manual_seed(0)
        model = build("lenet", (1, 8, 8), 10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with bt.Session(protocol=clear_protocol, transport=transport, seed=None) as session:
            wrapped, optimizer = session.prepare(model, optimizer)
            x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
            losses = []
            for _ in range(3):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(wrapped(x), y)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            curves[transport] = (losses, session.metrics())
    assert curves["inproc"][0] == pytest.approx(curves["process"][0], rel=1e-6)
    for key in ("bytes_to_worker", "bytes_from_worker", "messages"):
        assert curves["inproc"][1][key] == curves["process"][1][key]
    assert curves["process"][1]["worker_seconds"] > 0


def test_worker_failure_is_reported_not_hung():
    boundary, _ = _boundary(ProcessTransport)
    try:
        with pytest.raises(bt.BlindtrainError, match="holds no tensor"):
            boundary.call(Request("fetch", {"X": Ref("missing")}, TAG))
    finally:
        boundary.close()


def test_closing_an_inproc_transport_waits_for_its_worker_thread():
    """A worker thread still inside a PyTorch op at interpreter shutdown aborts the process ("terminate called
    without an active exception"): close() must leave no worker thread running."""
    transport = InprocTransport(WorkerConfig(name="main0"))
    boundary = Boundary(ledger=Ledger(), transport_factory=lambda role, i: transport, record_transcript=False)
    boundary.call(Request("store", {"X": Sent(torch.ones(4, 4), "clear")}, TAG, keep={"X": "h"}))
    assert transport._thread.is_alive()
    boundary.close()
    assert not transport._thread.is_alive()
