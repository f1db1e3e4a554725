"""Several products in one request: computed like single ``bilinear`` requests, kept or returned,
and each screened by the adversary under its own op."""

from __future__ import annotations

import pytest
import torch

from blindtrain.boundary import Ref, Request, Sent, Tag, bilinear_products
from blindtrain.worker.adversaries import AdversarySpec
from blindtrain.worker.worker import Worker, WorkerConfig


def _worker(adversary: str | None = None) -> Worker:
    worker = Worker(WorkerConfig(device="cpu", adversary=AdversarySpec.parse(adversary)))
    worker.state["w"] = torch.randn(5, 3)
    worker.state["x"] = torch.randn(4, 3)
    return worker


def _request(g1, g2):
    return bilinear_products(Tag(1, "fc", "backward"), [
        {"op": "grad_input", "fn": "matmul", "A": Sent(g1, "obfuscated"), "B": Ref("w"), "params": {}},
        {"op": "grad_weight", "fn": "matmul_tn", "A": Sent(g2, "obfuscated"), "B": Ref("x"), "params": {},
         "keep": "g"},
    ])


def test_products_equal_their_single_requests_and_the_kept_one_stays():
    worker = _worker()
    g1, g2 = torch.randn(4, 5), torch.randn(4, 5)
    returned = worker.handle(_request(g1, g2)).result
    single = worker.handle(Request("bilinear", {"A": Sent(g1, "obfuscated"), "B": Ref("w")}, Tag(1, "fc", "grad_input"),
                                   params={"fn": "matmul"})).result
    assert torch.equal(returned, single)
    assert torch.equal(worker.state["g"], g2.t() @ worker.state["x"])


@pytest.mark.parametrize("op,kept_changed", [("grad_input", False), ("grad_weight", True)])
def test_the_adversary_sees_each_product_under_its_own_op(op, kept_changed):
    honest, adversarial = _worker(), _worker(f"tamper:step=0,op={op}")
    adversarial.state = {k: v.clone() for k, v in honest.state.items()}
    g1, g2 = torch.randn(4, 5), torch.randn(4, 5)
    clean, tampered = honest.handle(_request(g1, g2)).result, adversarial.handle(_request(g1, g2)).result
    assert torch.equal(clean, tampered) == kept_changed
    assert torch.equal(honest.state["g"], adversarial.state["g"]) != kept_changed


def test_at_most_one_product_is_returned():
    product = {"op": "forward", "fn": "matmul", "A": Ref("x"), "B": Ref("w"), "params": {}}
    with pytest.raises(ValueError):
        bilinear_products(Tag(0, "fc", "forward"), [product, dict(product)])


def test_a_shared_operand_crosses_once_and_a_scaled_one_is_rescaled_on_the_worker():
    worker = _worker()
    g1, rows, cols = torch.randn(4, 5), torch.tensor([1.0, 2.0, 0.5, 4.0]), torch.tensor([2.0, 1.0, 0.25, 8.0, 1.0])
    shared = Sent(g1, "obfuscated")
    request = bilinear_products(Tag(1, "fc", "backward"), [
        {"op": "grad_input", "fn": "matmul", "A": shared, "B": Ref("w"), "params": {}},
        {"op": "grad_weight", "fn": "matmul_tn", "A": shared, "B": Ref("x"), "params": {}, "keep": "g",
         "scale": {"operand": "A", "rows": Sent(rows, "public"), "cols": Sent(cols, "public")}},
    ])
    assert [name for name, _ in request.sent_tensors()] == ["A0", "rows1", "cols1"]
    returned = worker.handle(request).result
    assert torch.equal(returned, g1 @ worker.state["w"])
    assert torch.equal(worker.state["g"], (g1 * rows.view(-1, 1) * cols.view(1, -1)).t() @ worker.state["x"])
