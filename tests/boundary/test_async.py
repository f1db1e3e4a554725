"""Asynchronous dispatch: ``submit`` / ``call_many`` on every transport.

Overlap is shown without timing thresholds: two in-process workers meet at a barrier that only
opens when both are computing at once; on the process and dist transports a worker answers while
another one's request is still in flight (it hangs), and the hung one still raises ``WorkerCrashed``
naming the layer, the op and the step at the timeout."""

from __future__ import annotations

import threading

import pytest
import torch

from blindtrain.boundary import Boundary, Call, Ref, Request, Sent, Tag
from blindtrain.boundary.transport import InprocTransport, ProcessTransport
from blindtrain.errors import WorkerCrashed, WorkerError
from blindtrain.ledger import Ledger
from blindtrain.worker import WorkerConfig
from blindtrain.worker.adversaries import AdversarySpec
from blindtrain.worker.ops import INSTRUCTIONS

TAG = Tag(step=4, layer="fc2", op="grad_input")


def matmul_request(n: int = 4, scale: float = 1.0) -> Request:
    return Request("bilinear", {"A": Sent(torch.eye(n) * scale, "clear"), "B": Sent(torch.ones(n, n), "clear")},
                   TAG, params={"fn": "matmul"})


@pytest.fixture
def barrier_instruction():
    """A test-only worker instruction: wait at a two-party barrier (opens only if two workers are in it
    at the same time), then return its input."""
    barrier = threading.Barrier(2, timeout=20)

    def meet(worker, args, params):
        if not args["X"].is_meta:  # the boundary's shape shadow runs instructions on meta tensors: no meeting
            barrier.wait()
        return args["X"]

    meet.screens_results = False
    INSTRUCTIONS["test_meet"] = meet
    yield barrier
    INSTRUCTIONS.pop("test_meet", None)


def _inproc_boundary(timeout: float = 60.0, adversaries: dict | None = None):
    ledger = Ledger()
    adversaries = adversaries or {}

    def factory(role, index):
        spec = adversaries.get((role, index), AdversarySpec())
        return InprocTransport(WorkerConfig(name=f"{role}{index}", adversary=spec), timeout=timeout)

    return Boundary(ledger=ledger, transport_factory=factory, record_transcript=True), ledger


def test_call_many_runs_two_inproc_workers_at_the_same_time(barrier_instruction):
    boundary, ledger = _inproc_boundary()
    try:
        calls = [Call(Request("test_meet", {"X": Sent(torch.full((2,), float(k)), "clear")}, TAG), "main", k)
                 for k in range(2)]
        replies = boundary.call_many(calls)  # sequential dispatch would leave each worker alone at the barrier
        assert [float(r.result[0]) for r in replies] == [0.0, 1.0]
        assert ledger.messages == 2 and set(ledger.per_worker) == {"main0", "main1"}
        assert ledger.bytes_to_worker == ledger.bytes_from_worker == 2 * 2 * 4
    finally:
        boundary.close()


def test_call_many_fans_out_to_several_roles_and_records_each_roles_transcript(barrier_instruction):
    boundary, ledger = _inproc_boundary()
    try:
        calls = [Call(Request("test_meet", {"X": Sent(torch.ones(3), kind)}, TAG), role, 0)
                 for role, kind in (("mask", "pad"), ("main", "masked"))]
        boundary.call_many(calls)
        assert set(boundary.transcripts) == {"mask", "main"}
        assert [m["kind"] for m in boundary.transcripts["mask"].meta] == ["pad"]
        assert [m["kind"] for m in boundary.transcripts["main"].meta] == ["masked"]
        assert set(ledger.per_worker) == {"mask0", "main0"}
    finally:
        boundary.close()


