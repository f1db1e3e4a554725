"""Input reconstruction by gradient inversion where the weights are visible (``otp``).

Given the model at step ``t`` (the visible ``W_t``; biases estimated, refined as free variables), the
recovered weight gradients ``G_l`` of that step and the estimated label histogram, find a batch ``X̂``
whose gradients match (Geiping et al., "Inverting Gradients", NeurIPS 2020: cosine distance per layer)::

    min_X̂  Σ_l (1 − cos(∇_l, G_l)) + ‖∇_l − G_l‖² / ‖G_l‖²,    ∇_l = ∇_{W_l} loss(X̂, ŷ)

(the recovered gradients keep their true magnitude — known learning rate and scale — so the distance
term pins the inputs' scale, which the cosine alone leaves loose).

Labels ``ŷ`` are the histogram's classes in an arbitrary row order.  When the batch has fewer rows
than the first layer has inputs, the rows of ``X`` lie in the row space of the first layer's weight
gradient ``G_1 = (1/B)·Σ_i δ_iᵀ x_i`` (rank ≤ B): the search starts there, ``X̂ = C·V_Bᵀ`` with ``V_B``
the top-``B`` right singular vectors of ``G_1``, and then runs on ``X̂`` itself.  For one row,
``x ∝ ±v_1`` exactly: the sign and a coarse scale are picked on a small grid first.  The search is
bounded by :data:`MAX_ITERATIONS` Adam steps and :data:`SECONDS_PER_STEP` of wall clock.

The masked frames hide which row is which, so reconstructions come **unordered**: they are reported
in :attr:`Recovery.inputs` only where the row frame is trivial (a batch of one row); otherwise
:func:`invert_batch` returns them for a scorer that matches rows by best assignment.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .recovery import Knowledge, Recovery
from .visible_weights import WeightView

#: wall-clock budget of one step's inversion (seconds) and its iteration cap
SECONDS_PER_STEP = 3.0
MAX_ITERATIONS = 300


def _loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(torch.softmax(logits, -1), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
    return F.cross_entropy(logits, labels)


def invert_batch(model: torch.nn.Module, observed: dict[str, np.ndarray], labels: np.ndarray, *,
                 input_shape: tuple[int, ...], loss: str = "ce", seconds: float = SECONDS_PER_STEP,
                 iterations: int = MAX_ITERATIONS, seed: int = 0) -> tuple[np.ndarray, float]:
    """Reconstruct a batch (rows in arbitrary order, labels ``labels`` row by row).

    Returns ``(X̂ of shape (B, *input_shape), achieved mean cosine between its gradients and observed)``.
    """
    generator = torch.Generator().manual_seed(seed)
    model = model.train()
    params = dict(model.named_parameters())
    matched = [name for name in observed if name in params]
    targets = [torch.from_numpy(np.asarray(observed[name], dtype=np.float32)) for name in matched]
    weights = [params[name] for name in matched]
    biases = [p for name, p in params.items() if name not in observed]
    for p in weights:
        p.requires_grad_(True)
    batch = len(labels)
    width = int(np.prod(input_shape))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    first = targets[0].reshape(targets[0].shape[0], -1) if targets else None
    if first is not None and first.shape[1] == width and batch < width:
        _, _, vh = torch.linalg.svd(first.double(), full_matrices=False)
        basis = vh[:batch].float()                                 # (B, width): the rows' span
        coeff = torch.randn(batch, batch, generator=generator) * np.sqrt(width / batch)
        x = (coeff @ basis).clone()
    else:
        x = torch.randn(batch, width, generator=generator)
    def objective_of(candidate: torch.Tensor, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        grads = torch.autograd.grad(_loss(loss, model(candidate.reshape(batch, *input_shape)), y), weights,
                                    create_graph=graph)
        cosines = torch.stack([F.cosine_similarity(g.reshape(1, -1), t.reshape(1, -1)).squeeze()
                               for g, t in zip(grads, targets)])
        distances = torch.stack([(g - t).square().sum() / t.square().sum().clamp_min(1e-30)
                                 for g, t in zip(grads, targets)])
        return len(targets) - cosines.sum() + distances.sum(), cosines

    if batch == 1 and first is not None and first.shape[1] == width:  # x ∝ ±v_1: pick sign and scale first
        grid = [sign * scale * x / x.norm() * np.sqrt(width) for sign in (1.0, -1.0)
                for scale in (0.25, 0.5, 1.0, 2.0, 4.0)]
        x = min(grid, key=lambda c: float(objective_of(c.clone().requires_grad_(True), False)[0].detach()))
    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x, *biases], lr=0.05)
    start, achieved = time.perf_counter(), 0.0
    for _ in range(iterations):
        optimizer.zero_grad()
        objective, cosines = objective_of(x, True)
        objective.backward()
        optimizer.step()
        achieved = float(cosines.detach().mean())
        if time.perf_counter() - start > seconds:
            break
    return x.detach().reshape(batch, *input_shape).numpy(), achieved


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """One label per row, grouped by class (the rows' true order is unknown)."""
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def invert_steps(recovery: Recovery, view: WeightView, model, knowledge: Knowledge, frames: dict, *,
                 steps: int) -> dict[int, np.ndarray]:
    """Invert the ``steps`` smallest batches that have gradients and a label histogram (bounded in time).

    Fills :attr:`Recovery.inputs` for one-row batches; returns every reconstruction (unordered rows).
    """
    from .visible import model_at

    candidates = sorted((len(labels_from_counts(c)), step) for step, c in recovery.label_counts.items()
                        if step in recovery.gradients)
    out: dict[int, np.ndarray] = {}
    summary = []
    for batch, step in candidates[:steps]:
        labels = labels_from_counts(recovery.label_counts[step])
        x, achieved = invert_batch(model_at(model, view, step), recovery.gradients[step], labels,
                                   input_shape=tuple(knowledge.input_shape), loss=knowledge.hyper.get("loss", "ce"),
                                   seconds=SECONDS_PER_STEP)
        out[step] = x
        summary.append(f"step {step} (batch {batch}): gradient cosine {achieved:.3f}")
        if batch == 1:
            recovery.inputs[step] = x.astype(np.float32)
    if summary:
        recovery.notes.append(
            "gradient inversion (cosine matching of the recovered weight gradients, labels from the histogram, "
            f"≤ {SECONDS_PER_STEP:g} s per step) on the smallest batches: " + "; ".join(summary)
            + ". Rows come out in arbitrary order (the pads hide the frame): reported in inputs only for "
              "one-row batches; visible_inversion.invert_batch gives them for best-assignment scoring")
    return out
