"""Where tempo's check tolerance is loose: the headroom of one check's bound in four forms, on one product.

    PYTHONPATH=src python scripts/tolerance_slack.py [--trials 200] [--out docs/soak/tolerance_slack.json]

For ``R = A B`` computed in float32 (the worker's product: a random permutation of the inner dimension, as
tempo's key gives) and a check ``|(R − AB) σ|`` with σ uniform in [−1, 1] (two vectors), the largest
``|residual| / bound`` over the trials, for the bound ``λ·u·(Σ_j σ_j² C_j)^½`` with ``C_j`` (per output j):

* ``norms``     ``K·‖a_i‖²‖b_j‖²``: what a linear layer's tolerance uses (row / column norms, O(k) per row);
* ``abs_sums``  ``K·(Σ_k |a_ik||b_kj|)²``: no Cauchy–Schwarz (costs a product as large as the layer's);
* ``partials``  ``Σ_t c_t²`` over the actual partial sums of a sequential sum (needs the worker's order);
* ``partials, λ = 1``: the same without λ: what the rounding errors themselves use of ``u·√(Σc²)``.

λ = tempo.LAMBDA (per-check false alarm 2^-40).  The gap between ``norms`` and ``partials`` is what any
bound computable from norms alone pays on that data; ``partials, λ = 1`` near 1 says the model's per-
rounding bound ``|δ| ≤ u`` is what remains.  Operands: the shapes and distributions of the mlp/digits layers
(softmax − one-hot gradients through a 10→64 layer, ReLU inputs, Gaussian inputs) and the same-sign
worst case.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from blindtrain.protocols import tempo


def headrooms(a: torch.Tensor, b: torch.Tensor, *, trials: int, generator: torch.Generator) -> dict:
    u, lam = tempo.U32, tempo.LAMBDA
    rows, K = a.shape
    exact = a.double() @ b.double()
    worst: dict[str, float] = {}
    for _ in range(trials):
        perm = torch.randperm(K, generator=generator)
        ap, bp = a[:, perm], b[perm]
        err = (ap @ bp).double() - exact
        sigma = torch.rand(b.shape[1], 2, generator=generator, dtype=torch.float64) * 2 - 1
        residual = (err @ sigma).abs()
        prods = ap.double().unsqueeze(2) * bp.double().unsqueeze(0)  # rows × K × n
        partial_c2 = (prods.cumsum(1) ** 2).sum(1) + (prods ** 2).sum(1)
        forms = {
            "norms": K * (a.double().norm(dim=1, keepdim=True) * b.double().norm(dim=0)) ** 2,
            "abs_sums": K * (a.double().abs() @ b.double().abs()) ** 2,
            "partials": partial_c2,
        }
        for name, c2 in forms.items():
            bound = lam * u * (c2 @ sigma ** 2).sqrt()
            worst[name] = max(worst.get(name, 0.0), float((residual / bound).max()))
        worst["partials, λ = 1"] = max(worst.get("partials, λ = 1", 0.0),
                                       float((residual / (u * (partial_c2 @ sigma ** 2).sqrt())).max()))
    return {name: 1.0 / used for name, used in worst.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    b = 64
    logits = torch.randn(b, 10, generator=g) * 3
    labels = torch.randint(0, 10, (b,), generator=g)
    cases = {
        "grad_input 10→64 (softmax − one-hot)": ((logits.softmax(1) - torch.nn.functional.one_hot(labels, 10)) / b,
                                               torch.randn(10, 64, generator=g) * 0.15),
        "forward 64→128, ReLU inputs": (torch.randn(b, 64, generator=g).relu(), torch.randn(64, 128, generator=g) * 0.1),
        "forward 64→128, Gaussian inputs": (torch.randn(b, 64, generator=g), torch.randn(64, 128, generator=g) * 0.1),
        "same-sign 4096→64": (torch.rand(b, 4096, generator=g), torch.rand(4096, 64, generator=g) * 0.5 + 0.5),
    }
    report = {"lambda": tempo.LAMBDA, "trials": args.trials,
              "headroom": {name: headrooms(a, w, trials=args.trials, generator=g) for name, (a, w) in cases.items()}}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