def test_submit_counts_like_call():
    counts = []
    for way in ("call", "submit", "call_many"):
        boundary, ledger = _inproc_boundary()
        try:
            request = matmul_request()
            if way == "call":
                boundary.call(request)
            elif way == "submit":
                pending = boundary.submit(request)
                assert ledger.messages == 0  # counted when the answer is collected
                pending.result()
            else:
                boundary.call_many([Call(request)])
            counts.append((ledger.messages, ledger.bytes_to_worker, ledger.bytes_from_worker,
                           len(boundary.transcripts["main"].meta)))
        finally:
            boundary.close()
    assert counts[0] == counts[1] == counts[2] == (1, 2 * 16 * 4, 16 * 4, 2)


def test_requests_to_one_worker_keep_their_order():
    boundary, _ = _inproc_boundary()
    try:
        store = Request("store", {"X": Sent(torch.arange(3.0), "clear")}, TAG, keep={"X": "h"}, return_result=False)
        fetch = Request("fetch", {"X": Ref("h")}, TAG)
        replies = boundary.call_many([Call(store), Call(fetch)])
        torch.testing.assert_close(replies[1].result, torch.arange(3.0))
    finally:
        boundary.close()


def test_call_many_collects_every_answer_then_raises_the_first_failure():
    boundary, ledger = _inproc_boundary()
    try:
        bad = Request("no_such_instruction", {}, TAG)
        with pytest.raises(WorkerError, match="no_such_instruction"):
            boundary.call_many([Call(bad, "main", 0), Call(matmul_request(), "main", 1)])
        assert ledger.per_worker["main1"]["messages"] == 1  # the good answer was collected and counted
        assert boundary.call(matmul_request(), index=0).result.shape == (4, 4)  # worker 0 still serves
    finally:
        boundary.close()


def test_a_hung_inproc_worker_raises_worker_crashed_naming_layer_op_and_step_for_a_submitted_call():
    boundary, _ = _inproc_boundary(timeout=0.5, adversaries={("main", 0): AdversarySpec("hang", step=0)})
    try:
        pending = boundary.submit(matmul_request(), index=0)
        answer = boundary.call(matmul_request(scale=2.0), index=1)  # another worker serves meanwhile
        torch.testing.assert_close(answer.result, torch.full((4, 4), 2.0))
        with pytest.raises(WorkerCrashed, match=r"layer 'fc2', op 'grad_input', step 4"):
            pending.result()
    finally:
        boundary.close()


def _process_transports(timeout):
    hang = AdversarySpec("hang", step=0)
    return [ProcessTransport(WorkerConfig(name="main0", adversary=hang, in_process=False), timeout=timeout),
            ProcessTransport(WorkerConfig(name="main1", in_process=False), timeout=timeout)]


def _dist_transports(timeout):
    from blindtrain.boundary.dist import DistHub

    hub = DistHub(workers=2, timeout=timeout, threads=1)
    return [hub.transport(WorkerConfig(name="main0", adversary=AdversarySpec("hang", step=0), in_process=False)),
            hub.transport(WorkerConfig(name="main1", in_process=False))]


@pytest.mark.parametrize("make", [pytest.param(_process_transports, id="process", marks=pytest.mark.slow),
                                  pytest.param(_dist_transports, id="dist", marks=pytest.mark.slow)])
def test_a_worker_answers_while_another_is_still_computing(make):
    """Worker 0 hangs on its request; worker 1, asked after it, answers first (so both were in flight at
    once), and worker 0's request still ends in WorkerCrashed naming the layer, op and step."""
    transports = make(timeout=2.0)
    ledger = Ledger()
    boundary = Boundary(ledger=ledger, transport_factory=lambda role, index: transports[index])
    try:
        pending = boundary.submit(matmul_request(), index=0)
        answer = boundary.call(matmul_request(scale=3.0), index=1)
        torch.testing.assert_close(answer.result, torch.full((4, 4), 3.0))  # a blocking submit would have raised
        with pytest.raises(WorkerCrashed, match=r"layer 'fc2', op 'grad_input', step 4"):
            pending.result()
    finally:
        boundary.close()
