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
#: larger batches are not attempted inside :func:`invert_steps`: measured at the class-prior chance level
#: from batch 8 up on digits (``python -m blindtrain.attacks.visible_measure --batch-size 8``)
MAX_BATCH = 4


def _loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(torch.softmax(logits, -1), F.one_hot(labels, logits.shape[-1]).to(logits.dtype))
    return F.cross_entropy(logits, labels)


def invert_batch(model: torch.nn.Module, observed: dict[str, np.ndarray], labels: np.ndarray, *,
                 input_shape: tuple[int, ...], loss: str = "ce", seconds: float = SECONDS_PER_STEP,
                 iterations: int = MAX_ITERATIONS, seed: int = 0,
                 class_means: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
    """Reconstruct a batch (rows in arbitrary order) whose labels are the multiset ``labels``.

    Rows start from single-input directions of the first layer's gradient where they can be read
    (:func:`single_sample_directions`), the others from ``class_means`` (the public split's mean
    image per class: the attack then starts at the class-prior guess) or from the gradient's row space.

    Returns ``(X̂ of shape (B, *input_shape), achieved mean cosine between its gradients and observed,
    the label of each row of X̂)``.
    """
    start = time.perf_counter()
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
    in_row_space = first is not None and first.shape[1] == width and batch < width
    found = single_sample_directions(first.double().numpy(), batch) if in_row_space else []
    rest = batch - len(found)
    if class_means is not None:  # the public split's mean image of each remaining row's class
        means = torch.from_numpy(np.asarray(class_means, dtype=np.float32).reshape(len(class_means), -1))
        fill = means[y[len(found):]]
    else:
        fill = torch.randn(rest, width, generator=generator)
    if class_means is None and in_row_space:  # the batch lies in the span of G_1's top-B right singular vectors
        basis = torch.linalg.svd(first.double(), full_matrices=False)[2][:batch].float()
        fill = fill @ basis.T @ basis
    x = torch.cat([torch.from_numpy(np.stack(found)).float() * np.sqrt(width), fill]) if found else fill
    def _objective(candidate: torch.Tensor, labels: torch.Tensor, graph: bool = False):
        grads = torch.autograd.grad(_loss(loss, model(candidate.reshape(batch, *input_shape)), labels), weights,
                                    create_graph=graph)
        cosines = torch.stack([F.cosine_similarity(g.reshape(1, -1), t.reshape(1, -1)).squeeze()
                               for g, t in zip(grads, targets)])
        distances = torch.stack([(g - t).square().sum() / t.square().sum().clamp_min(1e-30)
                                 for g, t in zip(grads, targets)])
        return len(targets) - cosines.sum() + distances.sum(), cosines

    if found:
        x, y = _signs_scales_labels(x, y, len(found), objective_of=lambda c, labels: _objective(c, labels)[0],
                                    model=model, input_shape=input_shape, deadline=time.perf_counter() + seconds / 2)
    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x, *biases], lr=0.05)
    achieved = 0.0
    for _ in range(iterations):
        optimizer.zero_grad()
        objective, cosines = _objective(x, y, True)
        objective.backward()
        optimizer.step()
        achieved = float(cosines.detach().mean())
        if time.perf_counter() - start > seconds:
            break
    return x.detach().reshape(batch, *input_shape).numpy(), achieved, y.numpy()


