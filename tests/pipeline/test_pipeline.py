"""The offload pipeline: a test scheme fanned out to two roles at once, integrity failures that name
the layer, the op and the step, ledger phases, and otp's main and mask workers in flight together."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from blindtrain import Session
from blindtrain.boundary import Boundary, Request, Sent
from blindtrain.boundary.transport import InprocTransport
from blindtrain.crypto import Csprng
from blindtrain.errors import IntegrityError
from blindtrain.ledger import Ledger
from blindtrain.pipeline import Check, Encoded, OffloadOp, Phases, Pipeline, Rejected, Replies, Scheme, WorkerId
from blindtrain.runtime import EnclaveConfig, Runtime
from blindtrain.worker import WorkerConfig
from blindtrain.worker.adversaries import AdversarySpec
from blindtrain.worker.ops import INSTRUCTIONS

LEFT, RIGHT = WorkerId("main"), WorkerId("aux")


@dataclass
class SplitContext:
    b_halves: tuple[torch.Tensor, torch.Tensor]
    s: torch.Tensor


class SplitColumns(Scheme[SplitContext]):
    """Test scheme: ``Y = A·B`` (``A: (b, n)``, ``B: (n, m)``) with ``B``'s column halves on two roles;
    each half checked with Freivalds ``(A·B_i)·s = A·(B_i·s)`` (float64: exact for small integers)."""

    def __init__(self, *, instr: str = "bilinear", reject: bool = False) -> None:
        self.instr, self.reject = instr, reject

    def encode(self, op: OffloadOp, phases: Phases) -> Encoded[SplitContext]:
        half = op.b.shape[1] // 2
        halves = (op.b[:, :half].contiguous(), op.b[:, half:].contiguous())
        with phases.use("masking"):
            s = torch.randint(-8, 9, (half, 1), dtype=torch.float64)
        requests = {worker: Request(self.instr, {"A": Sent(op.a, "clear"), "B": Sent(part, "clear")},
                                    op.tag(), params={"fn": "matmul"})
                    for worker, part in zip((LEFT, RIGHT), halves)}
        return Encoded(requests, SplitContext(halves, s))

    def verify(self, op, replies: Replies, context: SplitContext, phases) -> Iterator[Check]:
        for worker, part in zip((LEFT, RIGHT), context.b_halves):
            ok = torch.equal(replies.result(worker) @ context.s, op.a @ (part @ context.s))
            yield Check(ok, "" if ok else f"Freivalds check failed on the {worker} worker's result")

    def decode(self, op, replies: Replies, context: SplitContext, phases) -> torch.Tensor:
        if self.reject:
            raise Rejected("a sealed input was replayed")
        return torch.cat([replies.result(LEFT), replies.result(RIGHT)], dim=1)


def _runtime(adversaries: dict | None = None):
    ledger, adversaries = Ledger(), adversaries or {}

    def factory(role, index):
        return InprocTransport(WorkerConfig(name=f"{role}{index}", device="cpu",
                                            adversary=adversaries.get(role, AdversarySpec())), timeout=60)

    boundary = Boundary(ledger=ledger, transport_factory=factory, record_transcript=True)
    return Runtime(ledger=ledger, boundary=boundary, rng=Csprng(bytes(32)), config=EnclaveConfig(),
                   worker_device="cpu", transport="inproc")


def _op(step: int = 3) -> OffloadOp:
    a = torch.randint(-4, 5, (3, 5)).double()
    b = torch.randint(-4, 5, (5, 6)).double()
    return OffloadOp(layer="fc1", op="forward", fn="matmul", a=a, b=b, params={}, step=step)


def test_a_scheme_fanned_out_to_two_roles_gives_the_product_and_counts_its_checks():
    runtime = _runtime()
    op = _op()
    try:
        y = Pipeline(runtime).run(SplitColumns(), op)
        torch.testing.assert_close(y, op.a @ op.b)
        ledger = runtime.ledger
        assert ledger.integrity_checks == 2 and ledger.integrity_failures == 0
        assert set(ledger.per_worker) == {"main0", "aux0"} and ledger.messages == 2
        assert set(runtime.boundary.transcripts) == {"main", "aux"}
        assert ledger.category_seconds["encode"] > 0 and ledger.category_seconds["decode_verify"] > 0
    finally:
        runtime.boundary.close()


@pytest.mark.parametrize("role", ["main", "aux"])
def test_a_tampered_answer_from_either_role_is_an_integrity_error_naming_layer_op_and_step(role):
    runtime = _runtime({role: AdversarySpec("tamper", step=0)})
    try:
        with pytest.raises(IntegrityError, match=rf"layer 'fc1', op 'forward', step 3: .*{role}0 worker"):
            Pipeline(runtime).run(SplitColumns(), _op(step=3))
        assert runtime.ledger.integrity_failures == 1
    finally:
        runtime.boundary.close()


def test_a_rejection_while_decoding_is_an_integrity_error_naming_layer_op_and_step():
    runtime = _runtime()
    try:
        with pytest.raises(IntegrityError, match=r"layer 'fc1', op 'forward', step 7: a sealed input was replayed"):
            Pipeline(runtime).run(SplitColumns(reject=True), _op(step=7))
    finally:
        runtime.boundary.close()


@pytest.fixture
def meeting_matmul():
    """``bilinear`` behind a two-party barrier: a request completes only if another worker is computing
    at the same time (the boundary's shape shadow runs it on meta tensors: no meeting there)."""
    barrier = threading.Barrier(2, timeout=20)
    inner = INSTRUCTIONS["bilinear"]

    def meet(worker, args, params):
        if not args["A"].is_meta:
            barrier.wait()
        return inner(worker, args, params)

    meet.screens_results = False
    INSTRUCTIONS["test_meeting_bilinear"] = meet
    yield
    INSTRUCTIONS.pop("test_meeting_bilinear", None)


def test_the_roles_requests_are_in_flight_together(meeting_matmul):
    runtime = _runtime()
    op = _op()
    try:
        y = Pipeline(runtime).run(SplitColumns(instr="test_meeting_bilinear"), op)
        torch.testing.assert_close(y, op.a @ op.b)
    finally:
        runtime.boundary.close()


def test_otp_main_and_mask_worker_requests_are_in_flight_together(monkeypatch):
    """Every ``bilinear_mod`` request waits at a two-party barrier: the layer's forward and input gradient
    complete only because otp's main and mask requests are computed at the same time."""
    barrier = threading.Barrier(2, timeout=20)
    inner = INSTRUCTIONS["bilinear_mod"]

    def meet(worker, args, params):
        if not args["A"].is_meta:
            barrier.wait()
        return inner(worker, args, params)

    meet.screens_results = inner.screens_results
    monkeypatch.setitem(INSTRUCTIONS, "bilinear_mod", meet)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    reference = nn.Linear(8, 4)
    reference.load_state_dict(layer.state_dict())
    with Session(protocol="otp", device="cpu", unmask="mask-worker") as session:
        model, _ = session.prepare(nn.Sequential(layer))
        x = torch.randn(2, 8, requires_grad=True)
        model(x).sum().backward()
        assert {name: row["messages"] for name, row in session.ledger.per_worker.items()} == {"main0": 2, "mask0": 2}
    x_ref = x.detach().clone().requires_grad_(True)
    reference(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_phases_never_count_a_second_twice():
    ledger = Ledger()
    phases = Phases(ledger, "encode")
    start = time.perf_counter()
    with phases.running("encode"):
        time.sleep(0.01)
        with phases.use("masking"):
            time.sleep(0.01)
            with phases.use("unmask_factor"):
                time.sleep(0.01)
        time.sleep(0.01)
    wall = time.perf_counter() - start
    seconds = ledger.category_seconds
    assert seconds["encode"] > 0 and seconds["masking"] > 0 and seconds["unmask_factor"] > 0
    assert seconds["encode"] + seconds["masking"] + seconds["unmask_factor"] <= wall  # disjoint spans
    with pytest.raises(KeyError, match="unknown enclave-time category"):
        phases.use("no_such_category").__enter__()