def single_sample_directions(first: np.ndarray, batch: int, *, threshold: float = 0.95) -> list[np.ndarray]:
    """Unit directions of single inputs read off the first layer's weight gradient.

    Row ``j`` of ``G_1 = (1/B)·Σ_i δ_ijᵀ x_i`` mixes only the samples that unit ``j`` is active for
    (after a ReLU, ``δ_ij = 0`` otherwise).  Rows active for exactly one sample are parallel to that
    sample: clusters of mutually parallel rows (``|cos| > threshold``) give up to ``B`` inputs' directions.
    """
    norms = np.linalg.norm(first, axis=1)
    keep = norms > 1e-3 * norms.max() if norms.max() > 0 else np.zeros(len(norms), bool)
    rows = first[keep] / norms[keep, None]
    out: list[np.ndarray] = []
    alive = np.ones(len(rows), bool)
    similarity = np.abs(rows @ rows.T)
    while len(out) < batch and alive.any():
        support = ((similarity > threshold) & alive[None, :] & alive[:, None]).sum(1)
        best = int(np.argmax(support))
        if support[best] < 2:
            break
        members = alive & (similarity[best] > threshold)
        aligned = rows[members] * np.sign(rows[members] @ rows[best])[:, None]
        direction = np.linalg.svd(aligned, full_matrices=False)[2][0]
        out.append(direction * np.sign(direction @ rows[best]))
        alive &= np.abs(rows @ direction) <= threshold
    return out


def _signs_scales_labels(x: torch.Tensor, labels: torch.Tensor, searched: int, *, objective_of, model, input_shape,
                         deadline: float):
    """Coordinate search over the sign and scale of the first ``searched`` rows, then labels assigned to
    rows by the model (two passes, stopped at ``deadline``)."""
    from scipy.optimize import linear_sum_assignment

    factors = [sign * scale for sign in (1.0, -1.0) for scale in (0.25, 0.5, 1.0, 2.0, 4.0)]

    def value(candidate):
        return float(objective_of(candidate.clone().requires_grad_(True), labels).detach())

    for _ in range(2):
        for row in range(searched):
            if time.perf_counter() > deadline:
                break
            trials = []
            for factor in factors:
                trial = x.clone()
                trial[row] = x[row] / x[row].norm().clamp_min(1e-12) * np.sqrt(x.shape[1]) * factor
                trials.append((value(trial), trial))
            x = min(trials, key=lambda t: t[0])[1]
        if len(x) > 1:  # labels to rows: the model's log-probabilities, best assignment of the multiset
            with torch.no_grad():
                logp = torch.log_softmax(model(x.reshape(len(x), *input_shape)), -1).numpy()
            rows, cols = linear_sum_assignment(-logp[:, labels.numpy()])
            assigned = labels.clone()
            assigned[torch.from_numpy(rows)] = labels[torch.from_numpy(cols)]
            labels = assigned
    return x, labels


def public_class_means(knowledge: Knowledge) -> np.ndarray:
    """(classes, *input_shape): the public split's mean input of each class (zeros for absent classes)."""
    x = np.asarray(knowledge.public_x, dtype=np.float32)
    out = np.zeros((knowledge.num_classes, *x.shape[1:]), dtype=np.float32)
    for k in range(knowledge.num_classes):
        rows = knowledge.public_y == k
        if rows.any():
            out[k] = x[rows].mean(0)
    return out


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """One label per row, grouped by class (the rows' true order is unknown)."""
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def invert_steps(recovery: Recovery, view: WeightView, model, knowledge: Knowledge, frames: dict, *,
                 steps: int) -> dict[int, np.ndarray]:
    """Invert the ``steps`` smallest batches (at most :data:`MAX_BATCH` rows) with gradients and a label histogram.

    Fills :attr:`Recovery.inputs` for one-row batches; returns every reconstruction (unordered rows).
    """
    from .visible import model_at

    candidates = sorted((len(labels_from_counts(c)), step) for step, c in recovery.label_counts.items()
                        if step in recovery.gradients and int(c.sum()) <= MAX_BATCH)
    if not candidates:
        recovery.notes.append(f"gradient inversion not attempted: no batch of at most {MAX_BATCH} rows (measured at "
                              f"the class-prior chance level from batch 8 up on digits)")
    out: dict[int, np.ndarray] = {}
    summary = []
    for batch, step in candidates[:steps]:
        labels = labels_from_counts(recovery.label_counts[step])
        x, achieved, _ = invert_batch(model_at(model, view, step), recovery.gradients[step], labels,
                                      input_shape=tuple(knowledge.input_shape),
                                      loss=knowledge.hyper.get("loss", "ce"), seconds=SECONDS_PER_STEP,
                                      class_means=public_class_means(knowledge))
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
